"""The optimizer base class: validation, state, clipping, dispatch.

An optimizer object owns the state (slots) of its parameters and, each
``step``, computes the per-step scalars on the host in float64 (scheduled
learning rate, bias corrections, clip factors, weight-decay factors) and hands
every same-dtype group of tensors to one fused kernel call of its backend.
Kernels only do arithmetic; everything that can go wrong is checked here,
before any array is touched.

Order of operations in one :meth:`Optimizer.step` (Keras 3's, under both
conventions)::

    g <- g / loss_scale_factor
    with gradient accumulation: acc <- acc + g and stop, except on every
        gradient_accumulation_steps-th call, where g <- (g + acc) / steps
    g <- clip(g)                         (clipnorm, global_clipnorm, clipvalue)
    g <- -g                              (maximize)
    g <- g + wd * w                      (torch convention, except AdamW)
    w <- (1 - wd * lr) * w               (keras convention, and torch AdamW)
    the optimizer's update
    ema <- m * ema + (1 - m) * w         (use_ema, every call; m = 0 until the
                                          first update has been counted)
    iterations <- iterations + 1
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from .. import reference, schedules
from ..rule import RULES
from .._validation import boolean, real, unknown_keywords
from ..backends import (BACKEND_NAMES, STATE_DTYPES, get_backend, resolve_backend,
                        resolve_state_backend)
from ..backends._contract import FLOAT_DTYPES, is_device_array

__all__ = ["Optimizer"]

CONVENTIONS = ("keras", "torch")
_COMMON = ("learning_rate", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm",
           "use_ema", "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
           "gradient_accumulation_steps", "exclude_from_weight_decay", "maximize")
#: torch.nn.utils.clip_grad_norm_'s guard against division by zero
_TORCH_CLIP_EPS = 1e-6


class _Group:
    """Tensors of one parameter group and one dtype: slots in flat buffers,
    per-tensor factors, and the backend's plan."""

    def __init__(self, indices, arrays, rule, slot_init, backend, decays, device=False,
                 state=None):
        self.indices = indices
        self.dtype = arrays[0].dtype
        sizes = [a.size for a in arrays]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        # state = (state_dtype, rounding): slots hold bfloat16 bit patterns (host only)
        low = state is not None and bool(rule.slots)
        if low:
            self.backend, plan = resolve_state_backend(backend, state[0])
        else:
            self.backend = resolve_backend(backend, self.dtype, offsets[-1], device)
        full = self.backend.full if device else np.full
        flat_slots = {name: full(offsets[-1], reference.bf16_round(slot_init.get(name, 0.0))
                                 if low else slot_init.get(name, 0.0),
                                 dtype=np.uint16 if low else self.dtype)
                      for name in rule.slots}
        # per tensor, per slot: a view of the flat buffer in the tensor's shape
        self.slot_views = {name: [buf[offsets[k]:offsets[k + 1]].reshape(a.shape)
                                  for k, a in enumerate(arrays)]
                           for name, buf in flat_slots.items()}
        flat = [a.reshape(-1) for a in arrays]
        slots_1d = [[v.reshape(-1) for v in self.slot_views[name]] for name in rule.slots]
        if low:
            self.plan = plan(rule, flat, slots_1d, rounding=state[1], tensor_ids=indices)
        else:
            self.plan = self.backend.Plan(rule, flat, slots_1d)
        # stochastic rounding draws from the update count, set before each step
        self.counted = low and state[1] == "stochastic"
        # rows: gradient scale, decoupled decay factor, coupled (L2) decay
        self.pt = np.ones((3, len(arrays)))
        self.pt[2] = 0.0
        self.decays = np.asarray(decays, dtype=bool)  # False: excluded from weight decay
        self.all_decay = bool(self.decays.all())
        self.last_pt = (1.0, 1.0, 0.0)

    def set_factors(self, scale, keep, l2):
        """Write the per-tensor rows (only when they change)."""
        key = (scale, keep, l2) if isinstance(scale, float) else None  # arrays: per tensor
        if key is not None and key == self.last_pt:
            return
        self.pt[0] = scale
        self.pt[1] = keep
        self.pt[2] = l2
        if not self.all_decay:
            self.pt[1, ~self.decays] = 1.0
            self.pt[2, ~self.decays] = 0.0
        self.last_pt = key


class _HostArrays:
    """What the optimizer does itself with host parameters (moving averages,
    gradient accumulation, state); ``fastopt.backends.cuda_backend`` has the
    same functions for device parameters."""

    zeros_like = staticmethod(np.zeros_like)

    @staticmethod
    def copy(a):
        return a.copy()

    to_host = copy

    @staticmethod
    def assign(dst, src):
        dst[...] = src

    @staticmethod
    def zero(a):
        a[...] = 0.0

    @staticmethod
    def lerp(y, x, a, b):
        y[...] = a * y + b * x

    @staticmethod
    def add_scaled(y, x, s):
        y += x if s == 1.0 else x * s

    @staticmethod
    def divide(y, k):
        y /= k


class _ParamGroup:
    """One parameter group: global parameter indices, hyperparameters
    (including its learning rate, weight decay and maximize), rule, and its
    per-dtype :class:`_Group` objects."""

    def __init__(self, indices, hyper, overrides, rule):
        self.indices = indices
        self.hyper = hyper
        self.overrides = overrides
        self.rule = rule
        self.groups = []


