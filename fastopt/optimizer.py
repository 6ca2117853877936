"""The optimizer: build once, then step.

An :class:`Optimizer` owns the state (slots) of its parameters and, each
:meth:`~Optimizer.step`, computes the per-step scalars on the host in float64
(scheduled learning rate, bias corrections, clip factors, weight-decay
factors) and hands every same-dtype group of tensors to one fused kernel call
of its backend.  Kernels only do arithmetic; everything that can go wrong is
checked before any array is touched.

The pieces it is built from:

* :mod:`fastopt.params` -- the parameter tree, and matching gradients to it;
* :mod:`fastopt.hyperparams` -- hyperparameter checks and config round trips;
* :mod:`fastopt.buffers` -- parameter groups, and per-dtype tensor groups
  holding the slots and the backend's plan;
* :mod:`fastopt.pipeline` -- loss scale, accumulation, clipping, weight decay
  and EMA around the kernel (and the order of operations of one step);
* :mod:`fastopt.state` -- state dict checks and files;
* :mod:`fastopt.protocol` -- what it offers to ``train``, ``state`` and
  ``distributed``.
"""
from __future__ import annotations

import math
import numbers
import threading

import numpy as np

from . import hyperparams, two_phase
from .rule import get_rule
from ._validation import boolean, real
from .backends import get_backend
from .buffers import HostArrays, ParamGroup, TensorGroup
from .hyperparams import checked_lr, lr_config, scheduled_lr
from .params import ParamTree
from .pipeline import (accumulate, copy_averages, decay_factors, ema_weight, update_counts,
                       update_ema)
from .protocol import local_tensor_sums
from .optimizer_state import StateMethods

__all__ = ["Optimizer"]


