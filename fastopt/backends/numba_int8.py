"""8-bit optimizer state for the Numba backend (``state_dtype="int8"``).

Each slot of a tensor (Adam's ``m`` and ``v``, ...) is kept as one 8-bit code
per element and one float32 scale per block of
:data:`fastopt.reference.Q8_BLOCK` elements: int8 codes for slots that can be
negative, uint8 codes for the slots a rule declares never negative
(:attr:`fastopt.rule.Rule.nonnegative`).  :func:`fastopt.reference.q8_encode`
is the code's specification, and :mod:`fastopt.backends.numba_q8` its
intrinsics.  Parameters and gradients stay float32, and all the arithmetic is
float32.

One pass, one read and one write of every state byte: for each block of a
chunk, the block's codes are decoded into a float32 scratch row per slot
(1 KB each: it stays in L1), the rule's own element loop from
:mod:`fastopt.backends.numba_backend` -- the loop the float32-state
optimizers run, unchanged -- updates the block's parameters and the scratch
rows in place, and each scratch row is encoded again against its new
largest magnitude, which is the block's new scale.  So the new scale needs no
second pass over memory, each formula exists once, and the parameter update
uses the new slot values before they are rounded (as with bfloat16 state).
A step is bit for bit the float32-state step on the decoded state followed by
the reference encoder.

Adam moves 4 (parameter) + 4 (gradient) + 4 (parameter written) + 2 x (1 + 1)
bytes per parameter, and 2 x 2 x 4 bytes of scales per 256: about 16 instead
of 28.  The chunk table and the threads are numba_backend's: results do not
depend on the thread count.
"""
from __future__ import annotations

import math
import os

import operator

import numpy as np
from numba import carray, prange, types
from numba.core import cgutils
from numba.extending import (intrinsic, make_attribute_wrapper, models, overload,
                             overload_attribute, register_model)

from . import _numba_util, numba_backend as nb, numba_q8
from ._numba_util import as_ptr, driver, kernel
from ._q8 import (BLOCK, ROUNDINGS, PlanTraits, check_plan, code_dtype, n_blocks, refusal,
                  signed_slots)
from .numba_q8 import abs_bits, q8_decode, q8_encode, scale_of

__all__ = ["Plan", "ROUNDINGS", "refusal", "BLOCK", "signed_slots", "code_dtype", "n_blocks"]

assert nb.CHUNK % BLOCK == 0  # chunks start on block boundaries

_SELF_STAMP = "%x-%x" % (os.stat(__file__).st_size, os.stat(__file__).st_mtime_ns)


# ---------------------------------------------------------------------------
# A block of 8-bit codes seen as a float32 array: the slot type the element
# loops get.  ``s[i]`` decodes code i with the block's scale; ``s[i] = x``
# writes x to the block's float32 scratch row (encoded after the loop, once
# the block's new largest magnitude is known).

class Q8Slot(types.Type):
    """Numba type: one block of a slot's 8-bit codes (int8 or uint8), its
    scale and a float32 scratch row, indexed as float32 (see above).  The
    name carries this file's stamp, so that machine code cached for an old
    layout is never reused."""

    def __init__(self, code):
        self.codes_type = types.Array(code, 1, "C")
        self.out_type = types.Array(types.float32, 1, "C")
        super().__init__(name=f"Q8Slot({code}, {_SELF_STAMP})")


@register_model(Q8Slot)
class _Q8SlotModel(models.StructModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, [("codes", fe_type.codes_type),
                                        ("scale", types.float32),
                                        ("out", fe_type.out_type)])


make_attribute_wrapper(Q8Slot, "codes", "codes")
make_attribute_wrapper(Q8Slot, "scale", "scale")
make_attribute_wrapper(Q8Slot, "out", "out")


@intrinsic
def _q8_slot(typingctx, codes, scale, out):
    """``_q8_slot(codes, float32 scale, float32 scratch)``: a :class:`Q8Slot`."""
    if not (isinstance(codes, types.Array) and codes.dtype in (types.int8, types.uint8)):
        return None
    slot = Q8Slot(codes.dtype)

    def codegen(context, builder, signature, args):
        s = cgutils.create_struct_proxy(slot)(context, builder)
        s.codes, s.scale, s.out = args
        context.nrt.incref(builder, signature.args[0], args[0])
        context.nrt.incref(builder, signature.args[2], args[2])
        return s._getvalue()

    return slot(codes, types.float32, out), codegen


@overload(operator.getitem)
def _slot_getitem(slot, i):
    if isinstance(slot, Q8Slot) and isinstance(i, types.Integer):
        return lambda slot, i: q8_decode(slot.codes[i], slot.scale)


@overload(operator.setitem)
def _slot_setitem(slot, i, x):
    if isinstance(slot, Q8Slot) and isinstance(i, types.Integer):
        def store(slot, i, x):
            slot.out[i] = np.float32(x)
        return store


@overload_attribute(Q8Slot, "shape")
def _slot_shape(slot):
    return lambda slot: slot.codes.shape


# ---------------------------------------------------------------------------
# One block of one slot: its new scale and codes, from float32 values.

@kernel
def _new_scale(x):
    # the largest magnitude (NaN if a value is not finite): a max over the
    # values' bits, which vectorises without reordering float compares
    mx = np.int32(0)
    for i in range(x.shape[0]):
        b = abs_bits(x[i])
        mx = b if b > mx else mx
    return scale_of(mx)


@kernel
def _encode(x, codes, scales, blk):
    # block ``blk``'s new scale, then its codes (signed or not as ``codes``)
    scale = _new_scale(x)
    scales[blk] = scale
    inv = np.float32(1.0) / scale if scale != 0 else np.float32(0.0)
    for i in range(x.shape[0]):
        codes[i] = q8_encode(x[i], inv, codes)


