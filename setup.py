"""Build script.

All metadata lives in pyproject.toml.  This file exists for the compiled
(Cython) backend, which will declare its extension modules and compiler flags
here; until then it only defers to setuptools.
"""
from setuptools import setup

setup()