class Optimizer(StateMethods):
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
        A float >= 0, or a schedule: a callable of the number of ``step``
        calls made so far, :attr:`calls` (for example one of
        :mod:`fastopt.schedules`).  Assignable between steps.
    weight_decay : float, optional
        Keras convention, and AdamW under both: decoupled,
        ``w <- w * (1 - weight_decay * lr)`` before each update.  PyTorch
        convention (except AdamW, and RAdam with ``decoupled_weight_decay``):
        L2, ``g <- g + weight_decay * w``.
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
        many updates (:attr:`iterations`).
    loss_scale_factor : float > 0, optional
        Gradients arrive multiplied by this (a scaled loss); they are divided
        by it first.
    gradient_accumulation_steps : int >= 2, optional
        Accumulate gradients and update only on every this-many-th call, with
        their mean.  As in Keras, two counters then differ: :attr:`calls`
        counts every ``step`` call, and learning-rate schedules see it;
        :attr:`iterations` counts the updates applied,
        ``calls // gradient_accumulation_steps``, and Adam's bias
        correction, PyTorch's step count, the EMA and its overwrite
        frequency see that.  The EMA is moved on every call.
    backend : str
        ``"auto"`` (default), ``"cython"``, ``"numba"``, ``"numpy"`` or
        ``"cuda"`` (device arrays only, which ``"auto"`` then picks); see
        :func:`fastopt.available_backends`.
    state_dtype : None, "bfloat16" or "int8", default None
        None keeps the optimizer state (momentum, velocity, accumulators) in
        the parameters' dtype.  ``"bfloat16"`` keeps it as bfloat16 bit
        patterns in uint16 arrays, halving its memory and its traffic (Adam:
        20 instead of 28 bytes per parameter per step).  ``"int8"`` keeps
        each slot as 8-bit codes (int8, or uint8 for slots that are never
        negative) with one float32 scale per block of 256 elements (Adam:
        about 16 bytes per parameter per step; the scales are the state-dict
        entries ``"<slot>_scales/<index>"``; :func:`fastopt.reference.q8_encode`
        specifies the code), offered for Adam/AdamW/AMSGrad, RMSprop (not
        centred), SGD with momentum and Adagrad.  The arithmetic stays
        float32.  Both need float32 parameters and the numba backend
        (``"auto"`` picks it); ``"int8"`` also runs on the cython backend
        (the same bits; ``"auto"`` picks it for groups of up to
        ``fastopt.backends.INT8_CYTHON_UP_TO`` elements, and where Numba is
        missing) and, for
        CUDA device arrays, on the cuda backend.  bfloat16 is not offered for
        centred RMSprop.
        The EMA and gradient accumulators stay in the parameters' dtype.  See
        the documentation's "Reduced-precision optimizer state"
        (``docs/reduced-precision.md``) for what they do to training.
    state_rounding : "nearest" or "stochastic", default "nearest"
        With ``state_dtype="bfloat16"``: round to nearest (ties to even), or
        stochastically (unbiased; reproducible, the random numbers are a hash
        of the update count, the tensor and the element; see
        :func:`fastopt.reference.bf16_random_bits`).
    convention : str
        ``"keras"`` (default): Keras 3 formulas and defaults; ``"torch"``:
        PyTorch 2.13 ``torch.optim`` formulas and defaults.  An optimizer
        that exists in one framework only offers (and defaults to) that
        framework's convention, and refuses the other.
    """

    _DEFAULTS: dict = {}
    _TORCH_DEFAULTS: dict = {}
    #: the conventions the class offers, its default first: an optimizer that
    #: exists in one framework only (Keras's Lion, torch's RAdam) names that one
    _CONVENTIONS: tuple = hyperparams.CONVENTIONS
    _TORCH_ONLY: tuple = ()
    #: PyTorch's argument names that differ from fastopt's (Keras's), mapped to
    #: them: the hint of an unknown keyword, and the documented name table
    _TORCH_NAMES: dict = {"lr": "learning_rate"}
    #: weight decay is decoupled under the torch convention too (AdamW); a
    #: class with a ``decoupled_weight_decay`` hyperparameter (torch's NAdam,
    #: RAdam) decides it per parameter group instead
    _TORCH_DECOUPLED = False
    #: the conventions the class offers, its default first: a class that
    #: exists in one framework only (torch's RAdam) names that one alone
    _CONVENTIONS: tuple = hyperparams.CONVENTIONS
    #: host parameters unless __init__ finds CUDA device arrays (class-level
    #: defaults, for subclasses that build themselves)
    _device = False
    _arrays = HostArrays
    #: the per-tensor reductions hook of :mod:`fastopt.protocol`; a wrapper
    #: that gives this optimizer a shard of each tensor replaces it
    reduce_tensor_sums = staticmethod(local_tensor_sums)

    def __init__(self, params, *, hyper, learning_rate=None, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
                 ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, exclude_from_weight_decay=None,
                 maximize=False, backend="auto", convention=None, state_dtype=None,
                 state_rounding=None, **unknown):
        name = type(self).__name__
        self.convention = hyperparams.check_arguments(name, unknown, hyper, self._TORCH_ONLY,
                                                      convention, backend, self._TORCH_NAMES,
                                                      self._CONVENTIONS)
        defaults = self._TORCH_DEFAULTS if self.convention == "torch" else self._DEFAULTS
        top = {k: defaults.get(k) if v is None else v for k, v in hyper.items()}
        top["learning_rate"] = defaults["learning_rate"] if learning_rate is None \
            else learning_rate
        top["weight_decay"] = defaults.get("weight_decay") if weight_decay is None \
            else weight_decay
        top["maximize"] = maximize
        self._defaults = self._check_group(top, "")
        self._hyper_names = tuple(hyper)
        self._clipnorm, self._clipvalue, self._global_clipnorm = hyperparams.check_clipping(
            name, clipnorm, clipvalue, global_clipnorm)
        self.use_ema = boolean(name, "use_ema", use_ema)
        self.ema_momentum = real(name, "ema_momentum", ema_momentum, low=0.0, high=1.0)
        self.ema_overwrite_frequency = hyperparams.count(name, "ema_overwrite_frequency",
                                                         ema_overwrite_frequency, 1)
        self.loss_scale_factor = real(name, "loss_scale_factor", loss_scale_factor, low=0.0,
                                      low_open=True, allow_none=True)
        self.gradient_accumulation_steps = hyperparams.count(
            name, "gradient_accumulation_steps", gradient_accumulation_steps, 2)
        self._backend_name = backend
        self.state_dtype, self.state_rounding = hyperparams.state_options(
            name, state_dtype, state_rounding, backend)

        self._tree = tree = ParamTree(name, params)
        self._params = tree.arrays
        self._device = tree.device  # device params: the cuda backend does the array work
        hyperparams.check_placement(name, backend, tree, self.state_dtype)
        self._arrays = get_backend("cuda") if self._device else HostArrays
        self._excluded = tree.indices_of(exclude_from_weight_decay)
        self._param_groups = []
        for g, (indices, overrides) in enumerate(tree.groups):
            hyperparams.check_group_keys(name, g, overrides, hyper)
            merged = self._check_group({**self._defaults, **overrides}, f" (param group {g})")
            self._param_groups.append(ParamGroup(indices, merged, overrides,
                                                 get_rule(self._rule_name(merged)),
                                                 not self._decoupled(merged)))
        if self.state_dtype is not None:
            hyperparams.check_state_rules(name, self._param_groups, backend, self.state_dtype)
        # one step, state_dict() or load_state_dict() at a time (thread safety)
        self._lock = threading.RLock()
        self._iterations = 0
        self._build()

    # -- hooks for subclasses ---------------------------------------------------
    def _check(self, hyper):  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def _rule_name(self, hyper):  # pragma: no cover
        raise NotImplementedError

    def _scalars(self, hyper, lr, updates):  # pragma: no cover
        raise NotImplementedError

    def _decoupled(self, hyper):
        """Whether a group's weight decay is decoupled (``w *= 1 - wd*lr``)
        rather than L2 (``g += wd*w``): under the Keras convention always,
        under the torch one for AdamW (``_TORCH_DECOUPLED``), and for a group
        whose ``decoupled_weight_decay`` hyperparameter (torch's NAdam and
        RAdam) is true."""
        return (self.convention == "keras" or self._TORCH_DECOUPLED
                or bool(hyper.get("decoupled_weight_decay")))

    def _decay_factors(self, hyper, lr, pg):
        """``(keep, l2)`` of a group's weight decay for this step
        (:func:`fastopt.pipeline.decay_factors`); a rule that applies its
        own weight decay (schedule-free AdamW) returns ``(1.0, 0.0)``."""
        return decay_factors(hyper["weight_decay"], lr, pg.coupled_decay)

    def _slot_init(self, hyper):
        """Initial value of each slot that does not start at zero."""
        return {}

    def _check_group(self, values, where):
        """A parameter group's hyperparameters, checked (``where`` names the group)."""
        return hyperparams.check_group_hyperparams(type(self).__name__ + where, self._check,
                                                   values)

    # -- construction -------------------------------------------------------------
    @classmethod
    def _over_state(cls, params, state, **kwargs):
        """An optimizer whose state lives in arrays the caller owns: how a
        framework adapter (:mod:`fastopt.keras`) runs the whole step on the
        framework's own variables, without a copy.

        ``state`` maps each slot name of the rule, ``"ema"`` (with
        ``use_ema``) and ``"accumulated"`` (with gradient accumulation) to one
        array per parameter, of its shape and dtype, C-contiguous, writeable
        and not overlapping anything else; they are used as they are (not
        initialised).  Host parameters and one parameter group only.
        """
        self = cls.__new__(cls)
        self._given_state = state
        cls.__init__(self, params, **kwargs)
        return self

    def _state_arrays(self, key, needed, shapes=None):
        """The caller's arrays for ``key`` (see :meth:`_over_state`), checked
        (``shapes``: per parameter, the expected shape when it is not the
        parameter's: a ``per_tensor`` rule's slots)."""
        owner = type(self).__name__
        if key not in self._given_state:
            raise ValueError(f"{owner}: no {key!r} arrays given for its state")
        arrays = list(self._given_state[key])
        if len(arrays) != len(self._params):
            raise ValueError(f"{owner}: {len(arrays)} {key} arrays for {len(self._params)} "
                             "parameters")
        for i, (a, p) in enumerate(zip(arrays, self._params)):
            shape = p.shape if shapes is None else shapes[i]
            if not (isinstance(a, np.ndarray) and a.shape == shape and a.dtype == p.dtype
                    and a.flags.c_contiguous and a.flags.writeable):
                raise ValueError(f"{owner}: the {key} array of parameter {i} must be a "
                                 f"writeable C-contiguous {p.dtype} array of shape {shape}")
        return arrays if needed else None

    def _build(self):
        reduced_state = None if self.state_dtype is None \
            else (self.state_dtype, self.state_rounding)
        given = getattr(self, "_given_state", None)
        if given is not None and (self._device or reduced_state or len(self._param_groups) > 1):
            raise ValueError(f"{type(self).__name__}: state in the caller's arrays needs host "
                             "parameters, one parameter group and state_dtype=None")
        for pg in self._param_groups:
            by_dtype = {}
            for i in pg.indices:
                by_dtype.setdefault(self._params[i].dtype, []).append(i)
            slot_arrays = None
            if given is not None:
                shapes = None
                if pg.rule.kind == "per_tensor":
                    from .per_tensor import slot_shapes
                    shapes = [slot_shapes(pg.rule, p.shape) for p in self._params]
                slot_arrays = {name: self._state_arrays(
                    name, True, None if shapes is None else [s[name] for s in shapes])
                    for name in pg.rule.slots}
            pg.tensor_groups = [
                TensorGroup(idx, [self._params[i] for i in idx], pg.rule,
                            self._slot_init(pg.hyperparams), self._backend_name,
                            [i not in self._excluded for i in idx], self._device, reduced_state,
                            None if slot_arrays is None else
                            {name: [arrays[i] for i in idx]
                             for name, arrays in slot_arrays.items()}, ema=self.use_ema)
                for idx in by_dtype.values()]
        self._tensor_groups = [g for pg in self._param_groups for g in pg.tensor_groups]
        self._build_averages(given)
        self._counted = [g for g in self._tensor_groups if g.counted]
        self._one_tensor_group = len(self._tensor_groups) == 1
        self._no_clip_scales = [1.0] * len(self._tensor_groups)

    def _build_averages(self, given):
        """The EMA and gradient-accumulator arrays: the caller's (``given``,
        see :meth:`_over_state`) or new zeros."""
        if given is not None:
            self._ema = self._state_arrays("ema", self.use_ema) if self.use_ema else None
            self._accumulated = (self._state_arrays("accumulated", True)
                                 if self.gradient_accumulation_steps else None)
        else:
            zeros_like = self._arrays.zeros_like
            self._ema = [zeros_like(p) for p in self._params] if self.use_ema else None
            self._accumulated = ([zeros_like(p) for p in self._params]
                                 if self.gradient_accumulation_steps else None)
        # the moving average inside the kernel's pass, where the plan can
        # (fastopt.pipeline); these are the averages' arrays for the life of
        # the optimizer (load_state_dict copies into them)
        self._ema_now, self._ema_done = None, []
        for group in self._tensor_groups:
            group.ema_fused = self._ema is not None and getattr(group.plan, "fuses_ema", False)
            if group.ema_fused:
                group.plan.attach_ema([self._ema[i] for i in group.indices])

    @property
    def _groups(self):
        """Every tensor group, in order (the name tools and tests know)."""
        return self._tensor_groups

    # -- public attributes ------------------------------------------------------
    @property
    def learning_rate(self):
        """The learning rate: a float, or a schedule of :attr:`calls`.

        With parameter groups this is the default, used by the groups that
        do not set their own; assigning it changes those groups."""
        return self._defaults["learning_rate"]

    @learning_rate.setter
    def learning_rate(self, value):
        value = checked_lr(type(self).__name__, value)
        self._defaults["learning_rate"] = value
        for pg in self._param_groups:
            if "learning_rate" not in pg.overrides:
                pg.hyperparams["learning_rate"] = value

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
        return self._tree.rebuild(self._tree.given)

    @property
    def backends(self):
        """Backend name used for each dtype group, e.g. ``{"float32": "numba"}``."""
        return {g.dtype.name: g.backend.NAME for g in self._tensor_groups}

    @property
    def rule(self):
        """Name of the fused kernel this optimizer runs (e.g. ``"adam_amsgrad"``);
        a tuple of names, one per group, when parameter groups differ."""
        names = tuple(pg.rule.name for pg in self._param_groups)
        return names[0] if len(set(names)) == 1 else names

    @property
    def param_groups(self):
        """Per group: the parameter indices and the effective hyperparameters."""
        return [{"indices": list(pg.indices), **pg.hyperparams} for pg in self._param_groups]

    def current_learning_rate(self, group=0):
        """The learning rate the next step will use (schedules evaluated)."""
        return self._lr_at(self._param_groups[group].hyperparams["learning_rate"])

    def _lr_at(self, lr):
        return scheduled_lr(type(self).__name__, lr, self._iterations)  # the call count

    # -- the step -------------------------------------------------------------------
    def step(self, grads):
        """Apply one update to every parameter, in place.

        The order of operations is :mod:`fastopt.pipeline`'s.

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
        with self._lock:  # a whole step, or none: see the thread-safety notes
            accumulated = self._accumulated
            grads = self._tree.match_grads(grads, accumulated is not None)
            steps = self.gradient_accumulation_steps
            if steps is None:  # every call is an update
                applying, updates = True, self._iterations
            else:
                applying, updates = update_counts(self._iterations, steps)
            for group in self._counted:
                group.plan.updates = updates
            runs = []  # per parameter group: (group, learning rate, the kernel's scalars)
            hosts = []  # per parameter group: its host state after this step
            if applying:
                for pg in self._param_groups:
                    hyper = pg.hyperparams
                    lr = hyper["learning_rate"]
                    if lr.__class__ is not float:
                        lr = self._lr_at(lr)
                    scalars = self._scalars(hyper, lr, updates)
                    if pg.rule.host_state:  # running products: advanced, kept after the step
                        scalars, host = pg.rule.advanced(scalars, pg.host)
                        hosts.append((pg, host))
                    runs.append((pg, lr, scalars))
            # Everything is validated; from here on only arithmetic runs.
            inv = 1.0 if self.loss_scale_factor is None else 1.0 / self.loss_scale_factor
            ema = self._ema is not None
            if ema:  # the momentum of this call's average, for the kernels that fold it in
                self._ema_now = ema_weight(updates, self.ema_momentum)
                self._ema_done = []
            if accumulated is not None:  # in-place arithmetic: never an exception halfway
                with np.errstate(all="ignore"):
                    grads, inv = accumulate(self._arrays, accumulated, grads, inv, applying,
                                            steps)
            if applying:
                self._apply(grads, inv, runs)
                for pg, host in hosts:
                    pg.host = host
                if accumulated is not None:
                    for acc in accumulated:
                        self._arrays.zero(acc)
            if ema:
                self._ema_now = None
                done = self._ema_done
                if not done:
                    rest = None  # every average in a pass of its own
                elif len(done) == len(self._tensor_groups):
                    rest = ()
                else:
                    rest = [i for g in self._tensor_groups if g not in done
                            for i in g.indices]
                with np.errstate(all="ignore"):
                    update_ema(self._arrays, self._ema, self._params, updates,
                               self.ema_momentum, self.ema_overwrite_frequency, rest)
            self._iterations += 1

    def _apply(self, grads, inv, runs):
        """The kernel calls: one per tensor group (two passes for a
        ``two_phase`` rule: the reductions, then the apply scaled per tensor)."""
        if self._clipnorm is None and self._global_clipnorm is None:
            scales = self._no_clip_scales if inv == 1.0 else [inv] * len(self._tensor_groups)
        else:  # a two-phase step: per-tensor norms, a scale per tensor, the apply
            clip = two_phase.clipping(self._clipnorm, self._global_clipnorm,
                                      self.convention == "torch")
            scales = two_phase.decide(clip, self._tensor_groups, grads, inv,
                                      self.reduce_tensor_sums)
        clipvalue = math.inf if self._clipvalue is None else self._clipvalue
        if self._one_tensor_group:  # then grads are the group's, as they are
            ((pg, lr, scalars),) = runs
            hyper = pg.hyperparams
            keep, l2 = self._decay_factors(hyper, lr, pg)
            group = self._tensor_groups[0]
            group.set_factors(-scales[0] if hyper["maximize"] else scales[0], keep, l2)
            if not pg.rule.two_phase:
                self._plan_step(group, grads, scalars, clipvalue)
                return
            work = [(pg.rule, group, grads, scalars)]
        else:
            work = []
            k = 0
            for pg, lr, scalars in runs:
                keep, l2 = self._decay_factors(pg.hyperparams, lr, pg)
                negate = pg.hyperparams["maximize"]
                for group in pg.tensor_groups:
                    scale = -scales[k] if negate else scales[k]
                    k += 1
                    group_grads = [grads[i] for i in group.indices]
                    if len(group_grads) > 1 and all(g is None for g in group_grads):
                        if not pg.rule.two_phase:  # (every rank reduces the same groups)
                            continue
                    group.set_factors(scale, keep, l2)
                    work.append((pg.rule, group, group_grads, scalars))
        if work and work[0][0].two_phase:  # reduce, decide the update scales, then apply
            update = two_phase.update_scales(
                [(rule, group.plan, gr, group.factors, scalars, clipvalue)
                 for rule, group, gr, scalars in work], self.reduce_tensor_sums)
            for (_, group, _, _), row in zip(work, update):
                group.factors[3] = row
        for _, group, group_grads, scalars in work:
            self._plan_step(group, group_grads, scalars, clipvalue)

    def _plan_step(self, group, grads, scalars, clipvalue):
        """One tensor group's kernel call; with ``use_ema``, the moving
        average of its parameters in the same pass where its plan can
        (recorded in ``_ema_done``: the others are averaged after the step)."""
        m = self._ema_now
        if m is not None and group.ema_fused:
            group.plan.step_ema(grads, group.factors, scalars, clipvalue, m)
            self._ema_done.append(group)
        else:
            group.plan.step(grads, group.factors, scalars, clipvalue)

    # -- moving averages --------------------------------------------------------------
    def finalize_variable_values(self):
        """With ``use_ema``: copy the moving averages into the parameters
        (Keras's ``finalize_variable_values``, called at the end of training).
        Without it, does nothing."""
        if self._ema is not None:
            copy_averages(self._arrays, self._ema, self._params)

    @property
    def ema_params(self):
        """The moving averages (copies, in the structure of ``params``; device
        arrays for device parameters), or None."""
        if self._ema is None:
            return None
        return self._tree.rebuild([self._arrays.copy(a) for a in self._ema])

    # -- configuration and state ------------------------------------------------------
    def get_config(self):
        """JSON-able configuration: class name, convention and hyperparameters."""
        config = {"class_name": type(self).__name__, "convention": self.convention,
                  "learning_rate": lr_config(self._defaults["learning_rate"]),
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
        if self._tree.kind == "groups":
            config["param_groups"] = [
                {k: lr_config(v) if k == "learning_rate" else v
                 for k, v in pg.overrides.items()} for pg in self._param_groups]
        return config

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Exclude parameters from weight decay, as Keras's method of this name.

        Parameters
        ----------
        var_list : sequence of arrays, optional
            Parameters (the arrays given to the optimizer, matched by
            identity) to exclude.
        var_names : sequence of str, optional
            Regular expressions, joined with ``|`` into one pattern that is
            searched in each parameter's name (the keys of dict params);
            parameters without a name never match.

        A call replaces every earlier exclusion (the constructor's
        ``exclude_from_weight_decay`` included); ``get_config`` records the
        result as the excluded parameters' names (indices for unnamed ones).
        Allowed until the first step, as Keras allows it until the optimizer
        is built.
        """
        owner = f"{type(self).__name__}.exclude_from_weight_decay"
        excluded = self._tree.matching(owner, var_list, var_names)
        with self._lock:
            if self._iterations:
                raise ValueError(f"{owner}: can only be configured before the first step "
                                 "(as in Keras, before the optimizer is built)")
            self._excluded = excluded
            for group in self._tensor_groups:
                group.set_decays([i not in excluded for i in group.indices])

    def _exclude_config(self):
        if not self._excluded:
            return None
        names = self._tree.names
        return sorted(names[i] if names[i] is not None else i for i in self._excluded)

    @classmethod
    def from_config(cls, params, config):
        """A new optimizer over ``params`` from :meth:`get_config`'s output.

        With parameter groups, ``params`` is the list of group dicts; the
        config's per-group overrides replace those given there."""
        params, keywords = hyperparams.config_arguments(cls.__name__, params, config)
        return cls(params, **keywords)

    # -- the counters: calls (schedules) and iterations (updates) ----------------------
    @property
    def calls(self):
        """The number of ``step`` calls so far (an int >= 0; settable, checked).

        Learning-rate schedules see this count.  Without gradient
        accumulation it is :attr:`iterations`; with it, it counts the calls
        that only accumulate too (Keras's internal ``_iterations``)."""
        return self._iterations

    @calls.setter
    def calls(self, value):
        self._set_calls("calls", value, 1)

    @property
    def iterations(self):
        """The number of updates applied so far (an int >= 0; settable, checked).

        As Keras's ``optimizer.iterations``: :attr:`calls`, or under gradient
        accumulation ``calls // gradient_accumulation_steps``.  Adam's bias
        correction and the EMA see this count.  Setting ``iterations = n``
        under accumulation sets :attr:`calls` to
        ``n * gradient_accumulation_steps``, the start of an accumulation
        cycle (the gradient accumulators are left as they are)."""
        steps = self.gradient_accumulation_steps
        return self._iterations if steps is None else self._iterations // steps

    @iterations.setter
    def iterations(self, value):
        self._set_calls("iterations", value, self.gradient_accumulation_steps or 1)

    def _set_calls(self, name, value, calls_per_count):
        """Set the call counter to ``value * calls_per_count``, ``value``
        checked to be an int >= 0 (``name``: the attribute being set)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise TypeError(f"{type(self).__name__}: {name} must be an int >= 0, got "
                            f"{value!r}")
        with self._lock:
            self._iterations = int(value) * calls_per_count

    def _set_clipping(self, name, value):
        clips = {"clipnorm": self.clipnorm, "clipvalue": self.clipvalue,
                 "global_clipnorm": self.global_clipnorm, name: value}
        checked = hyperparams.check_clipping(type(self).__name__, clips["clipnorm"],
                                             clips["clipvalue"], clips["global_clipnorm"])
        with self._lock:
            self._clipnorm, self._clipvalue, self._global_clipnorm = checked

    clipnorm = property(lambda self: self._clipnorm,
                        lambda self, v: self._set_clipping("clipnorm", v),
                        doc="Per-tensor clipping norm, or None (settable, checked).")
    clipvalue = property(lambda self: self._clipvalue,
                         lambda self, v: self._set_clipping("clipvalue", v),
                         doc="Elementwise clipping bound, or None (settable, checked).")
    global_clipnorm = property(lambda self: self._global_clipnorm,
                               lambda self, v: self._set_clipping("global_clipnorm", v),
                               doc="Global clipping norm, or None (settable, checked).")

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items()
                          if k != "class_name" and v is not None and v is not False)
        return f"{type(self).__name__}({hyper})"
