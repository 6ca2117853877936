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
import threading

import numba
import numpy as np
from numba import carray, prange

from .. import _codegen
from ..rule import RULES
from . import _contract
from ._numba_util import as_ptr, driver, gil_kernel, kernel

NAME = "numba"

#: Elements per chunk: the unit of work handed to a thread.
CHUNK = 16384


# ---------------------------------------------------------------------------
# The element language's calls (fastopt._codegen.PY_CALLS), in the tensor's
# dtype.  ``_fmax``/``_fmin`` follow np.maximum/np.minimum: a NaN wins, and a
# tie returns the first argument; written as selects, so loops vectorise.

@kernel
def _sqrt(x):
    return np.sqrt(x)


_abs = kernel(_codegen.fabs)
_fmax = kernel(_codegen.fmax)
_fmin = kernel(_codegen.fmin)


@kernel
def _copysign(a, b):
    return np.copysign(a, b)


@kernel
def _sign(x):
    return np.sign(x)


@kernel
def _pow(a, b):
    return np.power(a, b)


@kernel
def _g(x, gscale, clip):
    # gradient transform: scale, then clamp; written so that NaN stays NaN
    x = x * gscale
    if x > clip:
        x = clip
    elif x < -clip:
        x = -clip
    return x


@kernel
def _view(ptrs, row, t, start, stop, like):
    return carray(as_ptr(ptrs[row, t], like), stop)[start:]


@kernel
def _ema_chunk(y, x, m):
    # the moving average y <- m*y + (1-m)*x in y's dtype, both weights rounded
    # from float64 to it first: the same operations, and so the same bits, as
    # NumPy's ``y[...] = m*y + (1-m)*x`` with Python floats m and 1-m
    dt = y.dtype.type
    a = dt(m)
    b = dt(1.0 - m)
    for i in range(y.shape[0]):
        y[i] = a * y[i] + b * x[i]


# ---------------------------------------------------------------------------
# Generated code.  Each rule's element function (fastopt.algorithms) is
# rendered into the element loop below, and the loop into a driver that
# walks the chunk table: ptrs rows 0 param, 1 grad (0 = skip this tensor),
# 2.. slots; table rows tensor, start, stop; pt rows gradient scale,
# decoupled weight-decay factor, coupled (L2) weight decay, per tensor.
#
# The loop reads its scalars once, in the tensor's dtype.  It reads ``p[i]``
# once, before the test on ``l2``: that test is loop-invariant, so LLVM
# unswitches the loop and a zero ``l2`` costs nothing (and never turns an
# infinite parameter into a NaN gradient); where LLVM does not unswitch (the
# larger loops over bfloat16 parameters, numba_bf16) the guarded term is a
# select on values already loaded, which still vectorises.
#
# ``_step_ema`` is ``_step`` running ``_loop_ema`` (``use_ema``): ``eptrs``
# row 0 holds the averages' data pointers, ``em`` the momentum of this step;
# a tensor without a gradient has its average moved by :func:`_ema_chunk`.
# It is a driver of its own, so the plain step is the same code as without it.
#
# The functions are closures over ``__key`` (a hash of the generated source),
# which Numba's on-disk cache hashes into its key, and are compiled as if
# defined in this file (whose size and time stamp are in the key too).

# The element loop, rendered twice: ``_loop``, and ``_loop_ema`` (``use_ema``),
# which also moves the moving average ``ea`` towards each new parameter value
# as it is stored: ``ea[i] = dt(em)*ea[i] + dt(1-em)*w``, the same operations,
# and so the same bits, as NumPy's ``ea[...] = em*ea + (1-em)*p`` after the
# step.  One more array read and written in the same pass (Adam: 28 -> 36
# bytes per parameter); measured against a second short loop over each chunk
# after the first (the chunk still in cache), the single loop costs less.
LOOP_FUNCTION = """\
    def {fname}(p, g, {slot_args}hp, gs, kp, l2{us_arg}{ema_arg}):
        __key  # noqa: B018 - a closure cell: part of the cache key
        dt = p.dtype.type
        clip = dt(hp[0])
{scalars}
        gs = dt(gs)
        kp = dt(kp)
        l2 = dt(l2)
{inits}
        for i in range(p.shape[0]):
            e_g = _g(g[i], gs, clip)
            pi = p[i]
            if l2 != 0:
                e_g += l2 * pi
            e_w = pi * kp
{w_in}
{loads}
{body}
{stores}
{store_p}
"""

