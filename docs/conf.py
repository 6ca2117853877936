"""Sphinx configuration of the fastopt documentation site.

Build (from the repository root, in an environment with the ``docs`` extra)::

    pip install -e '.[docs]'
    sphinx-build -W -b html docs docs/_build/html

Warnings are errors.  The build needs NumPy, Numba and matplotlib (fastopt's own
dependencies) and nothing else: no torch, keras, mpi4py, numba-cuda or GPU.
"""
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))           # this checkout's fastopt, whatever is installed
sys.path.insert(0, str(DOCS / "_ext"))

# How the API reference builds without torch, keras, mpi4py or a GPU: both
# mechanisms, each for what it fits.
#
# * torch, keras and mpi4py: ``autodoc_mock_imports`` (below).  autodoc must
#   import fastopt.torch, fastopt.keras and fastopt.distributed to read their
#   docstrings, and those modules import the frameworks at the top.  Nothing of
#   them runs at import time beyond attribute access and subclassing, which
#   autodoc's mocks stand in for; fastopt's own signatures and docstrings, which
#   the pages show, are untouched.  (Checked: the docs extra's environment has
#   none of the three, and ``.ci/run`` builds the site in such an environment.)
# * CUDA: not mocked.  ``NUMBA_ENABLE_CUDASIM=1`` is set before anything imports
#   Numba, so that where numba-cuda is installed without a GPU (building the
#   site from the test environment, say), whatever touches the CUDA backend
#   while the pages are built (``fastopt.available_backends()``, the
#   ``fastopt compare`` run of the training page) runs on Numba's simulator, as
#   the tests do, and the pages are built with the backend present rather than
#   reported missing for want of a driver (checked: with numba-cuda and no GPU,
#   ``available_backends()`` includes ``"cuda"`` here and the -W build passes).
#   In the docs extra's environment
#   numba-cuda is absent and the backend is simply missing, as ``import fastopt``
#   promises.  Mocking ``numba.cuda`` instead would risk hiding ``numba``
#   itself, which the CPU backends need for real.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
# fastopt.keras reads the backend when it is imported; the mock does not care,
# but the value makes the pages describe the supported set-up.
os.environ.setdefault("KERAS_BACKEND", "torch")

import fastopt  # noqa: E402  (after the environment above)

project = "fastopt"
author = "the fastopt authors"
copyright = "the fastopt authors"
release = fastopt.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    # napoleon rather than numpydoc, though the docstrings are numpydoc style
    # (STYLE.md) and napoleon reads that style: tried with numpydoc 1.11 first,
    # which splits a docstring into summary and extended summary and re-indents
    # them, so the formula blocks of the float64 references ("Adagrad (...)::"
    # followed by the indented formula, the specification of every rule) lost
    # their indentation and failed the -W build ("Literal block expected").
    # napoleon translates the numpydoc sections (Parameters, Returns, ...) and
    # leaves every other line exactly as written.
    "sphinx.ext.napoleon",
    "myst_parser",
    "fastopt_docs",        # docs/_ext: tables generated from the registry and results
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# MyST: ``{include}`` of generated pages, heading anchors for in-page links.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc / autosummary: the stubs are generated at build time into
# docs/generated/ (git-ignored) from the modules' ``__all__``, so a new export
# gets its page without anyone editing the docs.
autosummary_generate = True
autosummary_imported_members = True
autosummary_ignore_module_all = False
autodoc_mock_imports = ["torch", "keras", "mpi4py"]
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": True}
autodoc_typehints = "none"
autodoc_member_order = "bysource"

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

html_theme = "pydata_sphinx_theme"
html_title = f"fastopt {release}"
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
}
html_static_path = []