class Optimizer:
    """Base class of fastopt's optimizers.

    Subclasses declare their Keras and PyTorch defaults in ``_DEFAULTS`` and
    ``_TORCH_DEFAULTS``, their PyTorch-only options in ``_TORCH_ONLY``, check
    their hyperparameters in ``_check``, pick a kernel in ``_rule_name`` and
    compute the kernel's per-step scalars in ``_scalars``.

    Parameters
    ----------
    params : ndarray, list or tuple of ndarray, dict of str to ndarray, or list of dict
        Parameters, updated in place.  float32 and float64 may be mixed; each
        must be C-contiguous and writeable.  A list of dicts gives parameter
        groups as in PyTorch: ``{"params": <array, list or dict>, **overrides}``
        where the overrides are ``learning_rate``, ``weight_decay``,
        ``maximize`` or any of the optimizer's own hyperparameters; each group
        still runs one fused kernel call per dtype.  The arrays may instead
        all be CUDA device arrays (Numba device arrays, or objects with
        ``__cuda_array_interface__`` such as CuPy arrays and detached PyTorch
        CUDA tensors, used without copies): then the ``"cuda"`` backend
        updates them and keeps the state on the device, and the gradients
        must be device arrays too.
    learning_rate : float or callable, optional
        A float >= 0, or a schedule: a callable of the iteration count (for
        example one of :mod:`fastopt.schedules`).  Assignable between steps.
    weight_decay : float, optional
        Keras convention, and AdamW under both: decoupled,
        ``w <- w * (1 - weight_decay * lr)`` before each update.  PyTorch
        convention (except AdamW): L2, ``g <- g + weight_decay * w``.
    exclude_from_weight_decay : list of int or str, optional
        Parameters (by index, or by name when params is a dict) that get no
        weight decay.
    clipnorm, clipvalue, global_clipnorm : float, optional
        Gradient clipping, at most one: per-tensor norm, elementwise value, or
        the norm of all gradients together.  Keras semantics; under
        ``convention="torch"`` ``global_clipnorm`` is
        ``torch.nn.utils.clip_grad_norm_`` (factor ``max_norm/(norm + 1e-6)``
        clamped to 1) and ``clipvalue`` is ``clip_grad_value_``.
    maximize : bool, default False
        Ascend instead of descend (the gradient is negated after clipping).
    use_ema : bool, default False
        Keep an exponential moving average of the parameters (Keras):
        ``ema <- ema_momentum * ema + (1 - ema_momentum) * w`` after each
        update (``ema = w`` after the first).  See
        :meth:`finalize_variable_values`.
    ema_momentum : float in [0, 1], default 0.99
    ema_overwrite_frequency : int >= 1, optional
        With ``use_ema``: copy the average into the parameters every this
        many iterations.
    loss_scale_factor : float > 0, optional
        Gradients arrive multiplied by this (a scaled loss); they are divided
        by it first.
    gradient_accumulation_steps : int >= 2, optional
        Accumulate gradients and update only on every this-many-th call, with
        their mean.  As in Keras, ``iterations`` counts every call and
        learning-rate schedules see that count, while Adam's bias correction,
        PyTorch's step count, the EMA and its overwrite frequency see the
        number of updates, ``iterations // gradient_accumulation_steps``; the
        EMA is updated on every call.
    backend : str
        ``"auto"`` (default), ``"cython"``, ``"numba"``, ``"numpy"`` or
        ``"cuda"`` (device arrays only, which ``"auto"`` then picks); see
        :func:`fastopt.available_backends`.
    state_dtype : None or "bfloat16", default None
        None keeps the optimizer state (momentum, velocity, accumulators) in
        the parameters' dtype.  ``"bfloat16"`` keeps it as bfloat16 bit
        patterns in uint16 arrays, halving its memory and its traffic (Adam:
        20 instead of 28 bytes per parameter per step); the arithmetic stays
        float32.  Needs float32 parameters and the numba backend (``"auto"``
        picks it); not offered for centred RMSprop.  The EMA and gradient
        accumulators stay in the parameters' dtype.  See the README,
        "Reduced-precision optimizer state", for what it does to training.
    state_rounding : "nearest" or "stochastic", default "nearest"
        With ``state_dtype="bfloat16"``: round to nearest (ties to even), or
        stochastically (unbiased; reproducible, the random numbers are a hash
        of the update count, the tensor and the element; see
        :func:`fastopt.reference.bf16_random_bits`).
    convention : str
        ``"keras"`` (default): Keras 3 formulas and defaults; ``"torch"``:
        PyTorch 2.13 ``torch.optim`` formulas and defaults.
    """

    _DEFAULTS: dict = {}
    _TORCH_DEFAULTS: dict = {}
    _TORCH_ONLY: tuple = ()
    #: weight decay is decoupled under the torch convention too (AdamW)
    _TORCH_DECOUPLED = False
    #: host parameters unless __init__ finds CUDA device arrays (class-level
    #: defaults, for subclasses that build themselves)
    _device = False
    _arrays = _HostArrays

    def __init__(self, params, *, hyper, learning_rate=None, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
                 ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, exclude_from_weight_decay=None,
                 maximize=False, backend="auto", convention=None, state_dtype=None,
                 state_rounding=None, **unknown):
        name = type(self).__name__
        if unknown:
            raise unknown_keywords(name, unknown, (*_COMMON, *hyper, "backend", "convention",
                                                   "state_dtype", "state_rounding"))
        convention = "keras" if convention is None else convention
        if convention not in CONVENTIONS:
            raise ValueError(f"{name}: convention must be one of {CONVENTIONS}, got {convention!r}")
        if convention == "keras":
            given = [k for k in self._TORCH_ONLY if hyper.get(k) is not None]
            if given:
                raise ValueError(f"{name}: {', '.join(given)} is a PyTorch option; pass "
                                 "convention='torch' to use it")
        if not isinstance(backend, str) or backend not in ("auto", *BACKEND_NAMES):
            raise ValueError(f"{name}: backend must be one of "
                             f"{('auto', *BACKEND_NAMES)}, got {backend!r}")
        self.convention = convention
        defaults = self._TORCH_DEFAULTS if convention == "torch" else self._DEFAULTS
        top = {k: defaults.get(k) if v is None else v for k, v in hyper.items()}
        top["learning_rate"] = defaults["learning_rate"] if learning_rate is None \
            else learning_rate
        top["weight_decay"] = defaults.get("weight_decay") if weight_decay is None \
            else weight_decay
        top["maximize"] = maximize
        self._defaults = self._check_group(top, "")
        self._hyper_names = tuple(hyper)

        clips = {"clipnorm": clipnorm, "clipvalue": clipvalue,
                 "global_clipnorm": global_clipnorm}
        given = [k for k, v in clips.items() if v is not None]
        if len(given) > 1:
            raise ValueError(f"{name}: at most one of clipnorm, clipvalue and "
                             f"global_clipnorm may be set, got {' and '.join(given)}")
        for k, v in clips.items():
            clips[k] = real(name, k, v, low=0.0, low_open=True, allow_none=True)
        self.clipnorm = clips["clipnorm"]
        self.clipvalue = clips["clipvalue"]
        self.global_clipnorm = clips["global_clipnorm"]
        self.use_ema = boolean(name, "use_ema", use_ema)
        self.ema_momentum = real(name, "ema_momentum", ema_momentum, low=0.0, high=1.0)
        self.ema_overwrite_frequency = _count(name, "ema_overwrite_frequency",
                                              ema_overwrite_frequency, 1)
        self.loss_scale_factor = real(name, "loss_scale_factor", loss_scale_factor, low=0.0,
                                      low_open=True, allow_none=True)
        self.gradient_accumulation_steps = _count(name, "gradient_accumulation_steps",
                                                  gradient_accumulation_steps, 2)
        self._backend_name = backend
        self.state_dtype, self.state_rounding = _state_options(name, state_dtype,
                                                               state_rounding, backend)

        parsed = _parse_params(name, params)
        self._kind, self._structure = parsed.kind, parsed.structure
        self._params, self._names = parsed.arrays, parsed.names
        self._given = parsed.given
        # device params: the cuda backend runs the kernels and the array work
        self._device = parsed.device
        if self._device and backend not in ("auto", "cuda"):
            raise ValueError(f"{name}: the params are CUDA device arrays, which backend "
                             f"{backend!r} cannot update; use backend='cuda' or 'auto'")
        if backend == "cuda" and not self._device:
            raise ValueError(f"{name}: backend 'cuda' updates CUDA device arrays, but the "
                             "params are host NumPy arrays; pass device arrays (a Numba device "
                             "array, a CuPy array or a PyTorch CUDA tensor)")
        if self._device and self.state_dtype is not None:
            raise ValueError(f"{name}: state_dtype={self.state_dtype!r} is offered by the numba "
                             "backend only, for host float32 parameters; the params are CUDA "
                             "device arrays (leave state_dtype=None)")
        self._arrays = get_backend("cuda") if self._device else _HostArrays
        self._labels = [f"[{i}]" if n is None else f"[{n!r}]"
                        for i, n in enumerate(self._names)]
        self._shapes = [a.shape for a in self._params]
        self._dtypes = [a.dtype for a in self._params]
        if self.state_dtype is not None:
            for label, a in zip(self._labels, self._params):
                if a.dtype != np.float32:
                    raise ValueError(f"{name}: state_dtype={self.state_dtype!r} needs float32 "
                                     f"parameters (the kernels compute in float32); "
                                     f"params{label} is {a.dtype}")
        self._excluded = _excluded(name, exclude_from_weight_decay, self._names,
                                   len(self._params))
        self._param_groups = []
        for g, (indices, overrides) in enumerate(parsed.groups):
            bad = [k for k in overrides if k not in ("learning_rate", "weight_decay",
                                                      "maximize", *hyper)]
            if bad:
                raise ValueError(f"{name}: param group {g} has unknown key(s) {bad}; "
                                 f"valid: 'params', 'learning_rate', 'weight_decay', "
                                 f"'maximize', {', '.join(map(repr, hyper))}")
            merged = self._check_group({**self._defaults, **overrides}, f" (param group {g})")
            pg = _ParamGroup(indices, merged, overrides, RULES[self._rule_name(merged)])
            self._param_groups.append(pg)
        if self.state_dtype is not None:
            _check_state_rules(name, self._param_groups, backend, self.state_dtype)
        self.iterations = 0
        self._build()

    # -- hooks for subclasses ---------------------------------------------------
    def _check(self, hyper):  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def _rule_name(self, hyper):  # pragma: no cover
        raise NotImplementedError

    def _scalars(self, hyper, lr, iteration):  # pragma: no cover
        raise NotImplementedError

    def _slot_init(self, hyper):
        """Initial value of each slot that does not start at zero."""
        return {}

    def _check_group(self, h, where):
        owner = type(self).__name__ + where
        out = dict(self._check({k: v for k, v in h.items()
                                if k not in ("learning_rate", "weight_decay", "maximize")},
                               owner))
        out["learning_rate"] = _checked_lr(owner, h["learning_rate"])
        out["weight_decay"] = real(owner, "weight_decay", h["weight_decay"], low=0.0,
                                   allow_none=True)
        out["maximize"] = boolean(owner, "maximize", h["maximize"])
        return out

    # -- construction -------------------------------------------------------------
    def _build(self):
        for pg in self._param_groups:
            by_dtype = {}
            for i in pg.indices:
                by_dtype.setdefault(self._params[i].dtype, []).append(i)
            pg.groups = [
                _Group(idx, [self._params[i] for i in idx], pg.rule, self._slot_init(pg.hyper),
                       self._backend_name, [i not in self._excluded for i in idx],
                       self._device,
                       None if self.state_dtype is None
                       else (self.state_dtype, self.state_rounding))
                for idx in by_dtype.values()
            ]
        self._groups = [g for pg in self._param_groups for g in pg.groups]
        zeros_like = self._arrays.zeros_like
        self._ema = ([zeros_like(p) for p in self._params] if self.use_ema else None)
        self._accumulated = ([zeros_like(p) for p in self._params]
                             if self.gradient_accumulation_steps else None)
        self._torch_l2 = self.convention == "torch" and not self._TORCH_DECOUPLED
        self._counted = [g for g in self._groups if g.counted]
        self._fast = (len(self._groups) == 1 and self._ema is None and not self._counted
                      and self._accumulated is None and self.loss_scale_factor is None)
        self._n = len(self._params)

    # -- public attributes ------------------------------------------------------
    @property
    def learning_rate(self):
        """The learning rate: a float, or a schedule of the iteration count.

        With parameter groups this is the default, used by the groups that
        do not set their own; assigning it changes those groups."""
        return self._defaults["learning_rate"]

    @learning_rate.setter
    def learning_rate(self, value):
        value = _checked_lr(type(self).__name__, value)
        self._defaults["learning_rate"] = value
        for pg in self._param_groups:
            if "learning_rate" not in pg.overrides:
                pg.hyper["learning_rate"] = value

    @property
    def weight_decay(self):
        return self._defaults["weight_decay"]

    @property
    def maximize(self):
        return self._defaults["maximize"]

    @property
    def _hyper(self):
        return {k: self._defaults[k] for k in self._hyper_names}

    @property
    def params(self):
        """The parameters, in the structure they were given."""
        return self._structure(self._given)

    @property
    def backends(self):
        """Backend name used for each dtype group, e.g. ``{"float32": "numba"}``."""
        return {g.dtype.name: g.backend.NAME for g in self._groups}

    @property
    def rule(self):
        """Name of the fused kernel this optimizer runs (e.g. ``"adam_amsgrad"``);
        a tuple of names, one per group, when parameter groups differ."""
        names = tuple(pg.rule.name for pg in self._param_groups)
        return names[0] if len(set(names)) == 1 else names

    @property
    def param_groups(self):
        """Per group: the parameter indices and the effective hyperparameters."""
        return [{"indices": list(pg.indices), **pg.hyper} for pg in self._param_groups]

    def current_learning_rate(self, group=0):
        """The learning rate the next step will use (schedules evaluated)."""
        return self._lr_at(self._param_groups[group].hyper["learning_rate"])

    def _lr_at(self, lr):
        if not callable(lr):
            return lr
        value = lr(self.iterations)
        try:
            if isinstance(value, (str, bytes, bool)):  # float() would accept "0.1"
                raise TypeError
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{type(self).__name__}: the learning-rate schedule returned "
                            f"{value!r} at iteration {self.iterations}; expected a float") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{type(self).__name__}: the learning-rate schedule returned "
                             f"{value!r} at iteration {self.iterations}; expected a finite "
                             "value >= 0")
        return value

    # -- the step -------------------------------------------------------------------
    def step(self, grads):
        """Apply one update to every parameter, in place.

        Parameters
        ----------
        grads
            Same structure as ``params`` (array, list/tuple, dict with the
            same keys, or one entry per parameter group), each gradient of its
            parameter's shape and dtype.  A ``None`` gradient skips its
            parameter (its slots are untouched); not allowed with gradient
            accumulation.  Non-contiguous gradients are copied; nothing is
            ever cast.

        Raises
        ------
        TypeError, ValueError
            On any bad gradient or learning rate; then nothing has changed.
        """
        grads = self._match_grads(grads)
        if self._fast:  # one group, no accumulation, EMA or loss scale: the short way
            pg, group = self._param_groups[0], self._groups[0]
            h = pg.hyper
            lr = h["learning_rate"]
            if lr.__class__ is not float:
                lr = self._lr_at(lr)
            scalars = self._scalars(h, lr, self.iterations)
            scale = 1.0 if self.clipnorm is None and self.global_clipnorm is None \
                else self._clip_scales(grads)[0]
            keep, l2 = self._decay(h["weight_decay"], lr)
            group.set_factors(-scale if h["maximize"] else scale, keep, l2)
            group.plan.step(grads, group.pt, scalars,
                            math.inf if self.clipvalue is None else self.clipvalue)
            self.iterations += 1
            return
        steps = self.gradient_accumulation_steps
        applying = steps is None or (self.iterations + 1) % steps == 0
        updates = self.iterations if steps is None else self.iterations // steps
        for group in self._counted:
            group.plan.updates = updates
        plans = []
        if applying:
            for pg in self._param_groups:
                lr = self._lr_at(pg.hyper["learning_rate"])
                plans.append((pg, lr, self._scalars(pg.hyper, lr, updates)))
        # Everything is validated; from here on only arithmetic runs.
        inv = 1.0 if self.loss_scale_factor is None else 1.0 / self.loss_scale_factor
        arrays = self._arrays
        if self._accumulated is not None:
            for a, g in zip(self._accumulated, grads):
                arrays.add_scaled(a, g, inv)
            if applying:
                for a in self._accumulated:
                    arrays.divide(a, steps)
                grads, inv = self._accumulated, 1.0
        if applying:
            self._apply(grads, inv, plans)
            if self._accumulated is not None:
                for a in self._accumulated:
                    arrays.zero(a)
        if self._ema is not None:
            self._update_ema(updates)
        self.iterations += 1

    def _apply(self, grads, inv, plans):
        scales = self._clip_scales(grads, inv)
        clipvalue = math.inf if self.clipvalue is None else self.clipvalue
        single = len(self._groups) == 1
        k = 0
        for pg, lr, scalars in plans:
            keep, l2 = self._decay(pg.hyper["weight_decay"], lr)
            negate = pg.hyper["maximize"]
            for group in pg.groups:
                scale = -scales[k] if negate else scales[k]
                k += 1
                gl = grads if single else [grads[i] for i in group.indices]
                if len(gl) > 1 and all(g is None for g in gl):
                    continue
                group.set_factors(scale, keep, l2)
                group.plan.step(gl, group.pt, scalars, clipvalue)

    def _decay(self, wd, lr):
        """``(keep, l2)``: decoupled factor and coupled coefficient of weight decay."""
        if not wd:
            return 1.0, 0.0
        if self._torch_l2:
            return 1.0, wd
        return 1.0 - wd * lr, 0.0

    def _update_ema(self, updates):
        # Keras: the average starts as a copy (momentum 0 until the first
        # update has been counted), then follows every call
        m = self.ema_momentum if updates else 0.0
        for avg, p in zip(self._ema, self._params):
            self._arrays.lerp(avg, p, m, 1.0 - m)
        freq = self.ema_overwrite_frequency
        if freq and (updates + 1) % freq == 0:
            for avg, p in zip(self._ema, self._params):
                self._arrays.assign(p, avg)

    def finalize_variable_values(self):
        """With ``use_ema``: copy the moving averages into the parameters
        (Keras's ``finalize_variable_values``, called at the end of training).
        Without it, does nothing."""
        if self._ema is not None:
            for avg, p in zip(self._ema, self._params):
                self._arrays.assign(p, avg)

    @property
    def ema_params(self):
        """The moving averages (copies, in the structure of ``params``; device
        arrays for device parameters), or None."""
        if self._ema is None:
            return None
        return self._structure([self._arrays.copy(a) for a in self._ema])

    def _clip_scales(self, grads, inv=1.0):
        """One gradient scale per dtype group: a float, or per-tensor array."""
        n = len(self._groups)
        if self.clipnorm is None and self.global_clipnorm is None:
            return [inv] * n
        if n == 1:
            sumsq = [self._groups[0].plan.sumsq(grads)]
        else:
            sumsq = [g.plan.sumsq([grads[i] for i in g.indices]) for g in self._groups]
        sumsq = self._total_sumsq(sumsq)
        if self.global_clipnorm is not None:
            norm = math.sqrt(sum(float(np.sum(s)) for s in sumsq)) * inv
            c = self.global_clipnorm
            if self.convention == "torch":  # min() keeps a NaN first argument
                scale = min(c / (norm + _TORCH_CLIP_EPS), 1.0)
            else:
                scale = reference.global_clip_scale(norm, c)
            return [scale * inv] * n
        c = self.clipnorm
        with np.errstate(invalid="ignore"):
            return [c / np.maximum(np.sqrt(s) * inv, c) * inv for s in sumsq]

    def _total_sumsq(self, sumsq):
        """The per-tensor sums of squares that clipping uses (one float64 array
        per dtype group).  A hook: :mod:`fastopt.distributed` replaces it to
        add up the shards that other processes hold."""
        return sumsq

    def _match_grads(self, grads):
        """Grads as a list aligned with the parameters, validated."""
        ndarray = None if self._device else np.ndarray  # device grads: checked in full
        if grads.__class__ is list and self._kind == "list" and len(grads) == self._n:
            # the common case, checked without building anything
            for g, dt, sh in zip(grads, self._dtypes, self._shapes):
                if not (g.__class__ is ndarray and g.dtype is dt and g.shape == sh
                        and g.flags.c_contiguous):
                    break
            else:
                return grads
        name = type(self).__name__
        grads = _flatten_like(name, self._kind, self._names, self._group_sizes(), grads)
        dtypes, shapes = self._dtypes, self._shapes
        present = 0
        for i, g in enumerate(grads):
            if g is None:
                continue
            present += 1
            if (g.__class__ is ndarray and g.dtype is dtypes[i] and g.shape == shapes[i]
                    and g.flags.c_contiguous):
                continue  # the fast path: nothing to say
            grads[i] = self._check_grad(i, g)
        if present == 0:
            raise ValueError(f"{name}.step: every gradient is None; nothing to apply")
        if present < len(grads) and self._accumulated is not None:
            i = next(k for k, g in enumerate(grads) if g is None)
            raise ValueError(f"{name}.step: grads{self._labels[i]} is None; with "
                             "gradient_accumulation_steps every gradient must be given")
        return grads

    def _group_sizes(self):
        return [len(pg.indices) for pg in self._param_groups]

    def _check_grad(self, i, g):
        name, label = type(self).__name__, self._labels[i]
        if self._device:
            if not is_device_array(g):
                raise TypeError(f"{name}.step: grads{label} must be a CUDA device array or "
                                f"None, got {type(g).__name__}; the params are on the GPU, "
                                "so their gradients must be too")
            _, shape, dtype, contiguous, _ = self._arrays.describe(g)
        else:
            if not isinstance(g, np.ndarray):
                where = "; the params are host NumPy arrays, so their gradients must be " \
                    "too" if is_device_array(g) else ""
                raise TypeError(f"{name}.step: grads{label} must be a numpy.ndarray or None, "
                                f"got {type(g).__name__}{where}")
            shape, dtype, contiguous = g.shape, g.dtype, True
        if dtype != self._dtypes[i]:
            raise TypeError(f"{name}.step: grads{label} has dtype {dtype} but "
                            f"params{label} has dtype {self._dtypes[i]}; fastopt never casts "
                            "silently, cast the gradient explicitly")
        if shape != self._shapes[i]:
            raise ValueError(f"{name}.step: grads{label} has shape {shape} but "
                             f"params{label} has shape {tuple(self._shapes[i])}")
        if not contiguous:  # device arrays only: not copied behind the user's back
            raise ValueError(f"{name}.step: grads{label} with shape {shape} is not "
                             "C-contiguous; device gradients must be contiguous")
        return g if self._device else np.ascontiguousarray(g)

    # -- configuration and state ------------------------------------------------------
    def get_config(self):
        """JSON-able configuration: class name, convention and hyperparameters."""
        config = {"class_name": type(self).__name__, "convention": self.convention,
                  "learning_rate": _lr_config(self._defaults["learning_rate"]),
                  **self._hyper, "weight_decay": self.weight_decay,
                  "clipnorm": self.clipnorm, "clipvalue": self.clipvalue,
                  "global_clipnorm": self.global_clipnorm, "maximize": self.maximize,
                  "use_ema": self.use_ema, "ema_momentum": self.ema_momentum,
                  "ema_overwrite_frequency": self.ema_overwrite_frequency,
                  "loss_scale_factor": self.loss_scale_factor,
                  "gradient_accumulation_steps": self.gradient_accumulation_steps,
                  "exclude_from_weight_decay": self._exclude_config(),
                  "backend": self._backend_name}
        config.update(state_dtype=self.state_dtype, state_rounding=self.state_rounding)
        if self._kind == "groups":
            config["param_groups"] = [
                {k: _lr_config(v) if k == "learning_rate" else v
                 for k, v in pg.overrides.items()} for pg in self._param_groups]
        return config

    def _exclude_config(self):
        if not self._excluded:
            return None
        return sorted(self._names[i] if self._names[i] is not None else i
                      for i in self._excluded)

    @classmethod
    def from_config(cls, params, config):
        """A new optimizer over ``params`` from :meth:`get_config`'s output.

        With parameter groups, ``params`` is the list of group dicts; the
        config's per-group overrides replace those given there."""
        config = dict(config)
        class_name = config.pop("class_name", cls.__name__)
        if class_name != cls.__name__:
            raise ValueError(f"{cls.__name__}.from_config: the config is for {class_name}")
        config["learning_rate"] = _learning_rate_from_config(cls.__name__,
                                                             config.get("learning_rate"))
        groups = config.pop("param_groups", None)
        if groups is not None:
            if not (isinstance(params, (list, tuple)) and len(params) == len(groups)
                    and all(isinstance(p, Mapping) and "params" in p for p in params)):
                raise ValueError(f"{cls.__name__}.from_config: the config has "
                                 f"{len(groups)} parameter groups; pass params as a list "
                                 f"of {len(groups)} dicts with a 'params' key")
            params = [{"params": p["params"], **{
                k: _learning_rate_from_config(cls.__name__, v) if k == "learning_rate" else v
                for k, v in g.items()}} for p, g in zip(params, groups)]
        return cls(params, **config)

    def _slot_key(self, slot, i):
        return f"{slot}/{i if self._names[i] is None else self._names[i]}"

    def _live_slots(self):
        """Every per-parameter state array, by state-dict key: the kernels'
        slots (views of the flat buffers), the moving averages and the
        gradient accumulators."""
        live = {}
        for group in self._groups:
            for slot, views in group.slot_views.items():
                for i, view in zip(group.indices, views):
                    live[self._slot_key(slot, i)] = view
        for slot, arrays in (("average", self._ema),
                             ("gradient_accumulator", self._accumulated)):
            for i, a in enumerate(arrays or ()):
                live[self._slot_key(slot, i)] = a
        return live

    def state_dict(self):
        """``{"config", "iterations", "slots": {"<slot>/<index or name>": array}}``.

        Slot arrays are host NumPy copies (also for device parameters) in
        their parameter's shape and dtype (with ``state_dtype="bfloat16"``,
        the kernels' slots are uint16 arrays of bfloat16 bit patterns, which
        round-trip exactly); they
        include the moving averages (``average/...``) with ``use_ema`` and
        the gradient accumulators (``gradient_accumulator/...``).
        """
        slots = {key: self._arrays.to_host(a) for key, a in self._live_slots().items()}
        return {"config": self.get_config(), "iterations": self.iterations, "slots": slots}

    def load_state_dict(self, state):
        """Restore hyperparameters, iteration count and slots from
        :meth:`state_dict`'s output.  Checked whole first: on error nothing
        changes."""
        name = type(self).__name__
        if not isinstance(state, Mapping) or not {"config", "iterations", "slots"} <= set(state):
            raise ValueError(f"{name}.load_state_dict: expected a dict with keys 'config', "
                             "'iterations' and 'slots'")
        config = dict(state["config"])
        if config.get("class_name") != name:
            raise ValueError(f"{name}.load_state_dict: the state is for "
                             f"{config.get('class_name')!r}, not {name}")
        if config.get("state_dtype") != self.state_dtype:
            raise ValueError(f"{name}.load_state_dict: the state keeps the optimizer state in "
                             f"state_dtype={config.get('state_dtype')!r}, this optimizer in "
                             f"state_dtype={self.state_dtype!r}; build the optimizer with the "
                             "state's state_dtype to load it")
        if config.get("convention", "keras") != self.convention:
            raise ValueError(f"{name}.load_state_dict: the state uses convention "
                             f"{config.get('convention')!r}, this optimizer {self.convention!r}")
        iterations = state["iterations"]
        if isinstance(iterations, np.ndarray) and iterations.ndim == 0:
            iterations = iterations.item()
        if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) \
                or iterations < 0:
            raise ValueError(f"{name}.load_state_dict: iterations must be an integer >= 0, "
                             f"got {iterations!r}")
        # the hyperparameters, checked by building a twin on the same params
        config["learning_rate"] = self._callable_lr(name, config.get("learning_rate"),
                                                    self._defaults["learning_rate"])
        if "param_groups" in config:
            if self._kind != "groups" or len(config["param_groups"]) != len(self._param_groups):
                raise ValueError(f"{name}.load_state_dict: the state has "
                                 f"{len(config['param_groups'])} parameter groups, this "
                                 f"optimizer {len(self._param_groups) if self._kind == 'groups' else 'none'}")
            config["param_groups"] = [
                {**g, **({"learning_rate": self._callable_lr(
                    name, g["learning_rate"], pg.hyper["learning_rate"])}
                    if "learning_rate" in g else {})}
                for g, pg in zip(config["param_groups"], self._param_groups)]
        twin = type(self).from_config(self.params, {**config, "backend": self._backend_name})
        if twin.rule != self.rule:
            raise ValueError(f"{name}.load_state_dict: the state is for kernel "
                             f"{twin.rule!r} (other hyperparameters) but this "
                             f"optimizer runs {self.rule!r}")
        slots = state["slots"]
        live = twin._live_slots()
        if set(slots) != set(live):
            raise ValueError(f"{name}.load_state_dict: slots differ; missing "
                             f"{sorted(set(live) - set(slots))}, unexpected "
                             f"{sorted(set(slots) - set(live))}")
        for key, dst in live.items():
            a = slots[key]
            if not isinstance(a, np.ndarray) or a.shape != dst.shape or a.dtype != dst.dtype:
                raise ValueError(
                    f"{name}.load_state_dict: slot {key!r} has "
                    f"shape {getattr(a, 'shape', None)} and dtype {getattr(a, 'dtype', None)}, "
                    f"expected {dst.shape} and {dst.dtype}")
        # all checked: copy the slots into the twin, then take it over
        for key, dst in live.items():
            twin._arrays.assign(dst, slots[key])
        twin.iterations = int(iterations)
        self.__dict__.update(twin.__dict__)

    @staticmethod
    def _callable_lr(name, lr, current):
        if isinstance(lr, Mapping) and lr.get("class_name") == "callable":
            if not callable(current):
                raise ValueError(f"{name}.load_state_dict: the state's learning rate was a "
                                 "custom callable; set the same callable on this optimizer "
                                 "before loading")
            return current
        return lr

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items()
                          if k != "class_name" and v is not None and v is not False)
        return f"{type(self).__name__}({hyper})"