LOOP_TEMPLATE = """\
def _make(__key):
{loop}
{loop_ema}
    def _step(ptrs, ids, offset, none_id, table, pt, hp, like):
        __key  # noqa: B018
        if offset >= 0:  # resolve the gradients' data pointers (see data_pointers)
            _resolve_pointers(ids, offset, none_id, ptrs[1])
        for c in prange(table.shape[1]):
            t = table[0, c]
            if ptrs[1, t] != 0:
                s = table[1, c]
                e = table[2, c]
                loop_{name}(_view(ptrs, 0, t, s, e, like), _view(ptrs, 1, t, s, e, like),
                            {slot_views}hp, pt[0, t], pt[1, t], pt[2, t]{us_pass})

    def _step_ema(ptrs, ids, offset, none_id, table, pt, hp, like, eptrs, em):
        __key  # noqa: B018
        if offset >= 0:
            _resolve_pointers(ids, offset, none_id, ptrs[1])
        for c in prange(table.shape[1]):
            t = table[0, c]
            s = table[1, c]
            e = table[2, c]
            if ptrs[1, t] != 0:
                loop_ema_{name}(_view(ptrs, 0, t, s, e, like), _view(ptrs, 1, t, s, e, like),
                                {slot_views}hp, pt[0, t], pt[1, t], pt[2, t]{us_pass},
                                _view(eptrs, 0, t, s, e, like), em)
            else:  # no gradient: the average still follows the parameters
                _ema_chunk(_view(eptrs, 0, t, s, e, like), _view(ptrs, 0, t, s, e, like), em)

    return _loop, _loop_ema, _step, _step_ema
"""

# A two_phase rule's first pass (fastopt.two_phase): the element function
# run over every element without storing anything.  Element i's squared
# quantity is added to lane i % LANES of that reduction's float64 lane array
# (a fixed order: each lane sums its elements in element order; the loop
# over a block's lanes vectorises, there being no dependence between lanes),
# the lanes are added by _lanes_total (a fixed tree), then per tensor in
# chunk order: bit-identical at any thread count, and the same bits as the
# Cython backend's.
LANES = 64

REDUCE_TEMPLATE = """\
def _make(__key):
    def _rloop(p, g, {slot_args}hp, gs, kp, l2, partial, c):
        __key  # noqa: B018 - a closure cell: part of the cache key
        dt = p.dtype.type
        clip = dt(hp[0])
{scalars}
        gs = dt(gs)
        kp = dt(kp)
        l2 = dt(l2)
        n = p.shape[0]
        nfull = n - n % {lanes}
{lane_init}
        for b in range(0, nfull, {lanes}):
            for j in range({lanes}):
                i = b + j
{element_block}
        for i in range(nfull, n):
            j = i - nfull
{element_tail}
{acc_store}

    def _reduce(ptrs, table, pt, hp, like, partial, out):
        __key  # noqa: B018
        for c in prange(table.shape[1]):
            t = table[0, c]
            if ptrs[1, t] != 0:
                s = table[1, c]
                e = table[2, c]
                rloop_{name}(_view(ptrs, 0, t, s, e, like), _view(ptrs, 1, t, s, e, like),
                             {slot_views}hp, pt[0, t], pt[1, t], pt[2, t], partial, c)
            else:
                for k in range(partial.shape[0]):
                    partial[k, c] = 0.0
        out[:, :] = 0.0
        for c in range(table.shape[1]):  # in chunk order: a fixed order of summation
            for k in range(partial.shape[0]):
                out[k, table[0, c]] += partial[k, c]

    return _rloop, _reduce
"""


@kernel
def _lanes_total(a):
    # the lanes of a reduction, added in a fixed tree (pairs, then pairs of pairs)
    n = a.shape[0]
    while n > 1:
        n //= 2
        for j in range(n):
            a[j] = a[j] + a[j + n]
    return a[0]


