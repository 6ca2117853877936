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


def real(owner, name, value):
    """``value`` as an array, refusing complex numbers (which a cast to the model's
    dtype would silently cut to their real parts)."""
    array = np.asarray(value)
    if array.dtype.kind == "c":
        raise TypeError(f"{owner}: {name} must hold real numbers, got {array.dtype} values")
    return array


def finite(owner, name, array, raw):
    """Raise ``ValueError`` unless ``array`` (``raw`` converted to the model's dtype)
    holds only finite numbers; the message names the first bad element."""
    bad = ~np.isfinite(array)
    if not bad.any():
        return
    k = int(np.argmax(bad.reshape(-1)))
    shape = raw.shape if raw.size == array.size else array.shape  # the caller's indices
    at = ", ".join(map(str, np.unravel_index(k, shape)))
    was = raw.reshape(-1)[k] if raw.size == array.size else None
    if was is not None and raw.dtype.kind in "biuf" and np.isfinite(was):
        how = f"{float(was)!r}, which is {float(array.reshape(-1)[k])} as {array.dtype}"
    else:
        how = repr(float(array.reshape(-1)[k]))
    raise ValueError(f"{owner}: {name} must hold finite numbers; {name}[{at}] is {how}")