# -- helpers ---------------------------------------------------------------------------

def _checked_lr(owner, value):
    if callable(value):
        return value
    return real(owner, "learning_rate", value, low=0.0)


def _lr_config(lr):
    if isinstance(lr, schedules.LearningRateSchedule):
        return schedules.serialize(lr)
    if callable(lr):
        return {"class_name": "callable", "config": {"repr": repr(lr)}}
    return lr


def _state_options(owner, state_dtype, rounding, backend):
    """Checked ``(state_dtype, state_rounding)``: ``(None, None)``, or a dtype of
    :data:`fastopt.backends.STATE_DTYPES` and one of its backend's roundings
    (default: the first, "nearest")."""
    if state_dtype is None:
        if rounding is not None:
            raise ValueError(f"{owner}: state_rounding={rounding!r} applies only with a "
                             f"reduced-precision state_dtype ({', '.join(STATE_DTYPES)})")
        return None, None
    if not isinstance(state_dtype, str) or state_dtype not in STATE_DTYPES:
        raise ValueError(f"{owner}: state_dtype must be None (the parameters' dtype) or one "
                         f"of {STATE_DTYPES}, got {state_dtype!r}")
    try:
        roundings = resolve_state_backend(backend, state_dtype)[1].ROUNDINGS
    except ValueError as exc:
        raise ValueError(f"{owner}: {exc}") from None
    rounding = roundings[0] if rounding is None else rounding
    if not isinstance(rounding, str) or rounding not in roundings:
        raise ValueError(f"{owner}: state_rounding must be one of {roundings}, got {rounding!r}")
    return state_dtype, rounding


