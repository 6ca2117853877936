"""bfloat16 optimizer state for the Numba backend (``state_dtype="bfloat16"``).

The slots (Adam's ``m`` and ``v``, ...) live in uint16 arrays that hold
bfloat16 bit patterns; parameters and gradients stay float32 and all the
arithmetic is float32.  A step reads each slot as 2 bytes and writes it as 2
bytes, so Adam moves 20 bytes per parameter instead of 28.

How: :class:`BF16Slot` is a Numba type that wraps a uint16 array and behaves
like a float32 array for ``x = s[i]`` (decode: the bits shifted into a
float32) and ``s[i] = x`` (round to bfloat16).  The step hands such slots to
the rule's own element loop from :mod:`fastopt.backends.numba_backend` --
the very loop the float32-state optimizers run, unchanged -- which Numba
compiles again for these argument types into one fused, vectorised pass.
So each formula exists once, and the parameter update uses the new slot
values before they are rounded (the rounding happens at the store).  The step
walks the same chunk table as ``numba_backend`` (``prange`` over chunks), so
results do not depend on the thread count.

Rounding (:func:`fastopt.reference.bf16_round` is the specification):

* ``"nearest"``: round to nearest, ties to even;
* ``"stochastic"``: round away from zero with probability equal to the
  fraction of a bfloat16 spacing that is cut off, so that the stored value is
  right on average.  The random numbers are a hash of (update count,
  tensor, element), whose low 16 bits round the first slot and high 16 bits
  the others (:func:`fastopt.reference.bf16_random_bits`), so runs are
  reproducible, do not depend on threads, and resume bit-identically.

bfloat16 and float16 *parameters* (``fastopt.MultiTensorStep(rule,
"bfloat16" or "float16", ...)``, what ``fastopt.torch`` runs for such tensors)
keep their gradients and state in the same 2-byte type.  Then the parameter
and the gradient are slots too (:class:`BF16Slot`, or :class:`HalfSlot` for
IEEE half, which LLVM converts with ``fpext``/``fptrunc``): both types have
the ``shape`` and the ``dtype`` (float32) that the element loops read, so the
very same loops compile into one vectorised pass, float32 arithmetic, every
store rounded to nearest, as PyTorch's fused optimizers do.  The calls are
unswitched by hand on the coupled weight decay (see ``run_chunk_narrow``).

The rules run here are not separate entries of :data:`fastopt.rule.RULES`
(every other backend mirrors that table); the optimizers reach this module
through :func:`fastopt.backends.resolve_state_backend`.
"""
from __future__ import annotations

import math
import operator
import os

import numpy as np
from numba import prange, types
from numba.core import cgutils
from numba.extending import (intrinsic, make_attribute_wrapper, models, overload,
                             overload_attribute, register_model)

from . import _contract, _numba_util, numba_backend as nb, numba_bits
from .numba_bits import (bf16_decode, bf16_nearest, bf16_stochastic, f16_decode, f16_nearest,
                         hash32, random_bits)
from ._numba_util import driver, kernel

__all__ = ["Plan", "ROUNDINGS", "refusal"]

#: The roundings of ``state_rounding``, the default first.
ROUNDINGS = ("nearest", "stochastic")

def refusal(rule):
    """Why ``rule`` cannot keep its state in bfloat16, or None if it can
    (its family module says: ``Rule.bf16_refusal``)."""
    if not rule.slots:
        return "it has no state"
    return rule.bf16_refusal


_SELF_STAMP = "%x-%x-%x-%x" % (os.stat(__file__).st_size, os.stat(__file__).st_mtime_ns,
                                os.stat(numba_bits.__file__).st_size,
                                os.stat(numba_bits.__file__).st_mtime_ns)


# ---------------------------------------------------------------------------
# A uint16 array seen as float32: the slot type the element loops get.

