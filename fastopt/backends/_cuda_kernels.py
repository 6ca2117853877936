"""CUDA kernels of the cuda backend, written with numba-cuda.

Importing this module imports ``numba.cuda`` (from the numba-cuda package) and
defines the kernels; nothing is compiled until a kernel is first launched.
:mod:`fastopt.backends.cuda_backend` launches them; the PTX check
(``tests/test_cuda_ptx.py``) compiles every one of them with
``numba.cuda.compile_ptx`` from :func:`ptx_signatures`.

Multi-tensor apply, as in the Numba CPU backend: one launch updates a whole
group of tensors.  The launch receives a table of device pointers (one column
per tensor: parameter, then slots; the gradients in a separate vector, 0 for a
skipped tensor) and a table of chunks (tensor, start, stop).  Each block walks
the chunks ``blockIdx.x, blockIdx.x + gridDim.x, ...`` (a grid-stride loop over
chunks) and its threads walk a chunk's elements ``start + threadIdx.x, ... +
blockDim.x`` (coalesced).  A pointer becomes an array view on the device
(:func:`_view`); under the CUDA simulator, where "device" memory is host memory,
the same address becomes a NumPy view instead.

The element functions below compute, element by element, exactly the formulas
of the Numba CPU loops (``numba_backend._loop_*``), in the tensor's dtype,
with the per-step constants packed on the host by :func:`fastopt._rules.pack`
and rounded to the dtype once per thread.  (NVVM may contract a multiply and an
add into one fused multiply-add, as nvcc does by default; that removes a
rounding, within the tolerances the tests state.)
"""
from __future__ import annotations

import ctypes
import math

import numpy as np
from numba import cuda
from numba.cuda import types

from .._rules import RULES

#: True when Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) stands in for a GPU.
SIMULATOR = bool(cuda.config.ENABLE_CUDASIM)

#: Rows of the packed scalar vector (``fastopt._rules.HP_SIZE``).
_HP = 8

if SIMULATOR:
    def jitable(fn):
        """Element functions run as plain Python inside simulated kernels."""
        return fn

    def _view(addr, n, like):
        """The ``n`` elements at address ``addr`` (simulated device memory is
        host memory), typed like ``like``."""
        dtype = like.dtype
        buf = (ctypes.c_byte * (int(n) * dtype.itemsize)).from_address(int(addr))
        return np.frombuffer(buf, dtype)

    _sqrt = np.sqrt  # a NumPy scalar in, the same dtype out, NaN below zero
else:
    from numba.cuda.extending import intrinsic, register_jitable as jitable
    from numba.cuda.np.numpy_support import carray

    from ._numba_util import pointer_intrinsic

    _as_ptr = intrinsic(pointer_intrinsic)

    @cuda.jit(device=True, inline="always")
    def _view(addr, n, like):
        return carray(_as_ptr(addr, like), n)

    _sqrt = math.sqrt


# ---------------------------------------------------------------------------
# Element functions: one element ``i`` of one rule.  Arguments: parameter,
# gradient and three slot views (unused ones are any array, never touched),
# the index, the packed scalars ``h`` in the tensor's dtype, and the tensor's
# gradient scale, decoupled weight-decay factor and coupled (L2) weight decay.

@jitable
def _grad(g, pi, gs, clip, l2):
    # scale, then clamp (NaN stays NaN), then coupled weight decay
    x = g * gs
    if x > clip:
        x = clip
    elif x < -clip:
        x = -clip
    if l2 != 0:
        x += l2 * pi
    return x


@jitable
def _centered_den(vi, ai, zero):
    d = vi - ai * ai
    if d < zero:  # rounding only; see fastopt.reference.rmsprop_centered
        d = zero
    return d


@jitable
def _sgd(p, g, s0, s1, s2, i, h, gs, kp, l2):
    pi = p[i]
    gi = _grad(g[i], pi, gs, h[0], l2)
    p[i] = pi * kp - h[1] * gi


@jitable
def _sgd_momentum(p, g, m, s1, s2, i, h, gs, kp, l2):
    pi = p[i]
    gi = _grad(g[i], pi, gs, h[0], l2)
    mi = h[2] * m[i] + h[1] * gi
    m[i] = mi
    p[i] = pi * kp + h[3] * mi


@jitable
def _sgd_nesterov(p, g, m, s1, s2, i, h, gs, kp, l2):
    pi = p[i]
    gi = _grad(g[i], pi, gs, h[0], l2)
    mi = h[2] * m[i] + h[1] * gi
    m[i] = mi
    p[i] = pi * kp + h[3] * (h[5] * mi + h[4] * gi)


@jitable
def _adagrad(p, g, acc, s1, s2, i, h, gs, kp, l2):
    pi = p[i]
    gi = _grad(g[i], pi, gs, h[0], l2)
    ai = acc[i] + gi * gi
    acc[i] = ai
    p[i] = pi * kp - h[1] * gi / (_sqrt(ai + h[2]) + h[3])