def _check_state_rules(owner, param_groups, backend, state_dtype):
    """ValueError if a group's kernel cannot keep its state in ``state_dtype``
    (a kernel without state is fine: the option does nothing to it)."""
    refusal = resolve_state_backend(backend, state_dtype)[1].refusal
    for g, pg in enumerate(param_groups):
        why = pg.rule.slots and refusal(pg.rule)
        if why:
            where = f" (param group {g})" if len(param_groups) > 1 else ""
            raise ValueError(f"{owner}{where}: state_dtype={state_dtype!r} is not offered for "
                             f"the {pg.rule.name!r} kernel: {why}")


def _count(owner, name, value, low):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{owner}: {name} must be >= {low}, got {value!r}")
    return int(value)


def _learning_rate_from_config(owner, lr):
    if isinstance(lr, Mapping):
        if lr.get("class_name") == "callable":
            raise ValueError(f"{owner}.from_config: the learning rate was a custom callable, "
                             "which a config cannot hold; pass learning_rate yourself")
        return schedules.deserialize(lr)
    return lr


def _excluded(owner, exclude, names, n):
    """Set of parameter indices excluded from weight decay."""
    if exclude is None:
        return frozenset()
    if isinstance(exclude, (str, int)) or not isinstance(exclude, (list, tuple, set,
                                                                   frozenset)):
        raise TypeError(f"{owner}: exclude_from_weight_decay must be a list of parameter "
                        f"indices or names, got {exclude!r}")
    index = {nm: i for i, nm in enumerate(names) if nm is not None}
    out = set()
    for e in exclude:
        if isinstance(e, str):
            if e not in index:
                raise ValueError(f"{owner}: exclude_from_weight_decay names {e!r}, which is "
                                 f"not a parameter name (names: {sorted(index)})")
            out.add(index[e])
        elif isinstance(e, numbers.Integral) and not isinstance(e, bool):
            if not 0 <= e < n:
                raise ValueError(f"{owner}: exclude_from_weight_decay index {e} is out of "
                                 f"range for {n} parameters")
            out.add(int(e))
        else:
            raise TypeError(f"{owner}: exclude_from_weight_decay entries must be parameter "
                            f"indices or names, got {e!r}")
    return frozenset(out)