class BF16Slot(types.Type):
    """Numba type: bfloat16 bits in a uint16 array, indexed as float32.

    ``stochastic`` (part of the type, so fixed at compile time) selects the
    rounding of ``s[i] = x``; a stochastic slot carries ``base`` and
    ``shift``, which pick its random numbers
    (:func:`fastopt.reference.bf16_random_bits`).

    numba_backend's element loops are compiled for this type and cached with
    numba_backend's own files; the type's name carries this file's stamp, so
    that a change here (say, to the layout) can never meet machine code
    cached for the old one.
    """

    def __init__(self, stochastic):
        self.stochastic = stochastic
        self.bits_type = types.Array(types.uint16, 1, "C")
        rounding = "stochastic" if stochastic else "nearest"
        super().__init__(name=f"BF16Slot({rounding}, {_SELF_STAMP})")


@register_model(BF16Slot)
class _BF16SlotModel(models.StructModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, [("bits", fe_type.bits_type), ("base", types.int64),
                                        ("shift", types.int64)])


make_attribute_wrapper(BF16Slot, "bits", "bits")
make_attribute_wrapper(BF16Slot, "base", "base")
make_attribute_wrapper(BF16Slot, "shift", "shift")


class HalfSlot(BF16Slot):
    """Numba type: IEEE half-precision bits in a uint16 array, indexed as
    float32 (``s[i] = x`` rounds to nearest, ties to even): float16
    parameters, gradients and state."""

    def __init__(self):
        super().__init__(False)
        self.name = f"HalfSlot({_SELF_STAMP})"


register_model(HalfSlot)(_BF16SlotModel)
make_attribute_wrapper(HalfSlot, "bits", "bits")


@intrinsic
def _half_slot(typingctx, bits):
    """``_half_slot(uint16 array)``: a :class:`HalfSlot` over it."""
    slot = HalfSlot()

    def codegen(context, builder, signature, args):
        s = cgutils.create_struct_proxy(slot)(context, builder)
        s.bits = args[0]
        s.base = context.get_constant(types.int64, 0)
        s.shift = context.get_constant(types.int64, 0)
        context.nrt.incref(builder, signature.args[0], args[0])
        return s._getvalue()

    return slot(bits), codegen


@intrinsic
def _bf16_slot(typingctx, bits, base, shift):
    """``_bf16_slot(uint16 array, base, shift)``: round to nearest if ``base``
    is None; else stochastically, element ``i`` with the 16 bits of
    ``hash32(base + i)`` from bit ``shift`` on."""
    if base is types.none:
        slot = BF16Slot(False)
    elif isinstance(base, types.Integer):
        slot = BF16Slot(True)
    else:
        return None

    def codegen(context, builder, signature, args):
        s = cgutils.create_struct_proxy(slot)(context, builder)
        s.bits = args[0]
        zero = context.get_constant(types.int64, 0)
        s.base = zero if base is types.none else context.cast(builder, args[1], base, types.int64)
        s.shift = context.cast(builder, args[2], signature.args[2], types.int64)
        context.nrt.incref(builder, signature.args[0], args[0])
        return s._getvalue()

    return slot(bits, base, shift), codegen


@overload(operator.getitem)
def _slot_getitem(slot, i):
    if isinstance(slot, HalfSlot) and isinstance(i, types.Integer):
        return lambda slot, i: f16_decode(slot.bits[i])
    if isinstance(slot, BF16Slot) and isinstance(i, types.Integer):
        return lambda slot, i: bf16_decode(slot.bits[i])


@overload(operator.setitem)
def _slot_setitem(slot, i, x):
    if not (isinstance(slot, BF16Slot) and isinstance(i, types.Integer)):
        return None
    if isinstance(slot, HalfSlot):
        def store(slot, i, x):
            slot.bits[i] = f16_nearest(np.float32(x))
    elif slot.stochastic:
        def store(slot, i, x):
            slot.bits[i] = bf16_stochastic(np.float32(x), random_bits(slot.base, i, slot.shift))
    else:
        def store(slot, i, x):
            slot.bits[i] = bf16_nearest(np.float32(x))
    return store


