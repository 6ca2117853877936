"""The element language, and the code every backend is generated from.

An update rule is written once, in a family module of :mod:`fastopt.algorithms`,
as two small functions in a restricted subset of Python:

* ``prepare(<public scalars>)`` turns the rule's public scalars (what the
  kernels take: ``learning_rate``, ``beta_1``, ``step`` ...) into the *named*
  per-step scalars the element function reads, in float64, once per step.
  Its body assigns names, branches with ``if``/``else`` and ends every path
  with ``return {"name": expression, ...}`` (the same keys, in the same order,
  on every path: the order is the kernels' scalar order).
* ``element(g, w, <slots>, <prepared scalars>)`` updates one element: ``g`` is
  the gradient after scaling, clipping and coupled weight decay, ``w`` the
  parameter after decoupled weight decay, the slots are the optimizer state
  (Keras's slot names, in order).  The body assigns names and branches, and
  ends with ``return w, <slots>`` -- the new values.

The language (checked by :func:`check_element` and :func:`check_prepare`):
float literals and names; ``+ - * /`` and ``**``; unary ``-``; comparisons
(one operator each) and ``and``/``or``/``not`` in conditions; ``if``/``elif``/
``else``; the calls ``sqrt`` (``math.sqrt``), ``abs``, ``min``, ``max``,
``copysign`` (``math.copysign``), ``sign`` and ``pow``.  ``min`` and ``max``
follow NumPy's ``np.minimum``/``np.maximum`` for NaN: a NaN argument wins;
on a tie they return the first argument (NumPy returns the second, which
differs for +0 and -0 only), identically on every backend.  ``sign(x)`` is
-1 or 1, and ``x`` itself for 0, -0 and NaN (``np.sign(-0.0)`` is +0).

This package depends on the standard library only: ``setup.py`` loads it by
path in the build environment (setuptools, Cython, NumPy; no Numba, no
fastopt) to render the Cython backend from the family modules' source,
which it parses and never imports (:func:`read_families`).  At run time the
Numba and CUDA backends render the same functions into their loops
(:func:`python_lines`).
"""
from __future__ import annotations

#: A two_phase rule's reductions (fastopt.two_phase): name -> the quantity
#: squared and summed in float64, computed in the tensor's dtype, as a
#: template over ``{w}`` (after the element function) and ``{w_in}`` (the
#: parameter before it, after decoupled decay); every backend renders it.
ELEMENT_REDUCTIONS = {"param_sumsq": "{w_in}", "update_sumsq": "{w} - {w_in}"}

from .cython import CTYPES, cython_context, cython_loop, render_cython, slot_args
from .families import ParsedRule, fingerprint, read_families, read_family
from .language import (CALLS, LanguageError, assigned_names, check_element, check_prepare,
                       parse_function)
from .render import C_CALLS, PY_CALLS, cython_lines, cython_prepare, fabs, fmax, fmin, python_lines

__all__ = ["LanguageError", "ParsedRule", "check_element", "check_prepare", "read_families",
           "read_family", "parse_function", "python_lines", "cython_lines",
           "cython_prepare", "assigned_names", "fingerprint", "slot_args", "cython_loop",
           "cython_context", "render_cython", "fmax", "fmin", "fabs", "CALLS", "PY_CALLS",
           "C_CALLS", "CTYPES", "ELEMENT_REDUCTIONS"]
