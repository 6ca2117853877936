"""Argument checks for the trainer; each error names the argument and its value."""
from __future__ import annotations

import numbers

import numpy as np


def integer(owner, name, value, *, low=None):
    """``value`` as an int after checking its type (bool is not an int here) and range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an integer, got {value!r} "
                        f"({type(value).__name__})")
    if low is not None and value < low:
        raise ValueError(f"{owner}: {name} must be >= {low}, got {value!r}")
    return int(value)


def choice(owner, name, value, options):
    """``value`` after checking that it is one of ``options``."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(map(repr, options))}, "
                         f"got {value!r}")
    return value


def float_dtype(owner, value):
    """``value`` as ``np.float32`` or ``np.float64``."""
    try:
        dtype = None if value is None else np.dtype(value)  # np.dtype(None) is float64
    except TypeError:
        dtype = None
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"{owner}: dtype must be float32 or float64, got {value!r}")
    return dtype