@kernel
def _scales(ptrs, row, t, blk, like):
    # a tensor's scale array, long enough to index block ``blk``
    return carray(as_ptr(ptrs[row, t], like), blk + 1)


# ---------------------------------------------------------------------------
# Drivers.  ptrs rows: 0 param, 1 grad (0 = skip this tensor), 2..2+k the
# slots' codes, 2+k..2+2k their scales; table and pt as in numba_backend.

DRIVER_TEMPLATE = """\
def _make(__key):
    def _run_chunk(ptrs, t, s, e, like, i8, u8, hp, gs, kp, l2):
        __key  # noqa: B018 - a closure cell: part of the cache key
{scratch}
        for b0 in range(s, e, {block}):
            b1 = min(b0 + {block}, e)
            n = b1 - b0
            blk = b0 // {block}
            loop_{name}(nb._view(ptrs, 0, t, b0, b1, like), nb._view(ptrs, 1, t, b0, b1, like),
                        {rows}hp, gs, kp, l2)
{encode}

    def _step(ptrs, ids, offset, none_id, table, pt, hp, like, i8, u8):
        __key  # noqa: B018
        if offset >= 0:  # resolve the gradients' data pointers (see numba_backend)
            nb._resolve_pointers(ids, offset, none_id, ptrs[1])
        for c in prange(table.shape[1]):
            t = table[0, c]
            if ptrs[1, t] != 0:
                run_chunk_{name}(ptrs, t, table[1, c], table[2, c], like, i8, u8, hp,
                                 pt[0, t], pt[1, t], pt[2, t])

    return _run_chunk, _step
"""

_STAMP = tuple((os.stat(m.__file__).st_size, os.stat(m.__file__).st_mtime_ns)
               for m in (nb, _numba_util, numba_q8))


def render(rule):
    """The Python source of ``rule``'s 8-bit-state drivers."""
    k = len(rule.slots)
    signed = signed_slots(rule)
    like = ["i8" if sg else "u8" for sg in signed]
    return DRIVER_TEMPLATE.format(
        name=rule.name, block=BLOCK,
        scratch="\n".join([f"        buf = np.empty({k * BLOCK}, np.float32)",
                            "        at = buf.ctypes.data"]
                           + [f"        x{j} = carray(as_ptr(at + {4 * BLOCK * j}, like), {BLOCK})"
                              for j in range(k)]),
        rows="".join(f"_q8_slot(nb._view(ptrs, {2 + j}, t, b0, b1, {like[j]}), "
                     f"_scales(ptrs, {2 + k + j}, t, blk, like)[blk], x{j}[:n]), "
                     for j in range(k)),
        encode="\n".join(
            f"            _encode(x{j}[:n], "
            f"nb._view(ptrs, {2 + j}, t, b0, b1, {like[j]}), "
            f"_scales(ptrs, {2 + k + j}, t, blk, like), blk)" for j in range(k)))


class Compiled:
    """A rule's 8-bit-state drivers (built on first use)."""

    def __init__(self, rule):
        loop = nb.compiled(rule)
        self.source = render(rule)
        names = [f"run_chunk_{rule.name}", f"step_{rule.name}"]
        key = nb.source_key(self.source, loop.source, repr(_STAMP))
        ns, fns = nb.generate(self.source, key, __file__,
                              {**globals(), "loop_" + rule.name: loop.loop}, names)
        ns[names[0]] = kernel(fns[names[0]])
        self.step_parallel, self.step_serial = driver(fns[names[1]])


#: ``compiled(rule)``: the rule's :class:`Compiled`.
compiled = nb.per_rule(Compiled)


class Plan(PlanTraits, nb.Plan):
    """Prepared multi-tensor step for float32 tensors with 8-bit slots.

    Parameters
    ----------
    rule : fastopt.rule.Rule
        A rule that :func:`refusal` accepts.
    params : list of 1-D float32 arrays
    slots : list (one per slot of the rule) of lists of ``(codes, scales)``
        Per tensor: its codes (1-D int8 for a signed slot, uint8 for one in
        ``rule.nonnegative``, the tensor's size) and its scales (1-D float32,
        :func:`n_blocks` of the size), updated in place.
    rounding : {"nearest"}
    tensor_ids : ignored
        (The bfloat16 plan's argument: 8-bit codes round to nearest.)
    """

    def __init__(self, rule, params, slots, rounding="nearest", tensor_ids=None):
        check_plan(rule, params, slots, rounding)
        super().__init__(rule, params, [[c for c, _ in arrays] for arrays in slots])
        k = len(rule.slots)
        ptrs = np.zeros((2 + 2 * k, len(params)), dtype=np.intp)
        ptrs[:2 + k] = self._ptrs
        for j, arrays in enumerate(slots):
            for t, (_, scales) in enumerate(arrays):
                ptrs[2 + k + j, t] = scales.ctypes.data
        self._ptrs = ptrs
        self.rounding = rounding
        self.updates = 0
        self._i8, self._u8 = np.empty(0, np.int8), np.empty(0, np.uint8)
        self._q8 = compiled(rule)

    def step(self, grads, pt, scalars, clipvalue=math.inf):
        self._hp[:] = self.rule.pack(scalars, clipvalue)
        run, ids, offset, none_id = nb.resolved_call(self, grads, self._q8.step_parallel,
                                                   self._q8.step_serial)
        run(self._ptrs, ids, offset, none_id, self._table, pt, self._hp, self._like,
            self._i8, self._u8)

