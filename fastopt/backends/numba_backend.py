"""Numba CPU backend: fused, multi-tensor, multi-threaded kernels.

One step of one optimizer over a whole group of same-dtype tensors is a single
compiled call.  The call receives a table of data pointers (one column per
tensor: parameter, gradient, slots) and a fixed table of chunks (tensor,
start, stop; at most :data:`CHUNK` elements each).  ``prange`` spreads the
chunks over threads; each chunk runs the rule's element loop once over memory.
Because the chunking is fixed, every result -- including the sums of squares
used by gradient clipping -- is the same whatever the thread count and
whether the serial or the parallel driver ran.

Float32 tensors are updated with float32 arithmetic; the per-step scalars are
computed in float64 on the host and rounded to float32 once per chunk.
"""
from __future__ import annotations

import ctypes
import math

import numba
import numpy as np
from numba import carray, prange

from .._rules import HP_SIZE, RULES, pack
from . import _contract
from ._numba_util import as_ptr, driver, kernel

NAME = "numba"

#: Elements per chunk: the unit of work handed to a thread.
CHUNK = 16384


# ---------------------------------------------------------------------------
# Element loops, one per rule.  Arguments: parameter and gradient views, slot
# views, packed scalars ``hp`` (see fastopt._rules.pack), the tensor's gradient
# scale and weight-decay factor.

@kernel
def _g(x, gscale, clip):
    # gradient transform: scale, then clamp; written so that NaN stays NaN
    x = x * gscale
    if x > clip:
        x = clip
    elif x < -clip:
        x = -clip
    return x


# Each loop reads its scalars once, in the tensor's dtype.  ``l2`` is coupled
# (PyTorch) weight decay, ``g += l2 * w``; the test on it is loop-invariant, so
# LLVM hoists it (unswitches the loop) and a zero ``l2`` costs nothing -- and
# never turns an infinite parameter into a NaN gradient.  Each loop reads
# ``p[i]`` once, before that test: the guarded term is then a select on values
# already loaded, which vectorises even where LLVM does not unswitch (the
# larger loops over bfloat16 parameters, numba_bf16).

@kernel
def _loop_sgd(p, g, hp, gs, kp, l2):
    dt = p.dtype.type
    clip, lr, gs, kp, l2 = dt(hp[0]), dt(hp[1]), dt(gs), dt(kp), dt(l2)
    for i in range(p.shape[0]):
        gi = _g(g[i], gs, clip)
        pi = p[i]
        if l2 != 0:
            gi += l2 * pi
        p[i] = pi * kp - lr * gi


@kernel
def _loop_sgd_momentum(p, g, m, hp, gs, kp, l2):
    dt = p.dtype.type
    clip, a, mu, b = dt(hp[0]), dt(hp[1]), dt(hp[2]), dt(hp[3])
    gs, kp, l2 = dt(gs), dt(kp), dt(l2)
    for i in range(p.shape[0]):
        gi = _g(g[i], gs, clip)
        pi = p[i]
        if l2 != 0:
            gi += l2 * pi
        mi = mu * m[i] + a * gi
        m[i] = mi
        p[i] = pi * kp + b * mi


@kernel
def _loop_sgd_nesterov(p, g, m, hp, gs, kp, l2):
    dt = p.dtype.type
    clip, a, mu, b, d = dt(hp[0]), dt(hp[1]), dt(hp[2]), dt(hp[3]), dt(hp[4])
    mu2, gs, kp, l2 = dt(hp[5]), dt(gs), dt(kp), dt(l2)
    for i in range(p.shape[0]):
        gi = _g(g[i], gs, clip)
        pi = p[i]
        if l2 != 0:
            gi += l2 * pi
        mi = mu * m[i] + a * gi
        m[i] = mi
        p[i] = pi * kp + b * (mu2 * mi + d * gi)


