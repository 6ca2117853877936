"""Hyperparameters: their checks, and the ``get_config``/``from_config``
round trip of the values that are not plain numbers (learning-rate
schedules and custom callables).

Every check names the optimizer (``owner``), the argument and the value; an
optimizer runs them all in its constructor, before it builds anything.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from . import schedules
from ._validation import boolean, real, unknown_keywords
from .backends import BACKEND_NAMES, STATE_DTYPES, resolve_state_backend, state_backends

__all__ = ["CONVENTIONS", "FRAMEWORKS", "COMMON_OPTIONS", "check_arguments", "check_group_hyperparams",
           "check_group_keys", "check_placement", "convention_for", "own_conventions",
           "check_clipping", "checked_lr", "scheduled_lr", "lr_config",
           "learning_rate_from_config", "config_arguments", "with_current_callables",
           "state_options", "check_state_rules", "count"]

CONVENTIONS = ("keras", "torch")
#: the options every optimizer takes besides its own hyperparameters
COMMON_OPTIONS = ("learning_rate", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm",
                  "use_ema", "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
                  "gradient_accumulation_steps", "exclude_from_weight_decay", "maximize")
#: the hyperparameters every parameter group has besides the optimizer's own
_GROUP_COMMON = ("learning_rate", "weight_decay", "maximize")


#: the framework each convention follows (for error messages)
FRAMEWORKS = {"keras": "Keras 3.15", "torch": "PyTorch 2.13"}


def check_arguments(owner, unknown, hyper, torch_only, convention, backend, torch_names=None,
                    conventions=CONVENTIONS):
    """Check what decides how the rest is read; return the convention.

    ``conventions`` are the ones the optimizer offers, its default first (an
    optimizer that exists in one framework only offers that one).  Raises for
    unknown keywords (with a hint where ``torch_names``, PyTorch's argument
    names mapped to fastopt's, knows the spelling), an unknown or unoffered
    convention or backend, and a PyTorch-only option given under the Keras
    convention."""
    if unknown:
        raise unknown_keywords(owner, unknown, (*COMMON_OPTIONS, *hyper, "backend",
                                                "convention", "state_dtype", "state_rounding"),
                               torch_names)
    convention = conventions[0] if convention is None else convention
    if convention not in CONVENTIONS:
        allowed = f"one of {conventions}" if len(conventions) > 1 else repr(conventions[0])
        raise ValueError(f"{owner}: convention must be {allowed}, got {convention!r}")
    if convention not in conventions:
        only = " and ".join(FRAMEWORKS[c] for c in conventions)
        raise ValueError(f"{owner}: convention={convention!r} is not offered: {owner} exists in "
                         f"{only} only ({FRAMEWORKS[convention]} has no {owner}); use "
                         f"convention={conventions[0]!r} or leave it out")
    if convention == "keras":
        given = [k for k in torch_only if hyper.get(k) is not None]
        if given:
            raise ValueError(f"{owner}: {', '.join(given)} is a PyTorch option; pass "
                             "convention='torch' to use it")
    if not isinstance(backend, str) or backend not in ("auto", *BACKEND_NAMES):
        raise ValueError(f"{owner}: backend must be one of "
                         f"{('auto', *BACKEND_NAMES)}, got {backend!r}")
    return convention


def convention_for(cls, convention):
    """The convention a tool that builds several optimizers under one
    ``convention`` (``fastopt bench``, ``fastopt compare``) builds ``cls``
    under: that one where the class offers it, else the class's own (a class
    that exists in one framework only, such as RAdam, has that one alone)."""
    offered = cls._CONVENTIONS
    return convention if convention is None or convention in offered else offered[0]


def own_conventions(classes):
    """``"ftrl, lion: keras; radam, rprop: torch"`` for a ``{name: class}``
    mapping: the names whose class exists in one framework only, by that
    framework (help texts and reports of tools that take a ``convention``)."""
    by = {}
    for name, cls in classes.items():
        if len(cls._CONVENTIONS) == 1:
            by.setdefault(cls._CONVENTIONS[0], []).append(name)
    return "; ".join(f"{', '.join(sorted(names))}: {c}" for c, names in sorted(by.items()))


def check_group_hyperparams(owner, check_own, hyperparams):
    """A parameter group's hyperparameters, checked: the optimizer's own by
    ``check_own`` (its ``_check`` hook), then learning rate, weight decay and
    maximize."""
    out = dict(check_own({k: v for k, v in hyperparams.items() if k not in _GROUP_COMMON},
                         owner))
    out["learning_rate"] = checked_lr(owner, hyperparams["learning_rate"])
    out["weight_decay"] = real(owner, "weight_decay", hyperparams["weight_decay"], low=0.0,
                               allow_none=True)
    out["maximize"] = boolean(owner, "maximize", hyperparams["maximize"])
    return out


def check_group_keys(owner, g, overrides, hyper):
    """ValueError if parameter group ``g`` sets a key no group may set."""
    bad = [k for k in overrides if k not in (*_GROUP_COMMON, *hyper)]
    if bad:
        raise ValueError(f"{owner}: param group {g} has unknown key(s) {bad}; "
                         f"valid: 'params', 'learning_rate', 'weight_decay', "
                         f"'maximize', {', '.join(map(repr, hyper))}")


def check_clipping(owner, clipnorm, clipvalue, global_clipnorm):
    """``(clipnorm, clipvalue, global_clipnorm)`` checked: at most one set, each > 0."""
    clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
    given = [k for k, v in clips.items() if v is not None]
    if len(given) > 1:
        raise ValueError(f"{owner}: at most one of clipnorm, clipvalue and "
                         f"global_clipnorm may be set, got {' and '.join(given)}")
    return tuple(real(owner, k, v, low=0.0, low_open=True, allow_none=True)
                 for k, v in clips.items())


def checked_lr(owner, value):
    """A learning rate: a callable (a schedule) as is, else a float >= 0."""
    if callable(value):
        return value
    return real(owner, "learning_rate", value, low=0.0)


def scheduled_lr(owner, lr, iteration):
    """The learning rate at ``iteration``: ``lr`` itself, or a schedule's
    value, checked to be a finite float >= 0."""
    if not callable(lr):
        return lr
    value = lr(iteration)
    try:
        if isinstance(value, (str, bytes, bool)):  # float() would accept "0.1"
            raise TypeError
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: the learning-rate schedule returned "
                        f"{value!r} at iteration {iteration}; expected a float") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner}: the learning-rate schedule returned "
                         f"{value!r} at iteration {iteration}; expected a finite value >= 0")
    return value


def lr_config(lr):
    """A learning rate as a config holds it: a float, a serialised
    :mod:`fastopt.schedules` schedule, or a marker for a custom callable."""
    if isinstance(lr, schedules.LearningRateSchedule):
        return schedules.serialize(lr)
    if callable(lr):
        return {"class_name": "callable", "config": {"repr": repr(lr)}}
    return lr


def learning_rate_from_config(owner, lr):
    """The inverse of :func:`lr_config`; a custom callable cannot come back."""
    if isinstance(lr, Mapping):
        if lr.get("class_name") == "callable":
            raise ValueError(f"{owner}.from_config: the learning rate was a custom callable, "
                             "which a config cannot hold; pass learning_rate yourself")
        return schedules.deserialize(lr)
    return lr


def config_arguments(owner, params, config):
    """``(params, keywords)`` that rebuild the optimizer ``config`` describes
    (``get_config``'s output, class name checked) over ``params``."""
    config = dict(config)
    class_name = config.pop("class_name", owner)
    if class_name != owner:
        raise ValueError(f"{owner}.from_config: the config is for {class_name}")
    config["learning_rate"] = learning_rate_from_config(owner, config.get("learning_rate"))
    groups = config.pop("param_groups", None)
    if groups is not None:
        if not (isinstance(params, (list, tuple)) and len(params) == len(groups)
                and all(isinstance(p, Mapping) and "params" in p for p in params)):
            raise ValueError(f"{owner}.from_config: the config has "
                             f"{len(groups)} parameter groups; pass params as a list "
                             f"of {len(groups)} dicts with a 'params' key")
        params = [{"params": p["params"], **{
            k: learning_rate_from_config(owner, v) if k == "learning_rate" else v
            for k, v in g.items()}} for p, g in zip(params, groups)]
    return params, config


def with_current_callables(owner, config, learning_rate, group_learning_rates):
    """A saved ``config`` whose custom-callable learning rates (which a config
    cannot hold) are replaced by the ones the loading optimizer has now;
    ValueError where it has none.  ``group_learning_rates`` is None without
    parameter groups."""
    def current(lr, now):
        if isinstance(lr, Mapping) and lr.get("class_name") == "callable":
            if not callable(now):
                raise ValueError(f"{owner}.load_state_dict: the state's learning rate was a "
                                 "custom callable; set the same callable on this optimizer "
                                 "before loading")
            return now
        return lr

    config = dict(config)
    config["learning_rate"] = current(config.get("learning_rate"), learning_rate)
    if "param_groups" in config:
        if group_learning_rates is None or \
                len(config["param_groups"]) != len(group_learning_rates):
            mine = "none" if group_learning_rates is None else len(group_learning_rates)
            raise ValueError(f"{owner}.load_state_dict: the state has "
                             f"{len(config['param_groups'])} parameter groups, this "
                             f"optimizer {mine}")
        config["param_groups"] = [
            {**g, **({"learning_rate": current(g["learning_rate"], now)}
                     if "learning_rate" in g else {})}
            for g, now in zip(config["param_groups"], group_learning_rates)]
    return config


def state_options(owner, state_dtype, rounding, backend):
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


def check_placement(owner, backend, tree, state_dtype):
    """Device parameters (``tree``, a :class:`fastopt.params.ParamTree`) go
    with the cuda backend only, and full-precision state or a reduced
    ``state_dtype`` the cuda backend keeps (``"int8"``); a reduced
    ``state_dtype`` needs float32 parameters."""
    if tree.device and backend not in ("auto", "cuda"):
        raise ValueError(f"{owner}: the params are CUDA device arrays, which backend "
                         f"{backend!r} cannot update; use backend='cuda' or 'auto'")
    if backend == "cuda" and not tree.device:
        raise ValueError(f"{owner}: backend 'cuda' updates CUDA device arrays, but the "
                         "params are host NumPy arrays; pass device arrays (a Numba device "
                         "array, a CuPy array or a PyTorch CUDA tensor)")
    if tree.device and state_dtype is not None and "cuda" not in state_backends(state_dtype):
        host = [b for b in state_backends(state_dtype) if b != "cuda"]
        on_device = [d for d in STATE_DTYPES if "cuda" in state_backends(d)]
        raise ValueError(f"{owner}: state_dtype={state_dtype!r} is offered by the "
                         f"{' and '.join(host)} backend{'s' if len(host) > 1 else ''} only, "
                         "for host float32 parameters; the params are CUDA device arrays "
                         f"(leave state_dtype=None, or use one of {tuple(on_device)})")
    if state_dtype is not None:
        for label, dtype in zip(tree.labels, tree.dtypes):
            if dtype.name != "float32":
                raise ValueError(f"{owner}: state_dtype={state_dtype!r} needs float32 "
                                 f"parameters (the kernels compute in float32); "
                                 f"params{label} is {dtype}")


def check_state_rules(owner, param_groups, backend, state_dtype):
    """ValueError if a group's kernel cannot keep its state in ``state_dtype``
    (a kernel without state is fine: the option does nothing to it)."""
    refusal = resolve_state_backend(backend, state_dtype)[1].refusal
    for g, pg in enumerate(param_groups):
        why = pg.rule.slots and refusal(pg.rule)
        if why:
            where = f" (param group {g})" if len(param_groups) > 1 else ""
            raise ValueError(f"{owner}{where}: state_dtype={state_dtype!r} is not offered for "
                             f"the {pg.rule.name!r} kernel: {why}")


def count(owner, name, value, low):
    """An optional integer option (None stays None), checked to be >= ``low``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{owner}: {name} must be >= {low}, got {value!r}")
    return int(value)
