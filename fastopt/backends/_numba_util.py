"""Numba decorators and low-level helpers, defined once for the Numba backend.

* :data:`kernel` is the decorator for element loops: ``cache=True`` so compiled
  code survives between processes, ``error_model="numpy"`` so divisions do not
  carry a Python zero-division check (which keeps loops scalar, 3-8x slower),
  ``boundscheck=False``.  No ``fastmath``: results must match the reference.
* :data:`gil_kernel` is the same without ``nogil``: for code that reads a
  Python list's items (``numba_backend.GradientCheck``), which must not
  change while it reads them.
* :func:`driver` compiles one Python function twice, as a ``parallel=True``
  version (``prange`` spreads chunks over threads) and a serial one (``prange``
  is an ordinary ``range``) for small steps, where entering a parallel region
  costs more than the work.
* :func:`as_ptr` turns an integer address into a typed pointer, so one compiled
  call can walk a whole list of arrays (multi-tensor apply) from a table of
  data pointers, instead of one Python-level call per tensor.
"""
from __future__ import annotations

import types as _pytypes

from numba import njit, types
from numba.extending import intrinsic

_FLAGS = dict(cache=True, error_model="numpy", boundscheck=False, nogil=True)

kernel = njit(**_FLAGS)

#: for code that reads Python objects (a list's items) while they must not
#: change: the same flags, holding the GIL
gil_kernel = njit(**{**_FLAGS, "nogil": False})


def driver(fn):
    """Return ``(parallel, serial)`` compiled versions of ``fn``.

    The serial one is compiled from a copy of the function with its own
    qualified name, so the two never share an on-disk cache entry.
    """
    parallel = njit(parallel=True, **_FLAGS)(fn)
    clone = _pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                  fn.__defaults__, fn.__closure__)
    clone.__qualname__ = fn.__qualname__ + "_serial"
    clone.__module__ = fn.__module__
    serial = njit(parallel=False, **_FLAGS)(clone)
    return parallel, serial


def pointer_intrinsic(typingctx, addr, like):
    """``as_ptr(address, like_array)`` -> pointer to ``like_array.dtype``.

    The typing and code generation of :func:`as_ptr`, target-neutral: the CPU
    wraps it with ``numba.extending.intrinsic``, the CUDA kernels with
    ``numba.cuda.extending.intrinsic``."""
    if not isinstance(addr, types.Integer) or not isinstance(like, types.Array):
        return None
    sig = types.CPointer(like.dtype)(addr, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


as_ptr = intrinsic(pointer_intrinsic)