@jitable
def _rmsprop(p, g, v, s1, s2, i, h, gs, kp, l2):
    pi = p[i]
    gi = _grad(g[i], pi, gs, h[0], l2)
    vi = h[2] * v[i] + h[3] * (gi * gi)
    v[i] = vi
    p[i] = pi * kp - h[1] * gi / (_sqrt(vi + h[4]) + h[6])


@jitable
def _rmsprop_momentum(p, g, v, mom, s2, i, h, gs, kp, l2):
    pi = p[i]
    gi = _grad(g[i], pi, gs, h[0], l2)
    vi = h[2] * v[i] + h[3] * (gi * gi)
    v[i] = vi
    mi = h[5] * mom[i] + h[1] * gi / (_sqrt(vi + h[4]) + h[6])
    mom[i] = mi
    p[i] = pi * kp - h[7] * mi


@jitable
def _rmsprop_centered(p, g, v, av, s2, i, h, gs, kp, l2):
    pi = p[i]
    gi = _grad(g[i], pi, gs, h[0], l2)
    vi = h[2] * v[i] + h[3] * (gi * gi)
    ai = h[2] * av[i] + h[3] * gi
    v[i] = vi
    av[i] = ai
    den = _sqrt(_centered_den(vi, ai, p.dtype.type(0)) + h[4]) + h[6]
    p[i] = pi * kp - h[1] * gi / den


@jitable
def _rmsprop_centered_momentum(p, g, v, av, mom, i, h, gs, kp, l2):
    pi = p[i]
    gi = _grad(g[i], pi, gs, h[0], l2)
    vi = h[2] * v[i] + h[3] * (gi * gi)
    ai = h[2] * av[i] + h[3] * gi
    v[i] = vi
    av[i] = ai
    den = _sqrt(_centered_den(vi, ai, p.dtype.type(0)) + h[4]) + h[6]
    mi = h[5] * mom[i] + h[1] * gi / den
    mom[i] = mi
    p[i] = pi * kp - h[7] * mi


@jitable
def _adam(p, g, m, v, s2, i, h, gs, kp, l2):
    pi = p[i]
    gi = _grad(g[i], pi, gs, h[0], l2)
    mi = m[i] + (gi - m[i]) * h[2]
    vi = v[i] + (gi * gi - v[i]) * h[3]
    m[i] = mi
    v[i] = vi
    p[i] = pi * kp - mi * h[1] / (_sqrt(vi) + h[4])


@jitable
def _adam_amsgrad(p, g, m, v, vh, i, h, gs, kp, l2):
    pi = p[i]
    gi = _grad(g[i], pi, gs, h[0], l2)
    mi = m[i] + (gi - m[i]) * h[2]
    vi = v[i] + (gi * gi - v[i]) * h[3]
    hi = vh[i]
    if vi > hi:
        hi = vi
    m[i] = mi
    v[i] = vi
    vh[i] = hi
    p[i] = pi * kp - mi * h[1] / (_sqrt(hi) + h[4])


#: Element function of each loop code (``Rule.code``).
ELEMENTS = (_sgd, _sgd_momentum, _sgd_nesterov, _adagrad, _rmsprop, _rmsprop_momentum,
            _rmsprop_centered, _rmsprop_centered_momentum, _adam, _adam_amsgrad)


def _make_step(element, nslots):
    """The step kernel of one loop code: ``kernel(ptrs, gptrs, table, pt, like, hp)``.

    ``ptrs`` (int64, rows: parameter, then each slot; one column per tensor),
    ``gptrs`` (int64, the gradients' pointers, 0 = skip the tensor),
    ``table`` (int64, rows tensor, start, stop; one column per chunk),
    ``pt`` (float64, rows gradient scale, keep, l2; one column per tensor),
    ``like`` (an empty array of the tensors' dtype) and ``hp`` (a tuple of
    :data:`_HP` float64 constants from ``fastopt._rules.pack``).
    """
    # rows of ptrs the three slot views read; a rule with fewer slots reads its
    # last row again (row 0, the parameter, for plain SGD) and never touches it
    r0, r1, r2 = (min(k, nslots) for k in (1, 2, 3))

    def step(ptrs, gptrs, table, pt, like, hp):
        dt = like.dtype.type
        h = (dt(hp[0]), dt(hp[1]), dt(hp[2]), dt(hp[3]), dt(hp[4]), dt(hp[5]), dt(hp[6]),
             dt(hp[7]))
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for c in range(cuda.blockIdx.x, table.shape[1], cuda.gridDim.x):
            t = table[0, c]
            if gptrs[t] != 0:
                e = table[2, c]
                p = _view(ptrs[0, t], e, like)
                g = _view(gptrs[t], e, like)
                s0 = _view(ptrs[r0, t], e, like)
                s1 = _view(ptrs[r1, t], e, like)
                s2 = _view(ptrs[r2, t], e, like)
                gs = dt(pt[0, t])
                kp = dt(pt[1, t])
                l2 = dt(pt[2, t])
                for i in range(table[1, c] + tid, e, nt):
                    element(p, g, s0, s1, s2, i, h, gs, kp, l2)

    step.__name__ = step.__qualname__ = "step" + element.__name__
    return cuda.jit(step)