@kernel
def _loop_adagrad(p, g, acc, hp, gs, kp, l2):
    dt = p.dtype.type
    clip, lr, eps_in, eps_out = dt(hp[0]), dt(hp[1]), dt(hp[2]), dt(hp[3])
    gs, kp, l2 = dt(gs), dt(kp), dt(l2)
    for i in range(p.shape[0]):
        gi = _g(g[i], gs, clip)
        pi = p[i]
        if l2 != 0:
            gi += l2 * pi
        ai = acc[i] + gi * gi
        acc[i] = ai
        p[i] = pi * kp - lr * gi / (np.sqrt(ai + eps_in) + eps_out)


@kernel
def _centered_den(vi, ai, zero):
    d = vi - ai * ai
    if d < zero:  # rounding only; see fastopt.reference.rmsprop_centered
        d = zero
    return d


@kernel
def _loop_rmsprop(p, g, v, hp, gs, kp, l2):
    dt = p.dtype.type
    clip, a, rho, crho = dt(hp[0]), dt(hp[1]), dt(hp[2]), dt(hp[3])
    eps_in, eps_out, gs, kp, l2 = dt(hp[4]), dt(hp[6]), dt(gs), dt(kp), dt(l2)
    for i in range(p.shape[0]):
        gi = _g(g[i], gs, clip)
        pi = p[i]
        if l2 != 0:
            gi += l2 * pi
        vi = rho * v[i] + crho * (gi * gi)
        v[i] = vi
        p[i] = pi * kp - a * gi / (np.sqrt(vi + eps_in) + eps_out)


@kernel
def _loop_rmsprop_momentum(p, g, v, mom, hp, gs, kp, l2):
    dt = p.dtype.type
    clip, a, rho, crho = dt(hp[0]), dt(hp[1]), dt(hp[2]), dt(hp[3])
    eps_in, mu, eps_out, b = dt(hp[4]), dt(hp[5]), dt(hp[6]), dt(hp[7])
    gs, kp, l2 = dt(gs), dt(kp), dt(l2)
    for i in range(p.shape[0]):
        gi = _g(g[i], gs, clip)
        pi = p[i]
        if l2 != 0:
            gi += l2 * pi
        vi = rho * v[i] + crho * (gi * gi)
        v[i] = vi
        mi = mu * mom[i] + a * gi / (np.sqrt(vi + eps_in) + eps_out)
        mom[i] = mi
        p[i] = pi * kp - b * mi


@kernel
def _loop_rmsprop_centered(p, g, v, av, hp, gs, kp, l2):
    dt = p.dtype.type
    clip, a, rho, crho = dt(hp[0]), dt(hp[1]), dt(hp[2]), dt(hp[3])
    eps_in, eps_out, gs, kp, l2 = dt(hp[4]), dt(hp[6]), dt(gs), dt(kp), dt(l2)
    zero = dt(0)
    for i in range(p.shape[0]):
        gi = _g(g[i], gs, clip)
        pi = p[i]
        if l2 != 0:
            gi += l2 * pi
        vi = rho * v[i] + crho * (gi * gi)
        ai = rho * av[i] + crho * gi
        v[i] = vi
        av[i] = ai
        den = np.sqrt(_centered_den(vi, ai, zero) + eps_in) + eps_out
        p[i] = pi * kp - a * gi / den


@kernel
def _loop_rmsprop_centered_momentum(p, g, v, av, mom, hp, gs, kp, l2):
    dt = p.dtype.type
    clip, a, rho, crho = dt(hp[0]), dt(hp[1]), dt(hp[2]), dt(hp[3])
    eps_in, mu, eps_out, b = dt(hp[4]), dt(hp[5]), dt(hp[6]), dt(hp[7])
    gs, kp, l2, zero = dt(gs), dt(kp), dt(l2), dt(0)
    for i in range(p.shape[0]):
        gi = _g(g[i], gs, clip)
        pi = p[i]
        if l2 != 0:
            gi += l2 * pi
        vi = rho * v[i] + crho * (gi * gi)
        ai = rho * av[i] + crho * gi
        v[i] = vi
        av[i] = ai
        den = np.sqrt(_centered_den(vi, ai, zero) + eps_in) + eps_out
        mi = mu * mom[i] + a * gi / den
        mom[i] = mi
        p[i] = pi * kp - b * mi


