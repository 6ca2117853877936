"""The kernel contract every backend implements.

Two levels, the same on every backend:

1. **Public single-tensor kernels**, one per rule of :data:`fastopt.rule.RULES`,
   for users who keep their own state::

       adam(param, grad, m, v, alpha, beta_1, beta_2, epsilon,
            *, keep=1.0, gscale=1.0, l2=0.0, clipvalue=inf)

   Arrays first (parameter, gradient, then the slots in Keras order), then the
   rule's scalars; contiguous 1-D float32 or float64 arrays of one dtype and
   one length; updated in place; returns ``None``.  Each kernel does, per
   element, ``g = clip(gscale*g, -clipvalue, clipvalue)``, ``g = g + l2*w``
   (coupled weight decay), ``w = keep*w`` (decoupled), then the rule (see
   :mod:`fastopt.reference` for every formula).

2. **Plans**, used by the optimizer classes: a :class:`Plan` is built once for
   a group of same-dtype tensors and their slots, and ``plan.step(grads, pt,
   scalars, clipvalue)`` updates the whole group in one call, where ``pt`` is
   a ``(3, n_tensors)`` float64 array of per-tensor gradient scales,
   decoupled weight-decay factors ``keep`` and coupled weight decays ``l2``,
   and a ``None`` gradient skips its tensor.
   ``plan.sumsq(grads)`` returns the per-tensor sums of squares (float64)
   that clipping by norm needs.  For a ``two_phase`` rule ``pt`` has a
   fourth row, the update scale, and ``plan.reduce(grads, pt, scalars,
   clipvalue)`` is the first pass (:mod:`fastopt.two_phase`); its public
   kernel runs both passes and decides from the one tensor it is given.
"""
from __future__ import annotations

import inspect
import math

import numpy as np

from .. import reference
from ..rule import RULES

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Plan:
    """Base class: holds the group's tensors (1-D views) and slots."""

    def __init__(self, rule, params, slots):
        self.rule = rule
        self.params = list(params)
        self.slots = [list(s) for s in slots]
        self.dtype = self.params[0].dtype
        self.size = int(sum(p.size for p in self.params))

    def step(self, grads, pt, scalars, clipvalue=math.inf):  # pragma: no cover
        raise NotImplementedError

    def sumsq(self, grads):  # pragma: no cover
        raise NotImplementedError


def is_device_array(obj):
    """Whether ``obj`` is a CUDA device array: a Numba device array (or the
    CUDA simulator's stand-in) or any object exporting
    ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors).  Imports
    nothing, so host-only code can ask cheaply."""
    if isinstance(obj, np.ndarray):
        return False
    if getattr(obj, "__cuda_ndarray__", False):
        return True
    try:
        return hasattr(obj, "__cuda_array_interface__")
    except Exception as exc:  # PyTorch refuses it on tensors that require grad
        raise TypeError(f"{type(obj).__name__} refused __cuda_array_interface__ ({exc}); "
                        "pass a detached view that shares its memory "
                        "(tensor.detach())") from None


def _check_kernel_arrays(name, rule, arrays):
    labels = ("param", "grad") + rule.slots
    param = arrays[0]
    for label, a in zip(labels, arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: {label} must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: {label} has dtype {a.dtype}; kernels take float32 or float64")
        if a.dtype != param.dtype:
            raise TypeError(f"{name}: {label} has dtype {a.dtype} but param has {param.dtype}")
        if a.ndim != 1 or not a.flags.c_contiguous:
            raise ValueError(f"{name}: {label} must be a contiguous 1-D array, "
                             f"got shape {a.shape} (contiguous={a.flags.c_contiguous})")
        if a.shape != param.shape:
            raise ValueError(f"{name}: {label} has shape {a.shape} but param has {param.shape}")
        if label != "grad" and not a.flags.writeable:
            raise ValueError(f"{name}: {label} is read-only; kernels update it in place")


def _make_kernel(plan_cls, rule, module, check):
    nslots = len(rule.slots)
    nargs = 2 + nslots + len(rule.scalars)
    nrows = 4 if rule.two_phase else 3  # a two_phase rule's update scale

    def kernel(*args, keep=1.0, gscale=1.0, l2=0.0, clipvalue=math.inf):
        if len(args) != nargs:
            raise TypeError(f"{rule.name}() takes {nargs} positional arguments "
                            f"({', '.join(params)}), got {len(args)}")
        arrays = args[:2 + nslots]
        check(rule.name, rule, arrays)
        scalars = tuple(float(x) for x in args[2 + nslots:])
        plan = plan_cls(rule, [arrays[0]], [[s] for s in arrays[2:]])
        pt = np.array([[float(gscale)], [float(keep)], [float(l2)], [1.0]][:nrows])
        if rule.two_phase:  # reduce, decide from this whole tensor, apply
            sums = plan.reduce([arrays[1]], pt, scalars, float(clipvalue))
            pt[3] = rule.update_scales(sums, scalars)
        plan.step([arrays[1]], pt, scalars, float(clipvalue))

    # a slot named like a scalar (SGD's "momentum" buffer) gets a _buf suffix
    slot_args = tuple(s + "_buf" if s in rule.scalars else s for s in rule.slots)
    params = ("param", "grad") + slot_args + rule.scalars
    sig = [inspect.Parameter(p, inspect.Parameter.POSITIONAL_ONLY) for p in params]
    sig += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=d)
            for k, d in (("keep", 1.0), ("gscale", 1.0), ("l2", 0.0),
                         ("clipvalue", math.inf))]
    kernel.__signature__ = inspect.Signature(sig)
    kernel.__name__ = kernel.__qualname__ = rule.name
    kernel.__module__ = module
    formula = rule.formula
    kernel.__doc__ = (
        f"Fused in-place ``{rule.name}`` step on one tensor.\n\n"
        f"{formula}\n\n"
        "Before the rule: ``g = clip(gscale*g, -clipvalue, clipvalue)``, "
        "``g = g + l2*w`` (coupled weight decay) and ``w = keep*w`` (decoupled "
        "weight decay, ``keep = 1 - weight_decay*lr``).\n"
        "All arrays: contiguous 1-D, one float dtype, one length; updated in place."
    )
    return kernel


def make_kernels(plan_cls, module, check=_check_kernel_arrays):
    """The public kernels of a backend, built from its :class:`Plan`.

    ``check(name, rule, arrays)`` validates a call's arrays before anything is
    touched (default: contiguous 1-D NumPy arrays of one float dtype and
    length)."""
    return {name: _make_kernel(plan_cls, rule, module, check)
            for name, rule in RULES.items()}


def check_reduced_plan(rule, params, rounding, refusal, roundings, what):
    """The first checks of a reduced-precision-state plan (bfloat16, 8 bits):
    the rule takes such state, the rounding is one of ``roundings``, the
    parameters are float32 (``what``: "bfloat16", "8 bits")."""
    why = refusal(rule)
    if why:
        raise ValueError(f"rule {rule.name!r} cannot keep its state in {what}: {why}")
    if rounding not in roundings:
        raise ValueError(f"rounding must be one of {roundings}, got {rounding!r}")
    for p in params:
        if p.dtype != np.float32:
            raise TypeError(f"{what} state needs float32 parameters, got {p.dtype}")
