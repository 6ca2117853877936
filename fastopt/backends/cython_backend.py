"""Cython backend: ahead-of-time compiled, multi-tensor, OpenMP kernels.

The same kernel contract as the Numba backend (:mod:`fastopt.backends._contract`)
with no JIT warm-up and the lowest per-call overhead, for small and medium
steps.  The arithmetic lives in the extension module ``_cython_kernels``
(built from ``_cython_kernels.pyx`` by ``setup.py`` when fastopt is
installed; rendered from the rules of :mod:`fastopt.algorithms`): one element
loop per rule for float32 and one for float64, ``nogil``, chunked exactly like the Numba
backend (:data:`CHUNK` elements) and spread over ``fastopt.set_num_threads``
OpenMP threads from the measured parallel threshold on.  Results, including
the sums of squares of gradient clipping, are bit-identical whatever the
thread count.

Other Cython code can call the same kernels as ``nogil`` C functions; see
``_cython_kernels.pxd``.

:class:`Int8Plan` keeps the slots in 8 bits (``state_dtype="int8"``), bit for
bit as the Numba backend's :class:`fastopt.backends.numba_int8.Plan` does.

``setup.py`` also builds a copy of the extension for AVX2 CPUs
(``_cython_kernels_avx2``: 8 floats per vector, no fused multiply-add, so the
same bits); :data:`ISA` says which copy this process runs.

If the extension was not built, importing this module fails and the backend
is absent from :func:`fastopt.available_backends`.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..rule import RULES
from . import _contract, _q8
from . import _cython_kernels as _portable

NAME = "cython"


def _cpu_has_avx2():
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_features__
    return bool(__cpu_features__.get("AVX2"))


def _pick_extension():
    """``(module, isa)``: the AVX2 copy of the extension where it was built and
    the CPU has AVX2, unless ``FASTOPT_CYTHON_ISA=baseline``; else the
    portable (x86-64 baseline, SSE2) build."""
    if os.environ.get("FASTOPT_CYTHON_ISA", "").strip().lower() != "baseline" \
            and _cpu_has_avx2():
        try:
            from . import _cython_kernels_avx2 as avx2
        except ImportError:  # not built: another CPU, compiler or FASTOPT_NO_AVX2
            pass
        else:
            return avx2, "avx2"
    return _portable, "baseline"


_ext, ISA = _pick_extension()

#: Elements per chunk: the unit of work handed to a thread.
CHUNK = _ext.CHUNK

#: Whether the extension was compiled with OpenMP (False: every step is serial).
OPENMP = _ext.OPENMP


def _check_build():
    """The extension holds the rules as they were when it was built; refuse
    it (the backend is then absent) if the family modules changed since."""
    from types import SimpleNamespace

    from .._codegen import fingerprint
    now = tuple((r.name, fingerprint(SimpleNamespace(
        name=r.name, slots=r.slots, scalars=r.scalars, prepare=r.prepare_ast,
        element=r.element_ast, reductions=r.reductions,
        decide=r.decide_ast if r.two_phase else None))) for r in RULES.values())
    built = tuple(_ext.RULES)
    if now != built or (_ext is not _portable and built != tuple(_portable.RULES)):
        stale = sorted({n for n, _ in now} ^ {n for n, _ in built}
                       | {n for (n, f) in now if (n, f) not in set(built)})
        raise ImportError("the Cython extension was built from other rules than "
                          f"fastopt/algorithms holds now ({', '.join(stale)}); rebuild it: "
                          "pip install -e . (or python setup.py build_ext --inplace)")


_check_build()
_NUMBERS = {name: k for k, (name, _) in enumerate(_ext.RULES)}


def rule_number(rule):
    """The rule's index in the extension's tables (registry order)."""
    return _NUMBERS[rule.name]


class Plan(_contract.Plan):
    """Prepared multi-tensor step for one group of same-dtype tensors.

    The compiled :class:`_cython_kernels.Core` holds the pointer and chunk
    tables; its ``step`` and ``sumsq`` are bound to the instance, so a step is
    one call into C with no Python frame in between.
    """

    def __init__(self, rule, params, slots):
        super().__init__(rule, params, slots)
        self._core = _ext.Core(rule_number(rule), self.params, self.slots)
        # the rule's tuned threshold, looked up once; the override is read
        # in C at every step (fastopt.set_parallel_threshold)
        self._core.threshold = _PER_RULE.get((self.dtype.name, rule.name), -1)
        self.step = self._core.step
        self.sumsq = self._core.sumsq
        if rule.two_phase:
            self.reduce = self._core.reduce

    def step(self, grads, pt, scalars, clipvalue=math.inf):  # replaced per instance
        return self._core.step(grads, pt, scalars, clipvalue)

    def sumsq(self, grads):  # replaced per instance
        return self._core.sumsq(grads)

    def reduce(self, grads, pt, scalars, clipvalue=math.inf):  # replaced per instance
        return self._core.reduce(grads, pt, scalars, clipvalue)


class Int8Plan(_q8.PlanTraits, _contract.Plan):
    """Prepared multi-tensor step for float32 tensors with 8-bit slots.

    The same step as :class:`fastopt.backends.numba_int8.Plan`, bit for bit:
    per block of :data:`~fastopt.backends._q8.BLOCK` elements, the block's
    codes are decoded into a float32 scratch row per slot, the rule's own
    float32 loop (the one :class:`Plan` runs) updates the parameters and the
    rows, and each row is encoded against its new largest magnitude, the
    block's new scale (:func:`fastopt.reference.q8_encode` is the
    specification).  One pass, one read and one write of every state byte;
    OpenMP over chunks of :data:`CHUNK` elements (whole blocks) from float32's
    parallel threshold on, with the same results whatever the thread count.

    Parameters
    ----------
    rule : fastopt.rule.Rule
        A rule that :func:`fastopt.backends._q8.refusal` accepts.
    params : list of 1-D float32 arrays
        C-contiguous and writeable.
    slots : list (one per slot of the rule) of lists of ``(codes, scales)``
        Per tensor: its codes (1-D int8 for a signed slot, uint8 for one in
        ``rule.nonnegative``, the tensor's size) and its scales (1-D float32,
        one per block), C-contiguous and writeable, updated in place.
    rounding : {"nearest"}
    tensor_ids : ignored
        (The bfloat16 plan's argument: 8-bit codes round to nearest.)
    """

    def __init__(self, rule, params, slots, rounding="nearest", tensor_ids=None):
        _q8.check_plan(rule, params, slots, rounding)
        super().__init__(rule, params, [[c for c, _ in arrays] for arrays in slots])
        k = len(rule.slots)
        ptrs = np.zeros((2 + 2 * k, len(self.params)), dtype=np.intp)
        for t, p in enumerate(self.params):
            ptrs[0, t] = _address(p, "parameter", t)
            for j, arrays in enumerate(slots):
                codes, scales = arrays[t]
                ptrs[2 + j, t] = _address(codes, f"slot {rule.slots[j]!r} codes", t)
                ptrs[2 + k + j, t] = _address(scales, f"slot {rule.slots[j]!r} scales", t)
        self.scales = [[s for _, s in arrays] for arrays in slots]  # kept alive
        self._ptrs = ptrs
        self.rounding = rounding
        self.updates = 0
        self._core = _ext.Int8Core(rule_number(rule), _q8.signed_slots(rule),
                                   [p.size for p in self.params])

    def step(self, grads, pt, scalars, clipvalue=math.inf):
        """One step (see ``_contract.Plan.step``); a gradient that is not a
        C-contiguous float32 array of its tensor's size (or None) raises
        before anything changes."""
        self._core.set_grads(self._ptrs, grads)
        self._core.step(self._ptrs, pt, scalars, clipvalue)

    def sumsq(self, grads):
        """Per-tensor float64 sums of squares of ``grads`` (0 for None), in
        chunk order: the same bits as :meth:`Plan.sumsq`."""
        self._core.set_grads(self._ptrs, grads)
        return self._core.sumsq(self._ptrs)



def _address(a, what, t):
    """The data address of a C-contiguous writeable array (tensor ``t``'s ``what``)."""
    if not (isinstance(a, np.ndarray) and a.flags.c_contiguous and a.flags.writeable):
        raise ValueError(f"{what} {t} must be a C-contiguous writeable array")
    return a.ctypes.data


def int8_core(rule, sizes):
    """An :class:`_cython_kernels.Int8Core` for ``rule`` (8-bit slots) over
    tensors of ``sizes`` (:mod:`fastopt.multi_tensor`); float32's parallel
    threshold, as the Numba backend's 8-bit step."""
    return _ext.Int8Core(rule_number(rule), _q8.signed_slots(rule), list(sizes))


# In-place passes over one tensor (fastopt.buffers.HostArrays where Numba is
# missing): one nogil loop each, no temporary array, the NumPy expressions'
# roundings.

def lerp(y, x, a, b):
    """``y <- a*y + b*x`` in place."""
    _ext.inplace(y, x, 0, a, b)


def add_scaled(y, x, s):
    """``y <- y + x*s`` in place."""
    _ext.inplace(y, x, 1, s, 1.0)


def add_mean(y, x, s, k):
    """``y <- (y + x*s) / k`` in place."""
    _ext.inplace(y, x, 2, s, k)


def set_num_threads(n):
    _ext.set_num_threads(n)


def get_num_threads():
    return _ext.get_num_threads()


def max_threads():
    """OpenMP's default thread count (1 when built without OpenMP)."""
    return _ext.default_threads()


# Parallel thresholds (see numba_backend): the dtype defaults and the
# override live in the extension; the per-rule values here, read by each plan
# when it is made.
_PER_RULE: dict = {}   # (dtype name, rule name) -> threshold


def configure_thresholds(defaults, per_rule):
    """The tuned thresholds: ``defaults`` ``{dtype: n}``, ``per_rule``
    ``{dtype: {rule name: n}}`` (for plans made from now on)."""
    for dt, n in defaults.items():
        _ext.set_parallel_threshold(int(n), np.dtype(dt).name)
    _PER_RULE.clear()
    for dt, rules in per_rule.items():
        for name, n in rules.items():
            _PER_RULE[np.dtype(dt).name, name] = int(n)


def get_parallel_threshold(dtype, rule=None):
    """The threshold of ``rule`` (a name; None: the dtype's own) in
    ``dtype``, override included."""
    dt = np.dtype(dtype).name
    n = _ext.get_parallel_override(dt)
    if n < 0:
        n = _PER_RULE.get((dt, rule), _ext.get_parallel_threshold(dt))
    return n


def set_parallel_threshold(n, dtype):
    """Override every threshold of ``dtype`` with ``n`` (None: remove the
    override, back to the tuned values)."""
    _ext.set_parallel_override(-1 if n is None else int(n), np.dtype(dtype).name)


def addressed_core(rule, nslots, sizes, dtype):
    """An :class:`_cython_kernels.AddressedCore` for ``rule`` with the rule's
    tuned parallel threshold (:mod:`fastopt.multi_tensor`)."""
    dt = np.dtype(dtype)
    core = _ext.AddressedCore(rule_number(rule), nslots, list(sizes), dt == np.float64)
    core.threshold = _PER_RULE.get((dt.name, rule.name), -1)
    return core


# Public single-tensor kernels (sgd, adam, ...), same signatures on every backend.
globals().update(_contract.make_kernels(Plan, __name__))
__all__ = ["Plan", "Int8Plan", "CHUNK", "OPENMP", *sorted(RULES)]
