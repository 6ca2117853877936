"""The BLAS thread pool behind NumPy's matrix products (Muon's Newton–Schulz).

fastopt's element loops run on Numba's or OpenMP's threads
(:func:`fastopt.set_num_threads`); NumPy's ``@`` runs on its BLAS's own pool,
a third one beside those and torch's.  On a small machine three pools of
``cores`` threads each oversubscribe it, so a per-tensor rule that calls BLAS
runs its products under :func:`limit`: with the count of
:func:`fastopt.set_num_threads` when that was called, else as NumPy is set up
(BLAS's default, or ``OPENBLAS_NUM_THREADS``), and restores the previous
count afterwards, so the caller's own NumPy is not changed.

How the count is set, first that works:

1. ``threadpoolctl`` if it is installed (an optional dependency: any BLAS,
   MKL included);
2. OpenBLAS's own ``openblas_set_num_threads`` in the library NumPy loaded
   (the ``scipy-openblas`` wheels name it ``scipy_openblas_set_num_threads64_``);
3. nothing: :func:`available` is False and :func:`limit` does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import threading

import numpy as np

__all__ = ["available", "get_num_threads", "set_num_threads", "limit"]

_lock = threading.Lock()
_api = None  # (get, set, description), or False when nothing can set it


def _openblas():
    """``(get, set)`` of the OpenBLAS NumPy loaded, through ctypes, or None."""
    here = os.path.dirname(np.__file__)
    candidates = sorted(glob.glob(os.path.join(here, "..", "numpy.libs", "*openblas*"))
                        + glob.glob(os.path.join(here, ".dylibs", "*openblas*"))
                        + glob.glob(os.path.join(here, "..", "numpy.libs", "*.dll")))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for suffix in ("64_", "_64_", "", "_"):
            for prefix in ("scipy_openblas_", "openblas_"):
                get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    get.restype = ctypes.c_int
                    set_.argtypes = [ctypes.c_int]
                    return (lambda: int(get())), (lambda n: set_(int(n))), \
                        f"OpenBLAS ({os.path.basename(path)})"
    return None


def _threadpoolctl():
    try:
        import threadpoolctl
    except ImportError:
        return None
    controller = threadpoolctl.ThreadpoolController()
    blas = controller.select(user_api="blas")
    if not blas.lib_controllers:
        return None

    def get():
        return max(lc.num_threads for lc in blas.lib_controllers)

    def set_(n):
        blas.limit(limits=int(n))  # persists: the limit is not undone here
    return get, set_, "threadpoolctl"


def _load():
    global _api
    if _api is None:
        with _lock:
            if _api is None:
                _api = _threadpoolctl() or _openblas() or False
    return _api


def available():
    """Whether fastopt can set NumPy's BLAS thread count here."""
    return bool(_load())


def describe():
    """What sets the BLAS threads here (``"threadpoolctl"``, ``"OpenBLAS
    (<library>)"``), or None."""
    api = _load()
    return api[2] if api else None


def get_num_threads():
    """NumPy's BLAS thread count, or None where it cannot be read."""
    api = _load()
    return api[0]() if api else None


def set_num_threads(n):
    """Set NumPy's BLAS thread count, process-wide (nothing if unavailable)."""
    api = _load()
    if api:
        api[1](n)


@contextlib.contextmanager
def limit(n):
    """Run the block with ``n`` BLAS threads (None: as they are), then put
    the previous count back."""
    api = _load() if n is not None else None
    if not api:
        yield
        return
    before = api[0]()
    if before == n:
        yield
        return
    api[1](n)
    try:
        yield
    finally:
        api[1](before)