@kernel
def _loop_adam(p, g, m, v, hp, gs, kp, l2):
    dt = p.dtype.type
    clip, alpha, c1, c2, eps = dt(hp[0]), dt(hp[1]), dt(hp[2]), dt(hp[3]), dt(hp[4])
    gs, kp, l2 = dt(gs), dt(kp), dt(l2)
    for i in range(p.shape[0]):
        gi = _g(g[i], gs, clip)
        pi = p[i]
        if l2 != 0:
            gi += l2 * pi
        mi = m[i] + (gi - m[i]) * c1
        vi = v[i] + (gi * gi - v[i]) * c2
        m[i] = mi
        v[i] = vi
        p[i] = pi * kp - mi * alpha / (np.sqrt(vi) + eps)


@kernel
def _loop_adam_amsgrad(p, g, m, v, vh, hp, gs, kp, l2):
    dt = p.dtype.type
    clip, alpha, c1, c2, eps = dt(hp[0]), dt(hp[1]), dt(hp[2]), dt(hp[3]), dt(hp[4])
    gs, kp, l2 = dt(gs), dt(kp), dt(l2)
    for i in range(p.shape[0]):
        gi = _g(g[i], gs, clip)
        pi = p[i]
        if l2 != 0:
            gi += l2 * pi
        mi = m[i] + (gi - m[i]) * c1
        vi = v[i] + (gi * gi - v[i]) * c2
        hi = vh[i]
        if vi > hi:
            hi = vi
        m[i] = mi
        v[i] = vi
        vh[i] = hi
        p[i] = pi * kp - mi * alpha / (np.sqrt(hi) + eps)


# ---------------------------------------------------------------------------
# Drivers: walk the chunk table.  ptrs rows: 0 param, 1 grad (0 = skip this
# tensor), 2.. slots.  table rows: tensor, start, stop.  pt rows: gradient
# scale, decoupled weight-decay factor, coupled (L2) weight decay (per tensor).

@kernel
def _view(ptrs, row, t, start, stop, like):
    return carray(as_ptr(ptrs[row, t], like), stop)[start:]


def _step_impl(rule, ptrs, ids, offset, none_id, table, pt, hp, like):
    if offset >= 0:  # resolve the gradients' data pointers (see data_pointers)
        for t in range(ids.shape[0]):
            ptrs[1, t] = 0 if ids[t] == none_id else carray(as_ptr(ids[t] + offset, ids), 1)[0]
    for c in prange(table.shape[1]):
        t = table[0, c]
        if ptrs[1, t] != 0:
            s = table[1, c]
            e = table[2, c]
            p = _view(ptrs, 0, t, s, e, like)
            g = _view(ptrs, 1, t, s, e, like)
            gs = pt[0, t]
            kp = pt[1, t]
            l2 = pt[2, t]
            if rule == 0:
                _loop_sgd(p, g, hp, gs, kp, l2)
            elif rule == 1:
                _loop_sgd_momentum(p, g, _view(ptrs, 2, t, s, e, like), hp, gs, kp, l2)
            elif rule == 2:
                _loop_sgd_nesterov(p, g, _view(ptrs, 2, t, s, e, like), hp, gs, kp, l2)
            elif rule == 3:
                _loop_adagrad(p, g, _view(ptrs, 2, t, s, e, like), hp, gs, kp, l2)
            elif rule == 4:
                _loop_rmsprop(p, g, _view(ptrs, 2, t, s, e, like), hp, gs, kp, l2)
            elif rule == 5:
                _loop_rmsprop_momentum(p, g, _view(ptrs, 2, t, s, e, like),
                                       _view(ptrs, 3, t, s, e, like), hp, gs, kp, l2)
            elif rule == 6:
                _loop_rmsprop_centered(p, g, _view(ptrs, 2, t, s, e, like),
                                       _view(ptrs, 3, t, s, e, like), hp, gs, kp, l2)
            elif rule == 7:
                _loop_rmsprop_centered_momentum(
                    p, g, _view(ptrs, 2, t, s, e, like), _view(ptrs, 3, t, s, e, like),
                    _view(ptrs, 4, t, s, e, like), hp, gs, kp, l2)
            elif rule == 8:
                _loop_adam(p, g, _view(ptrs, 2, t, s, e, like),
                           _view(ptrs, 3, t, s, e, like), hp, gs, kp, l2)
            elif rule == 9:
                _loop_adam_amsgrad(p, g, _view(ptrs, 2, t, s, e, like),
                                   _view(ptrs, 3, t, s, e, like),
                                   _view(ptrs, 4, t, s, e, like), hp, gs, kp, l2)


