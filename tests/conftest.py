"""Shared pytest configuration.

Hypothesis runs derandomized with no deadline when CI is set (JIT compiles
make first calls slow, and CI must be reproducible).
"""
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
