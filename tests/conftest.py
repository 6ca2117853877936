"""Shared pytest configuration.

Hypothesis runs derandomized with no deadline when CI is set (JIT compiles
make first calls slow, and CI must be reproducible).

The cuda backend's tests run on Numba's CUDA simulator unless told otherwise:
``NUMBA_ENABLE_CUDASIM`` must be set before numba is first imported, so it is
set here, as a default that a GPU machine overrides with
``NUMBA_ENABLE_CUDASIM=0``.  It changes nothing for the CPU backends.
"""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
# fastopt.keras runs under the torch backend; Keras reads this when first imported
os.environ.setdefault("KERAS_BACKEND", "torch")

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _no_threshold_override_left_behind():
    """A test that overrides the parallel threshold removes the override
    (``fastopt.set_parallel_threshold(None, dtype)``), so later tests run by
    the tuned per-class values (tests/test_tuning.py)."""
    yield
    from fastopt import backends
    leaked = dict(backends._threshold_override)
    if leaked:
        for dt in leaked:
            backends.set_parallel_threshold(None, dt)
        pytest.fail(f"the test left a parallel-threshold override behind: {leaked}; "
                    "restore it with fastopt.set_parallel_threshold(None, dtype)")