def render(rule):
    """The Python source of ``rule``'s element loop and driver."""
    fn = rule.element_ast
    names = ["g", "w", *rule.slots, *rule.prepared, *_codegen.assigned_names(fn)]
    rename = {n: "e_" + n for n in names}
    k = len(rule.slots)
    two = rule.two_phase
    # two_phase: the displacement scaled by the tensor's update scale
    store_w = "w_in + us * (e_w - w_in)" if two else "e_w"
    parts = dict(
        slot_args="".join(f"s{j}, " for j in range(k)),
        scalars="\n".join(f"        e_{n} = dt(hp[{j + 1}])"
                          for j, n in enumerate(rule.prepared)),
        loads="\n".join(f"            e_{n} = s{j}[i]" for j, n in enumerate(rule.slots)),
        body="\n".join(_codegen.python_lines(fn, rename, 3)),
        stores="\n".join(f"            s{j}[i] = e_{n}" for j, n in enumerate(rule.slots)),
        us_arg=", us" if two else "",
        w_in="            w_in = e_w" if two else "")
    us_init = ["        us = dt(us)"] if two else []
    loop = LOOP_FUNCTION.format(fname="_loop", ema_arg="", inits="\n".join(us_init),
                                store_p=f"            p[i] = {store_w}", **parts)
    loop_ema = LOOP_FUNCTION.format(
        fname="_loop_ema", ema_arg=", ea, em",
        inits="\n".join(us_init + ["        ema_a = dt(em)", "        ema_b = dt(1.0 - em)"]),
        store_p=f"            ema_w = {store_w}\n            p[i] = ema_w\n"
                "            ea[i] = ema_a * ea[i] + ema_b * ema_w", **parts)
    return LOOP_TEMPLATE.format(
        loop=loop, loop_ema=loop_ema, name=rule.name,
        slot_views="".join(f"_view(ptrs, {2 + j}, t, s, e, like), " for j in range(k)),
        us_pass=", pt[3, t]" if two else "")


