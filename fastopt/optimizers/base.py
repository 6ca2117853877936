"""The optimizer base class: validation, state, clipping, dispatch.

An optimizer object owns the state (slots) of its parameters and, each
``step``, computes the per-step scalars on the host in float64 (scheduled
learning rate, bias corrections, clip factors, weight-decay factor) and hands
every same-dtype group of tensors to one fused kernel call of its backend.
Kernels only do arithmetic; everything that can go wrong is checked here,
before any array is touched.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .. import reference, schedules
from .._rules import RULES
from .._validation import real, unknown_keywords
from ..backends import BACKEND_NAMES, resolve_backend
from ..backends._contract import FLOAT_DTYPES

__all__ = ["Optimizer"]

CONVENTIONS = ("keras",)
_COMMON = ("learning_rate", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm")


class _Group:
    """Tensors of one dtype, their slots in flat buffers, and their plan."""

    def __init__(self, indices, arrays, rule, slot_init, backend):
        self.indices = indices
        self.dtype = arrays[0].dtype
        sizes = [a.size for a in arrays]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        flat_slots = {name: np.full(offsets[-1], slot_init.get(name, 0.0), dtype=self.dtype)
                      for name in rule.slots}
        # per tensor, per slot: a view of the flat buffer in the tensor's shape
        self.slot_views = {name: [buf[offsets[k]:offsets[k + 1]].reshape(a.shape)
                                  for k, a in enumerate(arrays)]
                           for name, buf in flat_slots.items()}
        flat = [a.reshape(-1) for a in arrays]
        slots_1d = [[v.reshape(-1) for v in self.slot_views[name]] for name in rule.slots]
        self.backend = resolve_backend(backend, self.dtype, offsets[-1])
        self.plan = self.backend.Plan(rule, flat, slots_1d)
        self.pt = np.ones((2, len(arrays)))  # rows: gradient scale, weight-decay factor
        self.last_pt = (1.0, 1.0)


class Optimizer:
    """Base class of fastopt's optimizers.

    Subclasses declare their Keras defaults in ``_DEFAULTS``, check their own
    hyperparameters in ``_check``, pick a kernel in ``_rule_name`` and compute
    the kernel's per-step scalars in ``_scalars``.

    Parameters
    ----------
    params : ndarray, list or tuple of ndarray, or dict of str to ndarray
        Parameters, updated in place.  float32 and float64 may be mixed; each
        must be C-contiguous and writeable.
    learning_rate : float or callable, optional
        A float >= 0, or a schedule: a callable of the iteration count (for
        example one of :mod:`fastopt.schedules`).  Assignable between steps.
    weight_decay : float, optional
        Decoupled weight decay: ``w <- w * (1 - weight_decay * lr)`` before
        each update (Keras semantics).
    clipnorm, clipvalue, global_clipnorm : float, optional
        Gradient clipping, at most one: per-tensor norm, elementwise value, or
        the norm of all gradients together (Keras semantics).
    backend : str
        ``"auto"`` (default), ``"numba"`` or ``"numpy"``; see
        :func:`fastopt.available_backends`.
    convention : str
        ``"keras"`` (default): Keras 3 formulas and defaults.
    """

    _DEFAULTS: dict = {}

    def __init__(self, params, *, hyper, learning_rate=None, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, backend="auto",
                 convention=None, **unknown):
        name = type(self).__name__
        if unknown:
            raise unknown_keywords(name, unknown, (*_COMMON, *hyper, "backend", "convention"))
        convention = "keras" if convention is None else convention
        if convention not in CONVENTIONS:
            raise ValueError(f"{name}: convention must be one of {CONVENTIONS}, got {convention!r}")
        if not isinstance(backend, str) or backend not in ("auto", *BACKEND_NAMES):
            raise ValueError(f"{name}: backend must be one of "
                             f"{('auto', *BACKEND_NAMES)}, got {backend!r}")
        defaults = self._DEFAULTS
        resolved = {k: defaults[k] if v is None else v for k, v in hyper.items()}
        self._hyper = self._check(resolved)
        self.convention = convention
        self._set_learning_rate(defaults["learning_rate"] if learning_rate is None
                                else learning_rate)
        self.weight_decay = real(name, "weight_decay", defaults.get("weight_decay")
                                 if weight_decay is None else weight_decay,
                                 low=0.0, allow_none=True)
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
        self._backend_name = backend

        self._names, arrays, self._kind = _parse_params(name, params)
        self._params = arrays
        self._labels = [f"[{i}]" if self._names is None else f"[{k!r}]"
                        for i, k in enumerate(self._names or range(len(arrays)))]
        self._shapes = [a.shape for a in arrays]
        self._dtypes = [a.dtype for a in arrays]
        self.iterations = 0
        self._build()

    # -- hooks for subclasses ---------------------------------------------------
    def _check(self, hyper):  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def _rule_name(self):  # pragma: no cover
        raise NotImplementedError

    def _scalars(self, lr, iteration):  # pragma: no cover
        raise NotImplementedError

    def _slot_init(self):
        """Initial value of each slot that does not start at zero."""
        return {}

    # -- construction -------------------------------------------------------------
    def _build(self):
        self._rule = RULES[self._rule_name()]
        by_dtype = {}
        for i, a in enumerate(self._params):
            by_dtype.setdefault(a.dtype, []).append(i)
        self._groups = [
            _Group(idx, [self._params[i] for i in idx], self._rule, self._slot_init(),
                   self._backend_name)
            for idx in by_dtype.values()
        ]

    # -- public attributes ------------------------------------------------------
    @property
    def learning_rate(self):
        """The learning rate: a float, or a schedule of the iteration count."""
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._set_learning_rate(value)

    def _set_learning_rate(self, value):
        if callable(value):
            self._learning_rate = value
        else:
            self._learning_rate = real(type(self).__name__, "learning_rate", value, low=0.0)

    @property
    def params(self):
        """The parameters, in the structure they were given."""
        if self._kind == "dict":
            return dict(zip(self._names, self._params))
        if self._kind == "array":
            return self._params[0]
        return list(self._params)

    @property
    def backends(self):
        """Backend name used for each dtype group, e.g. ``{"float32": "numba"}``."""
        return {g.dtype.name: g.backend.NAME for g in self._groups}

    @property
    def rule(self):
        """Name of the fused kernel this optimizer runs (e.g. ``"adam_amsgrad"``)."""
        return self._rule.name

    def current_learning_rate(self):
        """The learning rate the next step will use (schedules evaluated)."""
        lr = self._learning_rate
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
            Same structure as ``params`` (array, list/tuple, or dict with the
            same keys), each gradient of its parameter's shape and dtype.  A
            ``None`` gradient skips its parameter (its slots are untouched).
            Non-contiguous gradients are copied; nothing is ever cast.

        Raises
        ------
        TypeError, ValueError
            On any bad gradient or learning rate; then nothing has changed.
        """
        grads = self._match_grads(grads)
        lr = self.current_learning_rate()
        scalars = self._scalars(lr, self.iterations)
        keep = 1.0 if self.weight_decay is None else 1.0 - self.weight_decay * lr
        if len(self._groups) == 1:
            groups = [(self._groups[0], grads)]
        else:
            groups = [(g, [grads[i] for i in g.indices]) for g in self._groups]
        scales = self._clip_scales(groups)
        clipvalue = math.inf if self.clipvalue is None else self.clipvalue
        # Everything is validated; from here on only kernels run.
        for (group, gl), scale in zip(groups, scales):
            key = (scale, keep) if isinstance(scale, float) else None  # arrays: per tensor
            if key is None or key != group.last_pt:  # rewrite the rows only when they change
                group.pt[0] = scale
                group.pt[1] = keep
                group.last_pt = key
            if len(gl) > 1 and all(g is None for g in gl):
                continue
            group.plan.step(gl, group.pt, scalars, clipvalue)
        self.iterations += 1

    def _clip_scales(self, groups):
        if self.clipnorm is None and self.global_clipnorm is None:
            return [1.0] * len(groups)
        sumsq = [group.plan.sumsq(gl) for group, gl in groups]
        if self.global_clipnorm is not None:
            norm = math.sqrt(sum(float(np.sum(s)) for s in sumsq))
            return [reference.global_clip_scale(norm, self.global_clipnorm)] * len(groups)
        c = self.clipnorm
        with np.errstate(invalid="ignore"):
            return [c / np.maximum(np.sqrt(s), c) for s in sumsq]

    def _match_grads(self, grads):
        """Grads as a list aligned with the parameters, validated."""
        name = type(self).__name__
        n = len(self._params)
        if self._kind == "dict":
            if not isinstance(grads, Mapping):
                raise TypeError(f"{name}.step: params were given as a dict, so grads must be "
                                f"a dict with the same keys, got {type(grads).__name__}")
            missing = [k for k in self._names if k not in grads]
            extra = [k for k in grads if k not in set(self._names)]
            if missing or extra:
                raise ValueError(f"{name}.step: grads keys differ from params keys "
                                 f"(missing {missing}, unexpected {extra})")
            grads = [grads[k] for k in self._names]
        elif isinstance(grads, np.ndarray) and n == 1:
            grads = [grads]
        elif isinstance(grads, (list, tuple)):
            if len(grads) != n:
                raise ValueError(f"{name}.step: expected {n} gradient(s), one per parameter, "
                                 f"got {len(grads)}")
            grads = list(grads)
        else:
            raise TypeError(f"{name}.step: grads must be "
                            f"{'an array or ' if n == 1 else ''}a list or tuple of {n} "
                            f"arrays, got {type(grads).__name__}")
        ndarray = np.ndarray
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
        return grads

    def _check_grad(self, i, g):
        name, label = type(self).__name__, self._labels[i]
        if not isinstance(g, np.ndarray):
            raise TypeError(f"{name}.step: grads{label} must be a numpy.ndarray or None, "
                            f"got {type(g).__name__}")
        if g.dtype != self._dtypes[i]:
            raise TypeError(f"{name}.step: grads{label} has dtype {g.dtype} but "
                            f"params{label} has dtype {self._dtypes[i]}; fastopt never casts "
                            "silently, cast the gradient explicitly")
        if g.shape != self._shapes[i]:
            raise ValueError(f"{name}.step: grads{label} has shape {g.shape} but "
                             f"params{label} has shape {self._shapes[i]}")
        return np.ascontiguousarray(g)

    # -- configuration and state ------------------------------------------------------
    def get_config(self):
        """JSON-able configuration: class name, convention and hyperparameters."""
        lr = self._learning_rate
        if isinstance(lr, schedules.LearningRateSchedule):
            lr = schedules.serialize(lr)
        elif callable(lr):
            lr = {"class_name": "callable", "config": {"repr": repr(lr)}}
        return {"class_name": type(self).__name__, "convention": self.convention,
                "learning_rate": lr, **self._hyper, "weight_decay": self.weight_decay,
                "clipnorm": self.clipnorm, "clipvalue": self.clipvalue,
                "global_clipnorm": self.global_clipnorm, "backend": self._backend_name}

    @classmethod
    def from_config(cls, params, config):
        """A new optimizer over ``params`` from :meth:`get_config`'s output."""
        config = dict(config)
        class_name = config.pop("class_name", cls.__name__)
        if class_name != cls.__name__:
            raise ValueError(f"{cls.__name__}.from_config: the config is for {class_name}")
        config["learning_rate"] = _learning_rate_from_config(cls.__name__,
                                                             config.get("learning_rate"))
        return cls(params, **config)

    def _slot_key(self, slot, i):
        return f"{slot}/{i if self._names is None else self._names[i]}"

    def state_dict(self):
        """``{"config", "iterations", "slots": {"<slot>/<index or name>": array}}``.

        Slot arrays are copies in their parameter's shape and dtype.
        """
        slots = {}
        for group in self._groups:
            for slot, views in group.slot_views.items():
                for i, view in zip(group.indices, views):
                    slots[self._slot_key(slot, i)] = view.copy()
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
        lr = config.get("learning_rate")
        if isinstance(lr, Mapping) and lr.get("class_name") == "callable":
            if not callable(self._learning_rate):
                raise ValueError(f"{name}.load_state_dict: the state's learning rate was a "
                                 "custom callable; set the same callable on this optimizer "
                                 "before loading")
            config["learning_rate"] = self._learning_rate
        twin = type(self).from_config(self.params, {**config, "backend": self._backend_name})
        if twin._rule.name != self._rule.name:
            raise ValueError(f"{name}.load_state_dict: the state is for kernel "
                             f"{twin._rule.name!r} (other hyperparameters) but this "
                             f"optimizer runs {self._rule.name!r}")
        slots = state["slots"]
        expected = {self._slot_key(s, i): (s, i) for s in self._rule.slots
                    for i in range(len(self._params))}
        if set(slots) != set(expected):
            raise ValueError(f"{name}.load_state_dict: slots differ; missing "
                             f"{sorted(set(expected) - set(slots))}, unexpected "
                             f"{sorted(set(slots) - set(expected))}")
        for key, (_, i) in expected.items():
            a = slots[key]
            if not isinstance(a, np.ndarray) or a.shape != self._shapes[i] \
                    or a.dtype != self._dtypes[i]:
                raise ValueError(
                    f"{name}.load_state_dict: slot {key!r} has "
                    f"shape {getattr(a, 'shape', None)} and dtype {getattr(a, 'dtype', None)}, "
                    f"expected {self._shapes[i]} and {self._dtypes[i]}")
        # all checked: apply
        self._hyper = twin._hyper
        self._learning_rate = twin._learning_rate
        self.weight_decay = twin.weight_decay
        self.clipnorm, self.clipvalue = twin.clipnorm, twin.clipvalue
        self.global_clipnorm = twin.global_clipnorm
        self.iterations = int(iterations)
        for group in self._groups:
            for slot, views in group.slot_views.items():
                for i, view in zip(group.indices, views):
                    view[...] = slots[self._slot_key(slot, i)]

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items()
                          if k != "class_name" and v is not None)
        return f"{type(self).__name__}({hyper})"