#: The step kernel of each loop code (``Rule.code``).
STEPS = tuple(_make_step(el, len(next(r.slots for r in RULES.values() if r.code == code)))
              for code, el in enumerate(ELEMENTS))


# ---------------------------------------------------------------------------
# Sums of squares for clipping by norm, on the device: one float64 partial sum
# per chunk (each thread sums a strided share of the chunk, then a tree over
# the block's threads in shared memory; blockDim.x must be a power of two),
# then one thread per tensor adds its chunks' partials in chunk order.  The
# order is fixed, so the result depends on the chunk size and the threads per
# block, never on the grid size or on timing.
#
# The shared buffer is dynamic shared memory (``blockDim.x`` float64, sized at
# launch): the simulator hands every thread the same dynamic buffer, whereas
# its lookup of a static ``cuda.shared.array`` has no lock, so two threads can
# get separate arrays (seen here as wrong norms, now and then).

@cuda.jit
def sumsq_chunks(gptrs, table, like, partial):
    buf = cuda.shared.array(0, types.float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for c in range(cuda.blockIdx.x, table.shape[1], cuda.gridDim.x):
        t = table[0, c]
        acc = 0.0
        if gptrs[t] != 0:
            e = table[2, c]
            g = _view(gptrs[t], e, like)
            for i in range(table[1, c] + tid, e, nt):
                x = np.float64(g[i])
                acc += x * x
        buf[tid] = acc
        cuda.syncthreads()
        k = nt // 2
        while k > 0:
            if tid < k:
                buf[tid] += buf[tid + k]
            cuda.syncthreads()
            k //= 2
        if tid == 0:
            partial[c] = buf[0]
        cuda.syncthreads()


@cuda.jit
def sumsq_tensors(first, partial, out):
    # first[t]: the tensor's first chunk; first[n]: the number of chunks
    for t in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        s = 0.0
        for c in range(first[t], first[t + 1]):
            s += partial[c]
        out[t] = s


# ---------------------------------------------------------------------------
# Element-wise helpers for what the optimizer does outside its kernels with
# device parameters (moving averages, gradient accumulation): the same
# operations as the NumPy expressions in fastopt.optimizers.base, in the
# array's dtype, one tensor per launch.

@cuda.jit
def lerp(y, x, a, b):
    """``y = a*y + b*x`` (``a``, ``b`` rounded to the dtype first)."""
    dt = y.dtype.type
    a_ = dt(a)
    b_ = dt(b)
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        y[i] = a_ * y[i] + b_ * x[i]


@cuda.jit
def add_scaled(y, x, s):
    """``y = y + x*s``."""
    s_ = y.dtype.type(s)
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        y[i] = y[i] + x[i] * s_


@cuda.jit
def divide(y, k):
    """``y = y / k``."""
    k_ = y.dtype.type(k)
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        y[i] = y[i] / k_


@cuda.jit
def fill(y, value):
    """``y = value``."""
    v = y.dtype.type(value)
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        y[i] = v


def ptx_signatures():
    """``(name, python function, argument types)`` of every kernel above, for
    float32 and float64: what the PTX check compiles."""
    from numba.cuda import types as nt

    out = []
    for dt in (nt.float32, nt.float64):
        arr, i64, f64 = dt[::1], nt.int64[::1], nt.float64[::1]
        i64_2d, f64_2d = nt.int64[:, ::1], nt.float64[:, ::1]
        hp = nt.UniTuple(nt.float64, _HP)
        for code, kernel in enumerate(STEPS):
            out.append((f"{kernel.py_func.__name__}[{dt}]", kernel.py_func,
                        (i64_2d, i64, i64_2d, f64_2d, arr, hp)))
        out += [
            (f"sumsq_chunks[{dt}]", sumsq_chunks.py_func, (i64, i64_2d, arr, f64)),
            (f"lerp[{dt}]", lerp.py_func, (arr, arr, nt.float64, nt.float64)),
            (f"add_scaled[{dt}]", add_scaled.py_func, (arr, arr, nt.float64)),
            (f"divide[{dt}]", divide.py_func, (arr, nt.float64)),
            (f"fill[{dt}]", fill.py_func, (arr, nt.float64)),
        ]
    out.append(("sumsq_tensors", sumsq_tensors.py_func, (nt.int64[::1], nt.float64[::1],
                                                         nt.float64[::1])))
    return out