def render_reduce(rule):
    """The Python source of a two_phase ``rule``'s first pass (its element
    loop without stores, accumulating :data:`fastopt._codegen.ELEMENT_REDUCTIONS`
    in :data:`LANES` lanes)."""
    from .._codegen import ELEMENT_REDUCTIONS
    fn = rule.element_ast
    names = ["g", "w", *rule.slots, *rule.prepared, *_codegen.assigned_names(fn)]
    rename = {n: "e_" + n for n in names}
    k = len(rule.slots)
    quantity = [ELEMENT_REDUCTIONS[r].format(w="e_w", w_in="w_in") for r in rule.reductions]

    def element(pad):
        lines = [f"e_g = _g(g[i], gs, clip)", "pi = p[i]", "if l2 != 0:",
                 "    e_g += l2 * pi", "e_w = pi * kp", "w_in = e_w"]
        lines += [f"e_{n} = s{j}[i]" for j, n in enumerate(rule.slots)]
        out = [" " * pad + line for line in lines]
        out += _codegen.python_lines(fn, rename, pad // 4)
        for j, q in enumerate(quantity):
            out += [f"{' ' * pad}x{j} = np.float64({q})",
                    f"{' ' * pad}acc{j}[j] += x{j} * x{j}"]
        return "\n".join(out)
    return REDUCE_TEMPLATE.format(
        name=rule.name, lanes=LANES,
        slot_args="".join(f"s{j}, " for j in range(k)),
        scalars="\n".join(f"        e_{n} = dt(hp[{j + 1}])"
                          for j, n in enumerate(rule.prepared)),
        lane_init="\n".join(f"        acc{j} = np.zeros({LANES})" for j in range(len(quantity))),
        element_block=element(16), element_tail=element(12),
        acc_store="\n".join(f"        partial[{j}, c] = _lanes_total(acc{j})"
                             for j in range(len(quantity))),
        slot_views="".join(f"_view(ptrs, {2 + j}, t, s, e, like), " for j in range(k)))


def source_key(*sources):
    """A hash of generated sources: the cache key cell of their closures."""
    import hashlib
    return hashlib.sha256("\0".join(sources).encode()).hexdigest()


def generate(source, key, filename, namespace, names):
    """Execute generated ``source`` (defining ``_make(__key)``) as if written
    in ``filename``, in a copy of ``namespace``; return that namespace and the
    Python functions ``_make(key)`` returns, named (``__qualname__``, which
    names Numba's cache files) ``names``.  The functions call each other by
    global names of the namespace, never through closure cells."""
    ns = dict(namespace)
    exec(compile(source, filename, "exec"), ns)  # noqa: S102 - our own rendered rules
    fns = ns["_make"](key)
    for fn, name in zip(fns, names):
        fn.__name__ = fn.__qualname__ = name
    return ns, dict(zip(names, fns))


class Compiled:
    """A rule's compiled element loop and its two drivers (built on first use)."""

    def __init__(self, rule):
        self.source = render(rule)
        loop, step = "loop_" + rule.name, "step_" + rule.name
        loop_ema = "loop_ema_" + rule.name
        ns, fns = generate(self.source, source_key(self.source), __file__, globals(),
                           (loop, loop_ema, step, "step_ema_" + rule.name))
        self.loop = ns[loop] = kernel(fns[loop])
        self.loop_ema = ns[loop_ema] = kernel(fns[loop_ema])
        self.step_parallel, self.step_serial = driver(fns[step])
        # compiled on first use only: optimizers without use_ema never build it
        self.ema_parallel, self.ema_serial = driver(fns["step_ema_" + rule.name])
        if rule.two_phase:
            self.reduce_source = render_reduce(rule)
            rloop, red = "rloop_" + rule.name, "reduce_" + rule.name
            ns, fns = generate(self.reduce_source, source_key(self.reduce_source), __file__,
                               globals(), (rloop, red))
            self.rloop = ns[rloop] = kernel(fns[rloop])
            self.reduce_parallel, self.reduce_serial = driver(fns[red])


def per_rule(build):
    """``get(rule)``: ``build(rule)``, made once per rule per process."""
    made = {}

    def get(rule):
        c = made.get(rule.name)
        if c is None:
            c = made[rule.name] = build(rule)
        return c
    return get


#: ``compiled(rule)``: the rule's :class:`Compiled`.
compiled = per_rule(Compiled)


# ---------------------------------------------------------------------------
# Sums of squares (clipping by norm): deterministic, per tensor.

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


# ---------------------------------------------------------------------------
# Many gradients checked in one compiled pass.  A step over hundreds of small
# tensors spent most of its Python time on per-gradient attribute reads
# (``g.dtype``, ``g.shape``, ``g.flags.c_contiguous``: about 150 ns a tensor)
# and on ``np.fromiter(map(id, grads))`` (twice).  The fields below are read
# straight from the list and array structs instead; their offsets are those of
# CPython's list object and NumPy's ``PyArrayObject_fields``, and every one is
# checked on probe objects at import: if any disagrees, the Python checks run.

class _ArrayHead(ctypes.Structure):
    """The leading fields of NumPy's array struct, pointers as integers."""
    _fields_ = [("ob_refcnt", ctypes.c_ssize_t), ("ob_type", ctypes.c_ssize_t),
                ("data", ctypes.c_ssize_t), ("nd", ctypes.c_int),
                ("dimensions", ctypes.c_ssize_t), ("strides", ctypes.c_ssize_t),
                ("base", ctypes.c_ssize_t), ("descr", ctypes.c_ssize_t),
                ("flags", ctypes.c_int)]


#: offsets into the list struct and the array struct, in _LAYOUT's order
_LIST_ITEMS, _TYPE, _DATA, _ND, _DIMS, _DESCR, _FLAGS = range(7)
_C_CONTIGUOUS = 0x0001  # NPY_ARRAY_C_CONTIGUOUS


def _struct_layout():
    """``[list items, ob_type, data, nd, dimensions, descr, flags]`` byte
    offsets (intp), or None if a probe object disagrees with them."""
    word = ctypes.sizeof(ctypes.c_ssize_t)
    head = _ArrayHead
    layout = np.array([3 * word, head.ob_type.offset, head.data.offset, head.nd.offset,
                       head.dimensions.offset, head.descr.offset, head.flags.offset], np.intp)
    items = [object() for _ in range(5)]
    start = ctypes.c_ssize_t.from_address(id(items) + int(layout[_LIST_ITEMS])).value
    if list((ctypes.c_ssize_t * 5).from_address(start)) != [id(x) for x in items]:
        return None
    probes = [np.empty(5), np.empty((3, 4), np.float32)[1], np.zeros(()),
              np.arange(10.0)[3:], np.empty(0, np.float32), np.empty((4, 6))[:, ::2],
              np.empty((2, 3), np.float32).T, np.empty((2, 1, 3), np.float64),
              np.empty(3, np.dtype(">f4"))]
    for a in probes:
        h = head.from_address(id(a))
        dims = list((ctypes.c_ssize_t * a.ndim).from_address(h.dimensions)) if a.ndim else []
        if (h.ob_type != id(np.ndarray) or h.data != a.ctypes.data or h.nd != a.ndim
                or tuple(dims) != a.shape or h.descr != id(a.dtype)
                or bool(h.flags & _C_CONTIGUOUS) != a.flags.c_contiguous):
            return None
    return layout


_LAYOUT = _struct_layout() if _DATA_OFFSET is not None else None



@kernel
def _word(address, like):
    return carray(as_ptr(address, like), 1)[0]


@gil_kernel  # reads a list while it cannot change
def _list_ids(lst, n, items_at, out):
    # out[:n] = the addresses (ids) of the first n items of the list at lst
    items = carray(as_ptr(_word(lst + items_at, out), out), n)
    for i in range(n):
        out[i] = items[i]


@gil_kernel  # reads a list while it cannot change
def _first_unfit(lst, meta, spec, ranges, ints, ids):
    # ids[:n] = the list's n items; returns the first item that is not an
    # exact ndarray of the expected dtype object, dimensions and shape,
    # C-contiguous, whose bytes overlap no parameter but exactly its own, or
    # -1 when all are.  meta: the _LAYOUT offsets, then id(np.ndarray), n;
    # spec rows per tensor: descr id, ndim, nbytes, shape; ranges rows:
    # the parameters' byte ranges, start, end and owning tensor, sorted by
    # start (they never overlap each other).  (Arrays packed into few
    # arguments: each one costs the call a type check.)
    n = meta[8]
    starts = ranges[0]
    items = carray(as_ptr(_word(lst + meta[0], ids), ids), n)
    for t in range(n):
        a = items[t]
        ids[t] = a
        if _word(a + meta[1], ids) != meta[7] or _word(a + meta[5], ids) != spec[t, 0]:
            return t
        nd = spec[t, 1]
        if _word(a + meta[3], ints) != nd or (_word(a + meta[6], ints) & 1) == 0:
            return t
        if nd:
            dims = carray(as_ptr(_word(a + meta[4], ids), ids), nd)
            for k in range(nd):
                if dims[k] != spec[t, 3 + k]:
                    return t
        lo = _word(a + meta[2], ids)
        hi = lo + spec[t, 2]
        k = np.searchsorted(starts, hi) - 1     # the last parameter starting below hi
        if k >= 0 and ranges[1, k] > lo and not (ranges[2, k] == t and starts[k] == lo
                                                 and ranges[1, k] == hi):
            return t
    return -1


def object_ids(objects, out=None):
    """The ids (object addresses) of ``objects`` as an intp array: read from
    the list struct in one compiled call for a list (``out``, if given, is
    filled and returned), ``np.fromiter`` otherwise."""
    n = len(objects)
    if objects.__class__ is list and _LAYOUT is not None and n:
        if out is None or out.shape[0] != n:
            out = np.empty(n, np.intp)
        _list_ids(id(objects), n, _LAYOUT[_LIST_ITEMS], out)
        return out
    return np.fromiter(map(id, objects), np.intp, n)


class GradientCheck:
    """The compiled check of a list of gradients against their parameters.

    ``check(grads)`` (``grads`` a list of one entry per parameter) is -1 when
    every gradient is an exact ndarray of its parameter's dtype (the same
    dtype object, as ``g.dtype is p.dtype``) and shape, C-contiguous, whose
    memory overlaps no parameter but exactly its own; otherwise the index of
    the first that is not (which may still be acceptable: the caller then
    looks closer, in Python).  :attr:`available` is False where the struct
    layout could not be confirmed (then nothing is checked here).

    Parameters
    ----------
    params : list of ndarray
    ranges : sequence of (start, end, index)
        The parameters' byte ranges (they never overlap each other).
    """

    available = _LAYOUT is not None

    def __init__(self, params, ranges):
        n = len(params)
        self._ranges = np.array(sorted(ranges), np.intp).reshape(-1, 3).T.copy()
        ndim = max(1, max(p.ndim for p in params))
        self._spec = np.zeros((n, 3 + ndim), np.intp)
        for t, p in enumerate(params):
            self._spec[t, :3] = id(p.dtype), p.ndim, p.nbytes
            self._spec[t, 3:3 + p.ndim] = p.shape
        self._dtypes = [p.dtype for p in params]  # keeps the descr ids alive
        self._meta = np.array([*_LAYOUT, id(np.ndarray), n], np.intp)
        self._ids = np.empty(n, np.intp)
        self._ints = np.empty(0, np.intc)

    def __call__(self, grads):
        if grads.__class__ is not list or len(grads) != len(self._ids):
            return 0
        return _first_unfit(id(grads), self._meta, self._spec, self._ranges, self._ints,
                            self._ids)


def data_pointers(arrays, out):
    """Fill ``out`` (intp) with the data pointers of ``arrays`` (None -> 0)."""
    if _DATA_OFFSET is not None:
        _resolve_pointers(object_ids(arrays), _DATA_OFFSET, _NONE_ID, out)
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
    """Prepared multi-tensor step for one group of same-dtype tensors.

    After :meth:`attach_ema`, :meth:`step_ema` runs the step and the moving
    average of the parameters (``use_ema``) in one pass."""

    #: Whether :meth:`attach_ema` and :meth:`step_ema` fold the moving average
    #: into the step.
    fuses_ema = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "fuses_ema" not in cls.__dict__:
            # a subclass (other slot types, other loops) folds the average in
            # only with a step_ema of its own
            cls.fuses_ema = "step_ema" in cls.__dict__

    def __init__(self, rule, params, slots):
        super().__init__(rule, params, slots)
        self._eptrs = None
        n = len(params)
        self._ptrs = np.zeros((2 + len(slots), n), dtype=np.intp)
        for t, p in enumerate(params):
            self._ptrs[0, t] = p.ctypes.data
            for k, slot in enumerate(slots):
                self._ptrs[2 + k, t] = slot[t].ctypes.data
        self._table = chunk_table([p.size for p in params])
        self._like = np.empty(0, dtype=params[0].dtype)
        self._norms = np.zeros(n)
        self._hp = np.zeros(1 + len(rule.prepared))
        self._compiled = compiled(rule)
        self._partial = np.zeros(self._table.shape[1])
        self._reduced = None
        self._ids = None
        self._lookup_threshold()

    def _lookup_threshold(self):
        """The rule's parallel threshold, looked up here once (and again
        only after a threshold changed: :data:`_generation`)."""
        self._threshold = threshold_for(self.rule.name, self.dtype)
        self._generation = _generation

    def _parallel(self):
        """Whether this group runs the parallel driver."""
        if self._generation != _generation:
            self._lookup_threshold()
        return self.size >= self._threshold

    def _set_grads(self, grads):
        data_pointers(grads, self._ptrs[1])

    def step(self, grads, pt, scalars, clipvalue=math.inf):
        self._hp[:] = self.rule.pack(scalars, clipvalue)
        c = self._compiled
        if self._generation != _generation:
            self._lookup_threshold()
        if self.size >= self._threshold:
            run = c.step_parallel
            sync_threads()
        else:
            run = c.step_serial
        if _DATA_OFFSET is not None:  # pointers resolved inside the compiled call
            ids = self._ids = object_ids(grads, self._ids)
            run(self._ptrs, ids, _DATA_OFFSET, _NONE_ID, self._table, pt, self._hp,
                self._like)
        else:  # pragma: no cover - only on an unusual NumPy build
            self._set_grads(grads)
            run(self._ptrs, self._ptrs[1], -1, 0, self._table, pt, self._hp, self._like)

    def attach_ema(self, averages):
        """Keep the addresses of ``averages`` (one C-contiguous array per
        tensor, of its size and dtype, alive as long as the plan) for
        :meth:`step_ema`."""
        averages = list(averages)
        if len(averages) != len(self.params) or any(
                a.size != p.size or a.dtype != p.dtype or not a.flags.c_contiguous
                for a, p in zip(averages, self.params)):
            raise ValueError("attach_ema: one C-contiguous average per tensor, of its size "
                             "and dtype")
        self._averages = averages  # kept alive with the plan
        self._eptrs = np.array([[a.ctypes.data for a in averages]], dtype=np.intp)

    def step_ema(self, grads, pt, scalars, clipvalue, momentum):
        """:meth:`step`, then in the same pass over each chunk ``ema <-
        momentum * ema + (1 - momentum) * param`` on every tensor (those with
        a None gradient too): the averages of :meth:`attach_ema`."""
        self._hp[:] = self.rule.pack(scalars, clipvalue)
        c = self._compiled
        if self._parallel():
            run = c.ema_parallel
            sync_threads()
        else:
            run = c.ema_serial
        m = float(momentum)
        if _DATA_OFFSET is not None:
            ids = self._ids = object_ids(grads, self._ids)
            run(self._ptrs, ids, _DATA_OFFSET, _NONE_ID, self._table, pt, self._hp,
                self._like, self._eptrs, m)
        else:  # pragma: no cover - only on an unusual NumPy build
            self._set_grads(grads)
            run(self._ptrs, self._ptrs[1], -1, 0, self._table, pt, self._hp, self._like,
                self._eptrs, m)

    def reduce(self, grads, pt, scalars, clipvalue=math.inf):
        """A two_phase rule's first pass (:mod:`fastopt.two_phase`): the
        ``(len(rule.reductions), n_tensors)`` float64 sums; nothing stored."""
        self._hp[:] = self.rule.pack(scalars, clipvalue)
        self._set_grads(grads)
        c = self._compiled
        if self._parallel():
            run = c.reduce_parallel
            sync_threads()
        else:
            run = c.reduce_serial
        nred = len(self.rule.reductions)
        if self._reduced is None:
            self._reduced = np.zeros((nred, self._table.shape[1]))
        out = np.zeros((nred, len(self.params)))
        run(self._ptrs, self._table, pt, self._hp, self._like, self._reduced, out)
        return out

    def sumsq(self, grads):
        self._set_grads(grads)
        if self.size >= get_parallel_threshold(self.dtype):  # the dtype's: not a rule
            run = _sumsq_parallel
            sync_threads()
        else:
            run = _sumsq_serial
        run(self._ptrs, self._table, len(self.params), self._like, self._partial, self._norms)
        return self._norms


# Parallel thresholds: below its threshold a group runs the serial driver.
# Set by fastopt.backends from tuning.json (configure_thresholds): a default
# per dtype and a value per rule (its measured class's); a user's
# fastopt.set_parallel_threshold (set_parallel_threshold here) overrides both
# for its dtype.  Plans look their rule's threshold up once and again only
# when _generation moved (any change here bumps it): one integer comparison
# per step.
_THRESHOLD = {np.dtype(np.float32): 1 << 15, np.dtype(np.float64): 1 << 14}
_PER_RULE: dict = {}    # (dtype, rule name) -> threshold
_OVERRIDE: dict = {}    # dtype -> threshold
_generation = 0


def _changed():
    global _generation
    _generation += 1


def configure_thresholds(defaults, per_rule):
    """The tuned thresholds: ``defaults`` ``{dtype: n}`` (a rule without its
    own value, and passes that are not a rule's), ``per_rule`` ``{dtype:
    {rule name: n}}``; replaces the per-rule values, keeps any override."""
    for dt, n in defaults.items():
        _THRESHOLD[np.dtype(dt)] = int(n)
    _PER_RULE.clear()
    for dt, rules in per_rule.items():
        for name, n in rules.items():
            _PER_RULE[np.dtype(dt), name] = int(n)
    _changed()


def threshold_for(rule_name, dtype):
    """The threshold a group of ``rule_name`` in ``dtype`` runs by: the
    override, else the rule's tuned value, else the dtype's default."""
    dt = np.dtype(dtype)
    n = _OVERRIDE.get(dt)
    if n is None:
        n = _PER_RULE.get((dt, rule_name), _THRESHOLD[dt])
    return n


def resolved_call(plan, grads, parallel, serial):
    """``(driver, ids, offset, none_id)`` for a reduced-state plan's step:
    the ``parallel`` or ``serial`` driver by the dtype's threshold, and the
    gradients' ids for the compiled call to resolve (or their pointers,
    already resolved, on an unusual NumPy build)."""
    if plan.size >= get_parallel_threshold(plan.dtype):
        run = parallel
        sync_threads()
    else:
        run = serial
    if _DATA_OFFSET is not None:  # pointers resolved inside the compiled call
        plan._ids = object_ids(grads, plan._ids)
        return run, plan._ids, _DATA_OFFSET, _NONE_ID
    plan._set_grads(grads)  # pragma: no cover - only on an unusual NumPy build
    return run, plan._ptrs[1], -1, 0  # pragma: no cover


def get_parallel_threshold(dtype, rule=None):
    """The threshold of ``rule`` (a name; None: the dtype's own, which
    passes that are not a rule's use) in ``dtype``, override included."""
    return threshold_for(rule, dtype)


def set_parallel_threshold(n, dtype):
    """Override every threshold of ``dtype`` with ``n`` (None: remove the
    override, back to the tuned values)."""
    if n is None:
        _OVERRIDE.pop(np.dtype(dtype), None)
    else:
        _OVERRIDE[np.dtype(dtype)] = int(n)
    _changed()


# One pass over a tensor and a slot of its shape: ``w += c * (z - w)``, the
# parameters moved towards (or, c < 0, away from) a slot in place -- what
# schedule-free AdamW's train() and eval() do (z: its base sequence).

def _toward_impl(w, z, c):
    for i in prange(w.size):
        w[i] = w[i] + (z[i] - w[i]) * c


_toward_parallel, _toward_serial = driver(_toward_impl)


def toward(w, z, c):
    """``w <- w + c * (z - w)`` in place, one fused pass: ``w`` and ``z``
    C-contiguous arrays of one shape and dtype (float32 or float64), ``c`` a
    float rounded to that dtype.  Exact where ``z == w``."""
    flat_w, flat_z = w.reshape(-1), z.reshape(-1)
    if w.size >= get_parallel_threshold(w.dtype):
        sync_threads()
        _toward_parallel(flat_w, flat_z, w.dtype.type(c))
    else:
        _toward_serial(flat_w, flat_z, w.dtype.type(c))


# In-place passes over one tensor for the array work around the kernels
# (fastopt.buffers.HostArrays: moving averages, gradient accumulation): the
# NumPy expressions of the reference, in the array's dtype, with the same
# roundings (each scalar rounded from float64 to the dtype first), and no
# temporary array.

def _lerp_impl(y, x, a, b):
    dt = y.dtype.type
    a_ = dt(a)
    b_ = dt(b)
    for i in prange(y.size):
        y[i] = a_ * y[i] + b_ * x[i]


def _add_scaled_impl(y, x, s):
    s_ = y.dtype.type(s)
    for i in prange(y.size):
        y[i] = y[i] + x[i] * s_


def _add_mean_impl(y, x, s, k):
    dt = y.dtype.type
    s_ = dt(s)
    k_ = dt(k)
    for i in prange(y.size):
        y[i] = (y[i] + x[i] * s_) / k_


_lerp_drivers = driver(_lerp_impl)
_add_scaled_drivers = driver(_add_scaled_impl)
_add_mean_drivers = driver(_add_mean_impl)


def _elementwise(drivers, y, *args):
    if y.size >= get_parallel_threshold(y.dtype):
        sync_threads()
        drivers[0](y.reshape(-1), *args)
    else:
        drivers[1](y.reshape(-1), *args)


def lerp(y, x, a, b):
    """``y <- a*y + b*x`` in place, one pass: ``y`` and ``x`` C-contiguous of
    one shape and dtype, ``a`` and ``b`` floats rounded to that dtype."""
    _elementwise(_lerp_drivers, y, x.reshape(-1), float(a), float(b))


def add_scaled(y, x, s):
    """``y <- y + x*s`` in place, one pass (``s`` rounded to the dtype)."""
    _elementwise(_add_scaled_drivers, y, x.reshape(-1), float(s))


def add_mean(y, x, s, k):
    """``y <- (y + x*s) / k`` in place, one pass (``s`` and ``k`` rounded to
    the dtype): the last call of a gradient-accumulation cycle."""
    _elementwise(_add_mean_drivers, y, x.reshape(-1), float(s), float(k))


# Threads.  Numba's thread count is thread-local; fastopt's is process-wide, as
# torch's is: set_num_threads records it, and every parallel call applies it in
# the thread that makes the call (sync_threads: one thread-local read when
# nothing changed).
_num_threads = None        # fastopt.set_num_threads' count; None: Numba's default
_applied = threading.local()


def set_num_threads(n):
    global _num_threads
    _num_threads = int(n)
    numba.set_num_threads(_num_threads)
    _applied.n = _num_threads


def sync_threads():
    """Apply the process-wide count in this thread, if it is not applied yet."""
    n = _num_threads
    if n is not None and getattr(_applied, "n", None) != n:
        numba.set_num_threads(n)
        _applied.n = n


def get_num_threads():
    return numba.get_num_threads() if _num_threads is None else _num_threads


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
