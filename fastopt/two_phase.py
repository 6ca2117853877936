"""Two-phase steps: per-tensor reductions, a decision per tensor, then the apply.

Some steps need a number per tensor before any element can be updated:
clipping by norm (the norm of each gradient, or of all of them), Lamb's trust
ratio (the norms of the weights and of the update).  A *two-phase* step is

1. **reduce** -- one fused, deterministic pass computes per-tensor sums over
   the data (:data:`REDUCTIONS`; bit-identical at any thread count: fixed
   chunks, a fixed order of summation), then the optimizer's
   ``reduce_tensor_sums`` hook (:mod:`fastopt.protocol`) adds them up over
   every shard of the tensors, so that the decision is the same on every
   rank;
2. **decide** -- on the host, in float64, a function of those sums gives one
   factor per tensor;
3. **apply** -- the elementwise rule runs with the factors in its per-tensor
   rows: the gradient scale (clipping), or the *update scale* (row 3 of the
   factors) that multiplies the element function's displacement
   ``w - w_before`` before the store (a ``two_phase`` rule: Lamb).

:class:`TwoPhase` describes steps 1 and 2 of clipping; :func:`decide` runs
them for an optimizer's tensor groups.  ``clipnorm`` and ``global_clipnorm``
are the two instances the optimizers use (:func:`clipping`).

A ``two_phase`` *rule* (:class:`fastopt.rule.Rule` with ``kind="two_phase"``)
declares its reductions among :data:`REDUCTIONS` and a ``decide`` function;
every backend's plan offers ``plan.reduce(grads, pt, scalars, clipvalue)``,
one fused pass that runs the element function over every element *without
storing anything* and returns the ``(len(reductions), n_tensors)`` float64
sums (in float64: element ``i`` of a chunk in lane ``i % 64``, the lanes
added in a fixed tree, the chunks in chunk order: bit-identical at any
thread count), and ``plan.step`` applies
``w <- w_before + pt[3] * (w - w_before)`` with the slots stored: the second
pass recomputes the element function from the same inputs, so the applied
update is exactly the one reduced.  :func:`update_scales` runs the first
pass and the decision for an optimizer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import _codegen, reference

__all__ = ["REDUCTIONS", "ELEMENT_REDUCTIONS", "TwoPhase", "clipping", "decide",
           "update_scales"]

#: The reductions the fused first pass offers (name -> what the plan method
#: returns: one float64 per tensor).
REDUCTIONS = {"grad_sumsq": "sum of the squared gradient elements (Plan.sumsq)",
              "param_sumsq": "sum of the squared parameter elements after decoupled "
                             "weight decay, before the rule (Plan.reduce)",
              "update_sumsq": "sum of the squared displacements w - w_before of the "
                              "element function (Plan.reduce)"}

#: The reductions a two_phase rule's pass computes from its element function
#: (:data:`fastopt._codegen.ELEMENT_REDUCTIONS`, which every backend renders).
ELEMENT_REDUCTIONS = _codegen.ELEMENT_REDUCTIONS

#: torch.nn.utils.clip_grad_norm_'s guard against division by zero
TORCH_CLIP_EPS = 1e-6


@dataclass(frozen=True)
class TwoPhase:
    """The first two phases of a two-phase step.

    Parameters
    ----------
    reductions : tuple of str
        Names from :data:`REDUCTIONS`, computed in one pass per tensor group.
    decide : callable
        ``decide(sums, inv)`` -> one gradient scale per tensor group (a float
        for all its tensors, or an array with one entry per tensor).  ``sums``
        maps each reduction name to a list (one entry per tensor group) of
        float64 arrays, one entry per tensor, already summed over every shard;
        ``inv`` is the loss-scale divisor, part of every scale.
    """

    reductions: tuple
    decide: Callable

    def __post_init__(self):
        unknown = set(self.reductions) - set(REDUCTIONS)
        if unknown:
            raise ValueError(f"unknown reductions {sorted(unknown)}; the fused pass offers "
                             f"{sorted(REDUCTIONS)}")


def decide(two_phase, tensor_groups, grads, inv, reduce_tensor_sums):
    """Run the reductions over ``tensor_groups`` (each with a ``plan`` and its
    ``indices`` into ``grads``), sum them over shards with
    ``reduce_tensor_sums``, and return ``two_phase.decide``'s factors."""
    sums = {}
    for name in two_phase.reductions:  # only "grad_sumsq" today
        if len(tensor_groups) == 1:
            partial = [tensor_groups[0].plan.sumsq(grads)]
        else:
            partial = [g.plan.sumsq([grads[i] for i in g.indices]) for g in tensor_groups]
        sums[name] = reduce_tensor_sums(partial)
    with np.errstate(all="ignore"):  # inf and NaN norms decide, never raise
        return two_phase.decide(sums, inv)


def update_scales(work, reduce_tensor_sums):
    """The update scales of a two_phase rule's tensor groups.

    ``work`` is a list of ``(rule, plan, grads, pt, scalars, clipvalue)``,
    one per tensor group, with the gradient scale, decay and coupled decay
    already in ``pt``'s first three rows.  Runs each plan's first pass, sums
    the results over shards with ``reduce_tensor_sums`` (one call for every
    group together: one all-reduce under ``ShardedOptimizer``), and returns
    one float64 array per group, one update scale per tensor, from the
    rule's ``decide``."""
    partial = [plan.reduce(grads, pt, scalars, clipvalue)
               for _, plan, grads, pt, scalars, clipvalue in work]
    total = reduce_tensor_sums(partial)
    return [rule.update_scales(sums, scalars)
            for (rule, _, _, _, scalars, _), sums in zip(work, total)]


def clipping(clipnorm=None, global_clipnorm=None, torch_convention=False):
    """The :class:`TwoPhase` of gradient clipping by norm, or None without it.

    ``clipnorm``: each tensor scaled by ``clipnorm / max(||g||, clipnorm)``
    (Keras).  ``global_clipnorm``: every tensor by one factor from the norm of
    all of them -- Keras's :func:`fastopt.reference.global_clip_scale`, or
    under the torch convention ``torch.nn.utils.clip_grad_norm_``'s
    ``min(c / (norm + 1e-6), 1)``.
    """
    if global_clipnorm is not None:
        def by_global_norm(sums, inv):
            sumsq = sums["grad_sumsq"]
            norm = math.sqrt(sum(float(np.sum(s)) for s in sumsq)) * inv
            if torch_convention:  # min() keeps a NaN first argument
                scale = min(global_clipnorm / (norm + TORCH_CLIP_EPS), 1.0)
            else:
                scale = reference.global_clip_scale(norm, global_clipnorm)
            return [scale * inv] * len(sumsq)
        return TwoPhase(("grad_sumsq",), by_global_norm)
    if clipnorm is not None:
        def by_norm(sums, inv):
            return [clipnorm / np.maximum(np.sqrt(s) * inv, clipnorm) * inv
                    for s in sums["grad_sumsq"]]
        return TwoPhase(("grad_sumsq",), by_norm)
    return None
