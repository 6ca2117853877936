"""NumPy backend: the float64 reference applied tensor by tensor.

Slow by design and exact by design: each step casts a tensor, its gradient and
its slots to float64, applies :func:`fastopt.reference.apply_rule` and casts
the results back to the tensor's dtype (so state is kept in the parameter
dtype, as in every backend).  It is the yardstick the fused backends are
tested against and the fallback when no compiled backend is available.
"""
from __future__ import annotations

import math

import numpy as np

from .. import reference
from ..rule import RULES
from . import _contract

NAME = "numpy"

#: What a two_phase rule's reductions square and sum (fastopt.two_phase)
_QUANTITY = {"param_sumsq": lambda w, w_in: w_in, "update_sumsq": lambda w, w_in: w - w_in}


class Plan(_contract.Plan):
    """Loops over the group's tensors in Python."""

    # Like the compiled backends, never a floating-point exception: NaN and inf
    # propagate whatever np.seterr says (an exception after the first tensors
    # would leave a step half done).

    def step(self, grads, pt, scalars, clipvalue=math.inf):
        kw = dict(zip(self.rule.scalars, scalars))
        with np.errstate(all="ignore"):
            for t, (p, g) in enumerate(zip(self.params, grads)):
                if g is None:
                    continue
                slots = [s[t] for s in self.slots]
                if self.rule.two_phase:  # the update scale decided for the whole tensor
                    kw["update_scale"] = pt[3, t]
                new = reference.apply_rule(self.rule.name, p, g.reshape(-1), slots, kw,
                                           keep=pt[1, t], gscale=pt[0, t],
                                           clipvalue=clipvalue, l2=pt[2, t])
                for dst, src in zip([p, *slots], new):
                    dst[...] = src

    def reduce(self, grads, pt, scalars, clipvalue=math.inf):
        """A two_phase rule's first pass: the reference with an update scale
        of 1, whose displacement is the element function's; nothing stored."""
        kw = {**dict(zip(self.rule.scalars, scalars)), "update_scale": 1.0}
        out = np.zeros((len(self.rule.reductions), len(self.params)))
        with np.errstate(all="ignore"):
            for t, (p, g) in enumerate(zip(self.params, grads)):
                if g is None:
                    continue
                slots = [s[t] for s in self.slots]
                w = reference.apply_rule(self.rule.name, p, g.reshape(-1), slots, kw,
                                         keep=pt[1, t], gscale=pt[0, t],
                                         clipvalue=clipvalue, l2=pt[2, t])[0]
                w_in = pt[1, t] * p.astype(np.float64)
                for k, name in enumerate(self.rule.reductions):
                    out[k, t] = np.sum(np.square(_QUANTITY[name](w, w_in)))
        return out

    def sumsq(self, grads):
        with np.errstate(all="ignore"):
            return np.array([0.0 if g is None else
                             float(np.sum(np.square(g, dtype=np.float64))) for g in grads])


globals().update(_contract.make_kernels(Plan, __name__))
__all__ = ["Plan", *sorted(RULES)]