# A slot standing for a parameter (2-byte parameters) is also indexed by the
# element loops for its length and dtype: float32, the arithmetic's type.

@overload_attribute(BF16Slot, "shape")
@overload_attribute(HalfSlot, "shape")
def _slot_shape(slot):
    return lambda slot: slot.bits.shape


@intrinsic
def _float32_dtype(typingctx, slot):
    def codegen(context, builder, signature, args):
        return context.get_dummy_value()
    return types.DType(types.float32)(slot), codegen


@overload_attribute(BF16Slot, "dtype")
@overload_attribute(HalfSlot, "dtype")
def _slot_dtype(slot):
    return lambda slot: _float32_dtype(slot)


def _narrow(bits, half):  # pragma: no cover - replaced by the overload
    raise NotImplementedError


@overload(_narrow)
def _narrow_impl(bits, half):
    # a 2-byte float array read and written as float32: bfloat16 (half is
    # None) or IEEE half (an integer), both rounded to nearest
    if half is types.none:
        return lambda bits, half: _bf16_slot(bits, None, 0)
    return lambda bits, half: _half_slot(bits)


def _base(updates, tensor, start):  # pragma: no cover - replaced by the overload
    raise NotImplementedError


@overload(_base)
def _base_impl(updates, tensor, start):
    # None (round to nearest) or the hash input of element ``start``, see
    # fastopt.reference.bf16_random_bits
    if updates is types.none:
        return lambda updates, tensor, start: None

    def base(updates, tensor, start):
        return np.int64(hash32(np.int64(hash32(updates + 1)) + tensor)) + start
    return base


# ---------------------------------------------------------------------------
# Drivers.  ptrs rows: 0 param, 1 grad (0 = skip this tensor), 2.. slots
# (uint16); table and pt as in numba_backend.
#
# The compiled code below inlines numba_backend's element loops, but Numba's
# on-disk cache only notices edits to the file a function is defined in.  So
# these functions are built as closures over the size and time stamp of the
# files they inline, which Numba hashes into their cache key: editing
# numba_backend.py recompiles them instead of reusing stale machine code.

def _stamp(*modules):
    return tuple((os.stat(m.__file__).st_size, os.stat(m.__file__).st_mtime_ns)
                 for m in modules)


def _build(stamp):
    @kernel
    def slot(ptrs, k, t, s, e, ulike, updates, tensor):
        stamp  # noqa: B018 - a closure cell: part of the cache key
        # slot 0 rounds with the low 16 bits of each element's hash, the
        # others with the high 16 (so AMSGrad's v and vhat round alike)
        return _bf16_slot(nb._view(ptrs, 2 + k, t, s, e, ulike), _base(updates, tensor, s),
                          16 if k else 0)
    return slot


_STAMP = _stamp(nb, _numba_util, numba_bits)
_slot = _build(_STAMP)


# The drivers of one rule, rendered around numba_backend's generated element
# loop ``loop_<rule>`` (see numba_backend.LOOP_TEMPLATE), which Numba compiles
# again for these argument types.
#
# * ``step``: float32 parameters and gradients, bfloat16 slots; ``updates``
#   is None (round to nearest) or the update count (stochastic rounding).
# * ``step_narrow``: 2-byte parameters, gradients and slots (bfloat16 if
#   ``half`` is None, else IEEE half), each seen as a float32 array that
#   rounds to nearest on store.  Each call is unswitched by hand on the
#   coupled weight decay: with a literal 0.0 the loop's ``if l2 != 0`` folds
#   away once inlined; left to LLVM, the bfloat16 loops are not unswitched and
#   then not vectorised (measured: 7-10x slower).