def _learning_rate_from_config(owner, lr):
    if isinstance(lr, Mapping):
        if lr.get("class_name") == "callable":
            raise ValueError(f"{owner}.from_config: the learning rate was a custom callable, "
                             "which a config cannot hold; pass learning_rate yourself")
        return schedules.deserialize(lr)
    return lr


def _parse_params(owner, params):
    """``(names or None, [arrays], kind)`` after checking every parameter."""
    if isinstance(params, np.ndarray):
        names, arrays, kind = None, [params], "array"
    elif isinstance(params, Mapping):
        names, arrays, kind = list(params), list(params.values()), "dict"
        for k in names:
            if not isinstance(k, str):
                raise TypeError(f"{owner}: parameter names must be strings, got {k!r}")
    elif isinstance(params, (list, tuple)):
        names, arrays, kind = None, list(params), "list"
    else:
        raise TypeError(f"{owner}: params must be an array, a list or tuple of arrays, or a "
                        f"dict of arrays, got {type(params).__name__}")
    if not arrays:
        raise ValueError(f"{owner}: params is empty")
    for i, a in enumerate(arrays):
        label = f"params[{i if names is None else repr(names[i])}]"
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{owner}: {label} must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{owner}: {label} has dtype {a.dtype}; fastopt supports float32 "
                            "and float64 parameters")
        if not a.flags.c_contiguous:
            raise ValueError(f"{owner}: {label} with shape {a.shape} is not C-contiguous; "
                             "parameters are updated in place, so they must be contiguous")
        if not a.flags.writeable:
            raise ValueError(f"{owner}: {label} is read-only; parameters are updated in place")
    _check_no_overlap(owner, arrays, names)
    return names, arrays, kind


def _check_no_overlap(owner, arrays, names):
    spans = sorted((a.ctypes.data, a.ctypes.data + a.nbytes, i)
                   for i, a in enumerate(arrays) if a.nbytes)
    for (_, e0, i), (s1, _, j) in zip(spans, spans[1:]):
        if s1 < e0:
            li, lj = (f"{i}", f"{j}") if names is None else (repr(names[i]), repr(names[j]))
            raise ValueError(f"{owner}: params[{li}] and params[{lj}] share memory; each "
                             "parameter must be updated exactly once")
