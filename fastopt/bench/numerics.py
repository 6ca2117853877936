"""The numerics check of ``fastopt bench``: one step against the float64 reference.

For a benchmark row (optimizer, backend, dtype, tensor shapes),
:func:`step_error` builds the row's optimizer on fresh awkward inputs
(:func:`awkward_values`: exact zeros, values times 1e3 and times 1e-20
among standard normal ones), takes two steps so that every slot holds
something other than its initial value and the bias corrections are not
trivial, then copies the parameters and the state, in float64, into a twin
optimizer on the ``numpy`` backend -- the float64 reference of
:mod:`fastopt.reference` -- and takes one more step on both with the same
gradients.  The result is the largest relative difference over the
parameters and every slot::

    max |x - ref| / max(|ref|, |old|, s)

with ``old`` the value before the step and ``s`` the median of
``max(|ref|, |old|)`` over the array.  The floor ``s`` keeps an element
whose update cancels to almost nothing (a zero parameter whose momentum
nearly cancels the gradient) from counting its rounding as a large
relative error; a wrong formula still shows on every typical element.

Rprop decides per element on the sign of ``g * prev``.  Where that product
underflows to zero in the row's dtype but not in float64 (two values of the
1e-20 kind times a small one: float32 products below 1.4e-45), the kernel
decides as torch does in that dtype (no sign: the step size is kept) and the
float64 reference decides otherwise; such elements (one in 1.24e8 in the
benchmark's draw) are left out of the comparison (:data:`UNDERFLOW_DECISIONS`).

With ``state_dtype="bfloat16"`` or ``"int8"`` in the options, the slots are
decoded from their bfloat16 bit patterns or 8-bit codes for the reference, and the result covers the
parameters only: the kernel updates each parameter from the new slot values
before they are rounded to bfloat16, so a wrong formula shows there, while
the stored slots differ from float64 by the rounding itself (up to one
bfloat16 spacing, 2**-8 relative; ``tests/test_state_dtype.py`` checks that
rounding against :func:`fastopt.reference.bf16_round`).
"""
from __future__ import annotations

import numpy as np

from .. import reference
from .cases import make_optimizer

__all__ = ["awkward_values", "step_error", "TOLERANCE"]

#: Largest error a correct kernel is expected to show, per dtype: a few
#: hundred units of roundoff (a step is a chain of ~10 rounded operations;
#: measured errors are 1e-7 and below in float32, 1e-16 in float64).
TOLERANCE = {"float32": 2e-5, "float64": 4e-14}

#: rule -> the slot multiplied by the gradient for a per-element decision on
#: the product's sign (see the module docstring)
UNDERFLOW_DECISIONS = {"rprop_torch": "prev"}


def awkward_values(rng, shape, dtype):
    """Standard normal values with about 10% exact zeros, 1% times 1e3 and 1%
    times 1e-20 (whose squares are subnormal or zero in float32)."""
    x = rng.standard_normal(shape)
    u = rng.random(shape)
    x[u < 0.1] = 0.0
    x[(u >= 0.1) & (u < 0.11)] *= 1e3
    x[(u >= 0.11) & (u < 0.12)] *= 1e-20
    return x.astype(dtype)


def _undecidable(grads, old_slots, slot, dtype):
    """Per tensor, the elements where ``g * slot`` is zero in ``dtype`` but
    not in float64 (None when there are none)."""
    out = []
    for i, g in enumerate(grads):
        other = old_slots[f"{slot}/{i}"]
        with np.errstate(under="ignore"):
            low = g.astype(dtype) * other.astype(dtype)
        mask = (low == 0) & (g.astype(np.float64) * other != 0)
        out.append(mask if mask.any() else None)
    return out


def _relative_error(x, ref, old, skip=None):
    x = np.asarray(x, np.float64)
    scale = np.maximum(np.abs(ref), np.abs(old))
    floor = max(float(np.median(scale)) if scale.size else 0.0, np.finfo(np.float64).tiny)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(x - ref) / np.maximum(scale, floor)
    same = (x == ref) | (np.isnan(x) & np.isnan(ref))   # infinities and NaNs that agree
    err[same] = 0.0
    err[np.isnan(err)] = np.inf
    if skip is not None:
        err[skip.reshape(err.shape)] = 0.0
    return float(err.max()) if err.size else 0.0


def step_error(name, shapes, dtype, backend, convention=None, options=None, seed=0):
    """Max relative error of one step of benchmark ``name`` on ``backend``
    against the float64 reference (see the module docstring)."""
    rng = np.random.default_rng(seed)
    params = [awkward_values(rng, s, dtype) for s in shapes]
    opt = make_optimizer(name, params, backend, convention, **(options or {}))
    for _ in range(2):
        opt.step([awkward_values(rng, s, dtype) for s in shapes])
    state = opt.state_dict()
    old_params = [p.astype(np.float64) for p in params]
    low = (options or {}).get("state_dtype") is not None
    old_slots = {k: np.asarray(v, dtype=np.float64)
                 for k, v in reference.decoded_slots(state["slots"]).items()}
    ref_params = [p.copy() for p in old_params]
    ref = make_optimizer(name, ref_params, "numpy", convention)
    ref_config = {k: v for k, v in state["config"].items()
                  if k not in ("state_dtype", "state_rounding")}
    ref.load_state_dict({**state, "config": ref_config,
                         "slots": {k: v.copy() for k, v in old_slots.items()}})
    grads = [awkward_values(rng, s, dtype) for s in shapes]
    opt.step(grads)
    ref.step([g.astype(np.float64) for g in grads])
    decision = UNDERFLOW_DECISIONS.get(opt.rule)
    skip = (_undecidable(grads, old_slots, decision, dtype) if decision
            else [None] * len(grads))
    errors = [_relative_error(p, r, o, m)
              for p, r, o, m in zip(params, ref_params, old_params, skip)]
    if low:
        return max(errors)
    new_slots, ref_slots = opt.state_dict()["slots"], ref.state_dict()["slots"]
    errors += [_relative_error(new_slots[k], ref_slots[k], old_slots[k],
                               skip[int(k.rsplit("/", 1)[1])]) for k in old_slots]
    return max(errors)