DRIVER_TEMPLATE = """\
def _make(__key):
    def _run_chunk(ptrs, t, s, e, like, ulike, hp, gs, kp, l2, {us_param}updates, tensor):
        __key  # noqa: B018 - a closure cell: part of the cache key
        loop_{name}(nb._view(ptrs, 0, t, s, e, like), nb._view(ptrs, 1, t, s, e, like),
                    {bf16_slots}hp, gs, kp, l2{us_arg})

    def _run_chunk_ema(ptrs, t, s, e, like, ulike, hp, gs, kp, l2, {us_param}updates, tensor,
                       eptrs, em):
        __key  # noqa: B018
        loop_ema_{name}(nb._view(ptrs, 0, t, s, e, like), nb._view(ptrs, 1, t, s, e, like),
                        {bf16_slots}hp, gs, kp, l2{us_arg}, nb._view(eptrs, 0, t, s, e, like),
                        em)

    def _step(ptrs, ids, offset, none_id, table, pt, hp, like, ulike, stochastic, updates,
              tensor_ids):
        __key  # noqa: B018
        if offset >= 0:  # resolve the gradients' data pointers (see numba_backend)
            nb._resolve_pointers(ids, offset, none_id, ptrs[1])
        for c in prange(table.shape[1]):
            t = table[0, c]
            if ptrs[1, t] != 0:
                s = table[1, c]
                e = table[2, c]
                if stochastic:
                    run_chunk_{name}(ptrs, t, s, e, like, ulike, hp, pt[0, t], pt[1, t],
                                     pt[2, t], {us_pt}updates, tensor_ids[t])
                else:
                    run_chunk_{name}(ptrs, t, s, e, like, ulike, hp, pt[0, t], pt[1, t],
                                     pt[2, t], {us_pt}None, tensor_ids[t])

    def _step_ema(ptrs, ids, offset, none_id, table, pt, hp, like, ulike, stochastic, updates,
                  tensor_ids, eptrs, em):
        __key  # noqa: B018
        if offset >= 0:
            nb._resolve_pointers(ids, offset, none_id, ptrs[1])
        for c in prange(table.shape[1]):
            t = table[0, c]
            s = table[1, c]
            e = table[2, c]
            if ptrs[1, t] != 0:  # the step and the average (numba_backend's _loop_ema)
                if stochastic:
                    run_chunk_ema_{name}(ptrs, t, s, e, like, ulike, hp, pt[0, t], pt[1, t],
                                         pt[2, t], {us_pt}updates, tensor_ids[t], eptrs, em)
                else:
                    run_chunk_ema_{name}(ptrs, t, s, e, like, ulike, hp, pt[0, t], pt[1, t],
                                         pt[2, t], {us_pt}None, tensor_ids[t], eptrs, em)
            else:  # no gradient: the average still follows the parameters
                nb._ema_chunk(nb._view(eptrs, 0, t, s, e, like),
                              nb._view(ptrs, 0, t, s, e, like), em)

    def _run_narrow(ptrs, t, s, e, ulike, hp, gs, kp, l2, half):
        __key  # noqa: B018
        p = _narrow(nb._view(ptrs, 0, t, s, e, ulike), half)
        g = _narrow(nb._view(ptrs, 1, t, s, e, ulike), half)
{narrow_slots}
        if l2 == 0.0:
            loop_{name}(p, g, {slot_names}hp, gs, kp, 0.0{us_one})
        else:
            loop_{name}(p, g, {slot_names}hp, gs, kp, l2{us_one})

    def _step_narrow(ptrs, table, pt, hp, ulike, half):
        __key  # noqa: B018
        for c in prange(table.shape[1]):
            t = table[0, c]
            if ptrs[1, t] != 0:
                run_narrow_{name}(ptrs, t, table[1, c], table[2, c], ulike, hp, pt[0, t],
                                  pt[1, t], pt[2, t], half)

    return _run_chunk, _step, _run_narrow, _step_narrow, _run_chunk_ema, _step_ema
"""

