"""The 8-bit optimizer state's layout and rules, shared by every backend that
keeps it (``state_dtype="int8"``); imports no compiler.

Each slot of a tensor is one 8-bit code per element and one float32 scale per
block of :data:`BLOCK` elements of the flattened tensor:
:func:`fastopt.reference.q8_encode` is the code's specification.  A backend's
8-bit plan (``numba_int8.Plan``, ``cython_backend.Int8Plan``,
``cuda_backend.Int8Plan``) takes the slots as, per slot, one ``(codes,
scales)`` pair per tensor and checks them with :func:`check_plan`.
"""
from __future__ import annotations

import math

import numpy as np

from .. import reference
from ._contract import check_reduced_plan

__all__ = ["BLOCK", "ROUNDINGS", "refusal", "signed_slots", "code_dtype", "n_blocks",
           "check_plan", "PlanTraits"]

#: Elements per block: one float32 scale per block and slot.
BLOCK = reference.Q8_BLOCK
#: The roundings of ``state_rounding`` (the code's own, to nearest).
ROUNDINGS = ("nearest",)


def refusal(rule):
    """Why ``rule`` cannot keep its state in 8 bits, or None if it can (its
    family module says: ``Rule.int8_refusal``)."""
    if not rule.slots:
        return "it has no state"
    if rule.kind != "elementwise":
        return f"it is a {rule.kind} rule; 8-bit state is offered for elementwise rules"
    return rule.int8_refusal


def signed_slots(rule):
    """Per slot of ``rule``: whether its codes are signed (int8) or not (uint8)."""
    return tuple(name not in rule.nonnegative for name in rule.slots)


def code_dtype(signed):
    """The codes' dtype: int8 for a signed slot, uint8 otherwise."""
    return np.dtype(np.int8 if signed else np.uint8)


def n_blocks(size):
    """The number of blocks (scales per slot) of a tensor of ``size`` elements."""
    return -(-int(size) // BLOCK)


def check_plan(rule, params, slots, rounding):
    """Everything an 8-bit plan checks before it changes anything: the rule,
    the rounding, float32 parameters, and per slot and tensor codes of the
    slot's dtype and the tensor's size and float32 scales, one per block.
    ``slots``: per slot of ``rule``, a list of ``(codes, scales)`` per tensor."""
    check_reduced_plan(rule, params, rounding, refusal, ROUNDINGS, "8 bits")
    if len(slots) != len(rule.slots):
        raise ValueError(f"rule {rule.name!r} has {len(rule.slots)} slots, got "
                         f"{len(slots)} lists of (codes, scales)")
    for name, sg, arrays in zip(rule.slots, signed_slots(rule), slots):
        if len(arrays) != len(params):
            raise ValueError(f"slot {name!r}: {len(arrays)} (codes, scales) pairs for "
                             f"{len(params)} parameters")
        for p, (codes, scales) in zip(params, arrays):
            if codes.dtype != code_dtype(sg) or codes.size != p.size:
                raise TypeError(f"slot {name!r}: codes must be {code_dtype(sg)} arrays of "
                                f"the parameter's size, got {codes.dtype} of {codes.size}")
            if scales.dtype != np.float32 or scales.size != n_blocks(p.size):
                raise TypeError(f"slot {name!r}: scales must be float32 arrays of "
                                f"{n_blocks(p.size)} (one per {BLOCK} elements), got "
                                f"{scales.dtype} of {scales.size}")


class PlanTraits:
    """What every backend's 8-bit plan shares; put it first among the plan's
    bases (its :meth:`reduce` overrides the float plans')."""

    refusal = staticmethod(refusal)
    ROUNDINGS = ROUNDINGS
    #: use_ema: the average is a pass of its own after the step
    #: (fastopt.buffers.HostArrays, or the cuda backend's ``lerp``), not fused
    fuses_ema = False

    def reduce(self, grads, pt, scalars, clipvalue=math.inf):
        """Two-phase rules keep no 8-bit state: never called."""
        raise ValueError("8-bit state is offered for elementwise rules only")

    def attach_ema(self, averages):
        """Refused: the moving average is a pass of its own (:attr:`fuses_ema`)."""
        raise ValueError("8-bit state: the moving average is a pass of its own "
                         "(fuses_ema is False)")

    def step_ema(self, grads, pt, scalars, clipvalue, momentum):
        """Refused, as :meth:`attach_ema`."""
        self.attach_ema(None)