class _Parsed:
    """Parameters parsed into a flat list, with what is needed to rebuild
    their structure and the parameter groups."""

    def __init__(self, kind, arrays, names, groups, structure, given, device):
        self.kind, self.arrays, self.names = kind, arrays, names
        self.groups, self.structure = groups, structure
        # the arrays as given (CuPy, PyTorch...); ``arrays`` are Numba views of
        # them when they are on the device
        self.given, self.device = given, device


def _one(owner, params, where=""):
    """``(kind, names or None, arrays)`` of a plain (non-group) params value."""
    if isinstance(params, np.ndarray) or is_device_array(params):
        return "array", None, [params]
    if isinstance(params, Mapping):
        for k in params:
            if not isinstance(k, str):
                raise TypeError(f"{owner}: parameter names must be strings, got {k!r}{where}")
        return "dict", list(params), list(params.values())
    if isinstance(params, (list, tuple)):
        return "list", None, list(params)
    raise TypeError(f"{owner}: params{where} must be an array, a list or tuple of arrays, a "
                    f"dict of arrays, or a list of parameter-group dicts, got "
                    f"{type(params).__name__}")


def _rebuild(kind, names):
    if kind == "dict":
        return lambda arrays: dict(zip(names, arrays))
    if kind == "array":
        return lambda arrays: arrays[0]
    return list