# A two_phase rule's first pass over float32 parameters and bfloat16 slots:
# numba_backend's reduce loop ``rloop_<rule>`` compiled for these slot types
# (read only: nothing is stored, so the rounding never matters), each chunk
# summed as numba_backend sums it.
REDUCE_TEMPLATE = """\
def _make(__key):
    def _reduce_chunk(ptrs, t, s, e, like, ulike, hp, gs, kp, l2, partial, c):
        __key  # noqa: B018 - a closure cell: part of the cache key
        rloop_{name}(nb._view(ptrs, 0, t, s, e, like), nb._view(ptrs, 1, t, s, e, like),
                     {bf16_slots}hp, gs, kp, l2, partial, c)

    def _reduce(ptrs, table, pt, hp, like, ulike, partial, out):
        __key  # noqa: B018
        for c in prange(table.shape[1]):
            t = table[0, c]
            if ptrs[1, t] != 0:
                reduce_chunk_{name}(ptrs, t, table[1, c], table[2, c], like, ulike, hp,
                                    pt[0, t], pt[1, t], pt[2, t], partial, c)
            else:
                for k in range(partial.shape[0]):
                    partial[k, c] = 0.0
        out[:, :] = 0.0
        for c in range(table.shape[1]):  # in chunk order: a fixed order of summation
            for k in range(partial.shape[0]):
                out[k, table[0, c]] += partial[k, c]

    return _reduce_chunk, _reduce
"""


class Compiled:
    """A rule's bfloat16-state and 2-byte-parameter drivers (built on first use)."""

    def __init__(self, rule):
        k = len(rule.slots)
        loop = nb.compiled(rule)
        self.source = DRIVER_TEMPLATE.format(
            name=rule.name,
            bf16_slots="".join(f"_slot(ptrs, {j}, t, s, e, ulike, updates, tensor), "
                               for j in range(k)),
            narrow_slots="\n".join(f"        s{j} = _narrow(nb._view(ptrs, {2 + j}, t, s, e, "
                                   "ulike), half)" for j in range(k)),
            slot_names="".join(f"s{j}, " for j in range(k)),
            # two_phase: the update scale (pt row 3); 2-byte parameters run
            # through MultiTensorStep, which refuses such rules: 1 there
            us_param="us, " if rule.two_phase else "",
            us_arg=", us" if rule.two_phase else "",
            us_pt="pt[3, t], " if rule.two_phase else "",
            us_one=", 1.0" if rule.two_phase else "")
        names = [f"{n}_{rule.name}" for n in ("run_chunk", "step", "run_narrow", "step_narrow",
                                              "run_chunk_ema", "step_ema")]
        key = nb.source_key(self.source, loop.source, repr(_STAMP))
        ns, fns = nb.generate(self.source, key, __file__,
                              {**globals(), "loop_" + rule.name: loop.loop,
                               "loop_ema_" + rule.name: loop.loop_ema}, names)
        ns[names[0]] = kernel(fns[names[0]])
        ns[names[2]] = kernel(fns[names[2]])
        ns[names[4]] = kernel(fns[names[4]])
        self.step_parallel, self.step_serial = driver(fns[names[1]])
        self.narrow_parallel, self.narrow_serial = driver(fns[names[3]])
        self.ema_parallel, self.ema_serial = driver(fns[names[5]])  # compiled on first use
        if rule.two_phase:
            source = REDUCE_TEMPLATE.format(
                name=rule.name,
                bf16_slots="".join(f"_slot(ptrs, {j}, t, s, e, ulike, None, 0), "
                                   for j in range(k)))
            rnames = [f"reduce_chunk_{rule.name}", f"reduce_{rule.name}"]
            key = nb.source_key(source, loop.reduce_source, repr(_STAMP))
            ns, fns = nb.generate(source, key, __file__,
                                  {**globals(), "rloop_" + rule.name: loop.rloop}, rnames)
            ns[rnames[0]] = kernel(fns[rnames[0]])
            self.reduce_parallel, self.reduce_serial = driver(fns[rnames[1]])


#: ``compiled(rule)``: the rule's :class:`Compiled`.
compiled = nb.per_rule(Compiled)


@kernel
def _encode_nearest(x, out):
    for i in range(x.shape[0]):
        out[i] = bf16_nearest(x[i])