_step_parallel, _step_serial = driver(_step_impl)


@kernel
def _chunk_sumsq(g):
    # four independent float64 accumulators: a fixed order, so deterministic
    a0 = a1 = a2 = a3 = 0.0
    n = g.shape[0]
    n4 = n - n % 4
    for i in range(0, n4, 4):
        x0 = np.float64(g[i])
        x1 = np.float64(g[i + 1])
        x2 = np.float64(g[i + 2])
        x3 = np.float64(g[i + 3])
        a0 += x0 * x0
        a1 += x1 * x1
        a2 += x2 * x2
        a3 += x3 * x3
    for i in range(n4, n):
        x = np.float64(g[i])
        a0 += x * x
    return (a0 + a1) + (a2 + a3)


def _sumsq_impl(ptrs, table, ntensors, like, partial, out):
    # partial: one float64 per chunk, preallocated by the plan
    for c in prange(table.shape[1]):
        t = table[0, c]
        if ptrs[1, t] != 0:
            partial[c] = _chunk_sumsq(_view(ptrs, 1, t, table[1, c], table[2, c], like))
        else:
            partial[c] = 0.0
    out[:ntensors] = 0.0
    for c in range(table.shape[1]):  # in chunk order: fixed summation order
        out[table[0, c]] += partial[c]


_sumsq_parallel, _sumsq_serial = driver(_sumsq_impl)


@kernel
def _resolve_pointers(ids, offset, none_id, out):
    # out[i] = the data pointer of the ndarray whose id() is ids[i], read from
    # the array object's struct (see _data_field_offset); 0 for None.
    for i in range(ids.shape[0]):
        if ids[i] == none_id:
            out[i] = 0
        else:
            out[i] = carray(as_ptr(ids[i] + offset, ids), 1)[0]


def _data_field_offset():
    """Byte offset of the data pointer inside a NumPy array object, or None.

    NumPy's C API reads an array's data pointer from a fixed field of the
    array struct (``PyArray_DATA``).  Reading it directly for a whole list of
    gradients costs a few nanoseconds per array instead of the ~1.3 us of
    ``arr.ctypes.data``.  The offset is found and checked here on arrays of
    several kinds; if anything disagrees the backend falls back to
    ``ctypes.data``.
    """
    probes = [np.empty(5), np.empty((3, 4), np.float32)[1], np.zeros(()),
              np.arange(10.0)[3:], np.empty(0, np.float32)]
    words = (ctypes.c_ssize_t * 8).from_address(id(probes[0]))
    candidates = [k for k in range(8) if words[k] == probes[0].ctypes.data]
    for k in candidates:
        offset = k * ctypes.sizeof(ctypes.c_ssize_t)
        if all(ctypes.c_ssize_t.from_address(id(a) + offset).value == a.ctypes.data
               for a in probes):
            return offset
    return None


_DATA_OFFSET = _data_field_offset()
_NONE_ID = id(None)