def _parse_params(owner, params):
    """Check every parameter; flatten groups."""
    is_group = [isinstance(p, Mapping) and "params" in p for p in params] \
        if isinstance(params, (list, tuple)) else []
    if any(is_group):
        if not all(is_group):
            raise TypeError(f"{owner}: params mixes parameter-group dicts and arrays; give "
                            "either arrays or a list of {'params': ..., ...} dicts")
        arrays, names, groups, parts = [], [], [], []
        for g, spec in enumerate(params):
            kind, gnames, garrays = _one(owner, spec["params"], f" of param group {g}")
            if not garrays:
                raise ValueError(f"{owner}: param group {g} has no parameters")
            groups.append((list(range(len(arrays), len(arrays) + len(garrays))),
                           {k: v for k, v in spec.items() if k != "params"}))
            parts.append((kind, gnames, len(garrays), spec))
            arrays += garrays
            names += gnames or [None] * len(garrays)

        def structure(flat):
            out, k = [], 0
            for kind, gnames, n, spec in parts:
                out.append({**spec, "params": _rebuild(kind, gnames)(flat[k:k + n])})
                k += n
            return out
        kind = "groups"
        named = [nm for nm in names if nm is not None]
        if len(named) != len(set(named)):
            raise ValueError(f"{owner}: parameter names repeat across param groups")
    else:
        kind, gnames, arrays = _one(owner, params)
        names = gnames or [None] * len(arrays)
        groups = [(list(range(len(arrays))), {})]
        structure = _rebuild(kind, gnames)
    if not arrays:
        raise ValueError(f"{owner}: params is empty")
    labels = [f"params[{i if nm is None else repr(nm)}]" for i, nm in enumerate(names)]
    on_device = [is_device_array(a) for a in arrays]
    cuda = None
    if any(on_device):  # all on the GPU, or none
        i = on_device.index(True)
        j = next((k for k, d in enumerate(on_device) if not d), None)
        if j is not None:
            raise TypeError(f"{owner}: {labels[i]} is a CUDA device array but {labels[j]} is "
                            f"a {type(arrays[j]).__name__}; all parameters must be on the "
                            "GPU, or all host NumPy arrays")
        cuda = get_backend("cuda")  # ImportError saying how to get it
    for label, a in zip(labels, arrays):
        if cuda is not None:
            _, shape, dtype, contiguous, readonly = cuda.describe(a)
        elif not isinstance(a, np.ndarray):
            raise TypeError(f"{owner}: {label} must be a numpy.ndarray, got {type(a).__name__}")
        else:
            shape, dtype = a.shape, a.dtype
            contiguous, readonly = a.flags.c_contiguous, not a.flags.writeable
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"{owner}: {label} has dtype {dtype}; fastopt supports float32 "
                            "and float64 parameters")
        if not contiguous:
            raise ValueError(f"{owner}: {label} with shape {shape} is not C-contiguous; "
                             "parameters are updated in place, so they must be contiguous")
        if readonly:
            raise ValueError(f"{owner}: {label} is read-only; parameters are updated in place")
    given = arrays
    if cuda is not None:
        arrays = [cuda.as_device(a) for a in arrays]
    _check_no_overlap(owner, arrays, names, cuda.pointer if cuda else _host_pointer)
    return _Parsed(kind, arrays, names, groups, structure, given, cuda is not None)