@kernel
def _encode_stochastic(x, bits, out):
    for i in range(x.shape[0]):
        out[i] = bf16_stochastic(x[i], bits[i])


@kernel
def _decode(u, out):
    for i in range(u.shape[0]):
        out[i] = bf16_decode(u[i])


class Plan(nb.Plan):
    """Prepared multi-tensor step for float32 tensors with bfloat16 slots.

    Parameters
    ----------
    rule : fastopt.rule.Rule
        Any rule with at least one slot.
    params : list of 1-D float32 arrays
    slots : list (one per slot of the rule) of lists of 1-D uint16 arrays
        bfloat16 bit patterns, one array per parameter, updated in place.
    rounding : {"nearest", "stochastic"}
    tensor_ids : sequence of int, optional
        Each tensor's index in the optimizer's parameter list (default
        0, 1, ...): an input of the stochastic-rounding hash, so that
        tensors of different groups draw different numbers.

    Before each step with stochastic rounding, set :attr:`updates` to the
    optimizer's update count (the optimizer classes do).  :meth:`refusal`
    says which rules it does not take.
    """

    refusal = staticmethod(refusal)
    ROUNDINGS = ROUNDINGS

    def __init__(self, rule, params, slots, rounding="nearest", tensor_ids=None):
        _contract.check_reduced_plan(rule, params, rounding, refusal, ROUNDINGS, "bfloat16")
        for name, arrays in zip(rule.slots, slots):
            for a in arrays:
                if a.dtype != np.uint16:
                    raise TypeError(f"slot {name!r} must hold bfloat16 bit patterns in a "
                                    f"uint16 array, got {a.dtype}")
        super().__init__(rule, params, slots)
        self.rounding = rounding
        self.updates = 0
        self._stochastic = rounding == "stochastic"
        self._ulike = np.empty(0, np.uint16)
        ids = range(len(self.params)) if tensor_ids is None else tensor_ids
        self._tensor_ids = np.array(list(ids), dtype=np.int64)

    def step(self, grads, pt, scalars, clipvalue=math.inf):
        self._hp[:] = self.rule.pack(scalars, clipvalue)
        c = compiled(self.rule)
        run, ids, offset, none_id = nb.resolved_call(self, grads, c.step_parallel, c.step_serial)
        run(self._ptrs, ids, offset, none_id, self._table, pt, self._hp,
            self._like, self._ulike, self._stochastic, int(self.updates), self._tensor_ids)

    def step_ema(self, grads, pt, scalars, clipvalue, momentum):
        """:meth:`step` and the parameters' moving average in one pass (see
        :meth:`fastopt.backends.numba_backend.Plan.step_ema`)."""
        self._hp[:] = self.rule.pack(scalars, clipvalue)
        c = compiled(self.rule)
        run, ids, offset, none_id = nb.resolved_call(self, grads, c.ema_parallel, c.ema_serial)
        run(self._ptrs, ids, offset, none_id, self._table, pt, self._hp, self._like,
            self._ulike, self._stochastic, int(self.updates), self._tensor_ids, self._eptrs,
            float(momentum))

    def reduce(self, grads, pt, scalars, clipvalue=math.inf):
        """A two_phase rule's first pass over bfloat16 slots (see
        :meth:`fastopt.backends.numba_backend.Plan.reduce`)."""
        self._hp[:] = self.rule.pack(scalars, clipvalue)
        self._set_grads(grads)
        c = compiled(self.rule)
        if self.size >= nb.get_parallel_threshold(self.dtype):
            run = c.reduce_parallel
            nb.sync_threads()
        else:
            run = c.reduce_serial
        nred = len(self.rule.reductions)
        if self._reduced is None:
            self._reduced = np.zeros((nred, self._table.shape[1]))
        out = np.zeros((nred, len(self.params)))
        run(self._ptrs, self._table, pt, self._hp, self._like, self._ulike, self._reduced, out)
        return out