def data_pointers(arrays, out):
    """Fill ``out`` (intp) with the data pointers of ``arrays`` (None -> 0)."""
    if _DATA_OFFSET is not None:
        ids = np.fromiter(map(id, arrays), np.intp, len(arrays))
        _resolve_pointers(ids, _DATA_OFFSET, _NONE_ID, out)
    else:  # pragma: no cover - only on an unusual NumPy build
        for i, a in enumerate(arrays):
            out[i] = 0 if a is None else a.ctypes.data


# ---------------------------------------------------------------------------
# The plan: everything about a group of tensors that does not change between
# steps, prepared once.

def chunk_table(sizes, chunk=CHUNK):
    """Chunks (tensor, start, stop) covering tensors of the given sizes."""
    counts = [(n + chunk - 1) // chunk for n in sizes]
    table = np.empty((3, sum(counts)), dtype=np.intp)
    c = 0
    for t, (n, k) in enumerate(zip(sizes, counts)):
        starts = np.arange(k, dtype=np.intp) * chunk
        table[0, c:c + k] = t
        table[1, c:c + k] = starts
        table[2, c:c + k] = np.minimum(starts + chunk, n)
        c += k
    return table


class Plan(_contract.Plan):
    """Prepared multi-tensor step for one group of same-dtype tensors."""

    def __init__(self, rule, params, slots):
        super().__init__(rule, params, slots)
        n = len(params)
        self._ptrs = np.zeros((2 + len(slots), n), dtype=np.intp)
        for t, p in enumerate(params):
            self._ptrs[0, t] = p.ctypes.data
            for k, slot in enumerate(slots):
                self._ptrs[2 + k, t] = slot[t].ctypes.data
        self._table = chunk_table([p.size for p in params])
        self._like = np.empty(0, dtype=params[0].dtype)
        self._norms = np.zeros(n)
        self._hp = np.zeros(HP_SIZE)
        self._partial = np.zeros(self._table.shape[1])

    def _set_grads(self, grads):
        data_pointers(grads, self._ptrs[1])

    def step(self, grads, pt, scalars, clipvalue=math.inf):
        self._hp[:] = pack(self.rule, scalars, clipvalue)
        run = _step_parallel if self.size >= _THRESHOLD[self.dtype] else _step_serial
        if _DATA_OFFSET is not None:  # pointers resolved inside the compiled call
            ids = np.fromiter(map(id, grads), np.intp, len(grads))
            run(self.rule.code, self._ptrs, ids, _DATA_OFFSET, _NONE_ID, self._table, pt,
                self._hp, self._like)
        else:  # pragma: no cover - only on an unusual NumPy build
            self._set_grads(grads)
            run(self.rule.code, self._ptrs, self._ptrs[1], -1, 0, self._table, pt, self._hp,
                self._like)

    def sumsq(self, grads):
        self._set_grads(grads)
        run = _sumsq_parallel if self.size >= _THRESHOLD[self.dtype] else _sumsq_serial
        run(self._ptrs, self._table, len(self.params), self._like, self._partial, self._norms)
        return self._norms


# Parallel threshold: below it the serial driver runs.  Set by fastopt.backends.
_THRESHOLD = {np.dtype(np.float32): 1 << 15, np.dtype(np.float64): 1 << 14}


def get_parallel_threshold(dtype):
    return _THRESHOLD[np.dtype(dtype)]


def set_parallel_threshold(n, dtype):
    _THRESHOLD[np.dtype(dtype)] = int(n)


def set_num_threads(n):
    numba.set_num_threads(n)


def get_num_threads():
    return numba.get_num_threads()


def max_threads():
    return numba.config.NUMBA_NUM_THREADS


# Public single-tensor kernels (sgd, adam, ...), same signatures on every backend.
globals().update(_contract.make_kernels(Plan, __name__))
__all__ = ["Plan", "CHUNK", *sorted(RULES)]


def threading_layer():
    """Numba's threading layer (runs a tiny parallel kernel first if needed)."""
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        _sumsq_parallel(np.zeros((2, 1), np.intp), np.zeros((3, 0), np.intp), 1,
                        np.empty(0), np.zeros(0), np.zeros(1))
        return numba.threading_layer()