def _host_pointer(a):
    return a.ctypes.data


def _flatten_like(name, kind, names, group_sizes, grads):
    """Gradients in the structure of the params, as one flat list."""
    n = len(names)
    if kind == "groups":
        if not isinstance(grads, (list, tuple)) or len(grads) != len(group_sizes):
            raise TypeError(f"{name}.step: params were given as {len(group_sizes)} parameter "
                            "groups, so grads must be a list with one entry per group, got "
                            f"{type(grads).__name__}"
                            f"{' of length %d' % len(grads) if isinstance(grads, (list, tuple)) else ''}")
        flat, k = [], 0
        for g, (entry, size) in enumerate(zip(grads, group_sizes)):
            gnames = names[k:k + size]
            gkind = "dict" if gnames[0] is not None else "list"
            if gkind == "list" and size == 1 and (isinstance(entry, np.ndarray)
                                                  or is_device_array(entry)):
                entry = [entry]
            flat += _flatten_like(f"{name}.step (param group {g})", gkind, gnames, [size],
                                  entry)
            k += size
        return flat
    if kind == "dict":
        if not isinstance(grads, Mapping):
            raise TypeError(f"{name}.step: params were given as a dict, so grads must be "
                            f"a dict with the same keys, got {type(grads).__name__}")
        missing = [k for k in names if k not in grads]
        extra = [k for k in grads if k not in set(names)]
        if missing or extra:
            raise ValueError(f"{name}.step: grads keys differ from params keys "
                             f"(missing {missing}, unexpected {extra})")
        return [grads[k] for k in names]
    if n == 1 and (isinstance(grads, np.ndarray) or is_device_array(grads)):
        return [grads]
    if isinstance(grads, (list, tuple)):
        if len(grads) != n:
            raise ValueError(f"{name}.step: expected {n} gradient(s), one per parameter, "
                             f"got {len(grads)}")
        return list(grads)
    raise TypeError(f"{name}.step: grads must be "
                    f"{'an array or ' if n == 1 else ''}a list or tuple of {n} "
                    f"arrays, got {type(grads).__name__}")


def _check_no_overlap(owner, arrays, names, pointer):
    spans = sorted((pointer(a), pointer(a) + a.nbytes, i)
                   for i, a in enumerate(arrays) if a.nbytes)
    for (_, e0, i), (s1, _, j) in zip(spans, spans[1:]):
        if s1 < e0:
            li = f"{i}" if names[i] is None else repr(names[i])
            lj = f"{j}" if names[j] is None else repr(names[j])
            raise ValueError(f"{owner}: params[{li}] and params[{lj}] share memory; each "
                             "parameter must be updated exactly once")
