"""Record golden optimizer trajectories from the real PyTorch and Keras.

Run it in an environment that has the frameworks (fastopt does not need
them, and this script installs nothing)::

    python3 -m venv /tmp/golden-venv
    /tmp/golden-venv/bin/pip install torch==2.13.0 keras==3.15.1 numpy
    KERAS_BACKEND=torch /tmp/golden-venv/bin/python tools/make_golden.py [NAME ...]

For every configuration in ``CONFIGS`` it feeds one fixed, pre-generated
gradient sequence (not a function of the parameters) to the framework's
optimizer in float64 and writes ``tests/golden/<name>.npz`` (initial
parameters, gradients, parameters after every step, final optimizer state)
and ``tests/golden/<name>.json`` (versions, the exact constructor call, how
to build the same optimizer in fastopt, the tolerance and the float32
roundings found inside Keras).  ``tests/golden/README.md`` describes both.
The slot names come from this checkout's registry (``fastopt.rule.RULES``,
imported by path; its NumPy backend is enough): Keras's variable suffixes,
and torch's ``state`` keys through each rule's ``torch_state``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import zlib
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # after KERAS_BACKEND is set
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import fastopt  # noqa: E402 - this checkout's, for the slot names of its registry
from fastopt.rule import RULES, get_rule  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "golden"
STEPS = 60
SHAPES = [(3, 4), (5,), (2,)]
# Adafactor factors the last two dimensions: a wide and a tall matrix, a 3-D
# tensor, and vectors (tensor 1, a vector, is the one zeroed alone)
FACTORED_SHAPES = [(3, 4), (5,), (6, 2), (2, 3, 4), (2,)]
NAMES = ["kernel", "bias", "scale"]      # tensor names for the dict-params configs
DEFAULT_TOLERANCE = 1e-9
ZERO_STEPS = (3, 20)                     # every gradient exactly zero
BIG_STEPS = (5, 33)                      # gradients scaled by 1e3
SMALL_STEPS = (7, 41)                    # gradients scaled by 1e-4
ZERO_TENSOR_STEP = 11                    # tensor 1 alone all zeros
# schedule-free AdamW: a tall and a wide matrix, two vectors; the calls after
# a step (train() is called before every step, as the package requires)
SF_SHAPES = [(5, 3), (2, 6), (4,), (1,)]
SF_EVENTS = {9: ("eval", "eval"), 24: ("eval",), 39: ("eval", "train", "eval"),
             STEPS - 1: ("eval",)}
SF_HOST = ("lr_max", "weight_sum", "train_mode")
LATE_STEPS = 3                           # keras_cfg(late=...): zero gradients until then
# tall and wide matrices, vectors (Lamb's per-tensor norms)
MATRIX_SHAPES = [(7, 3), (2, 9), (5,), (4,), (3,)]

# Keras optimizer-variable suffixes: every rule's slot names (Keras's, which
# fastopt uses), and Keras's EMA and accumulation variables
KERAS_SLOTS = (*dict.fromkeys(s for rule in RULES.values() for s in rule.slots),
               "gradient_accumulator", "average")
# torch state that is a scalar per parameter (host-side state in fastopt,
# :attr:`fastopt.rule.Rule.host_state`): recorded as ``host_<name>_<k>``
TORCH_HOST = ("mu_product", "eta", "mu")
# Keras optimizer-wide scalar variables (host-side state in fastopt): recorded
# as ``host_<name>`` from the optimizer attribute ``_<name>``
KERAS_HOST = ("u_product",)
# torch keyword -> fastopt keyword (betas is split into beta_1, beta_2)
# torch state names -> fastopt slot names
TORCH_SLOTS = {"exp_avg": "momentum", "exp_avg_sq": "velocity",
               "max_exp_avg_sq": "velocity_hat", "momentum_buffer": "momentum",
               "sum": "accumulator", "square_avg": "velocity",
               "grad_avg": "average_gradient", "exp_inf": "norm", "prev": "prev",
               "step_size": "step_size"}
# torch keyword -> fastopt keyword; torch's pairs -> two fastopt keywords each
TORCH_TO_FASTOPT = {"lr": "learning_rate", "eps": "epsilon", "alpha": "rho"}
# torch.optim.Adafactor's keywords -> fastopt's (eps is its (eps1, eps2) pair)
ADAFACTOR_TORCH = {"lr": "learning_rate", "beta2_decay": "beta_2_decay",
                   "eps": ("epsilon_1", "epsilon_2"), "d": "clip_threshold"}
TORCH_PAIRS = {"betas": ("beta_1", "beta_2"), "etas": ("eta_minus", "eta_plus"),
               "step_sizes": ("step_size_min", "step_size_max")}


# ---------------------------------------------------------------------------
# The configurations

def torch_cfg(name, cls, clip=None, groups=None, fastopt_class=None, shapes=SHAPES, **kw):
    """A torch.optim configuration; ``kw`` are the constructor's keywords.

    ``clip`` is ``("global_clipnorm", max_norm)`` (``clip_grad_norm_``) or
    ``("clipvalue", clip_value)`` (``clip_grad_value_``), called before each
    ``opt.step()``; ``groups`` lists parameter groups as ``{"tensors": [...],
    <per-group keywords>}``.
    """
    return {"name": name, "framework": "torch", "cls": cls, "kw": kw, "clip": clip,
            "groups": groups, "fastopt_class": fastopt_class or cls, "shapes": shapes}


def keras_cfg(name, cls, *, params="list", exclude=None, floatx="float64",
              steps=STEPS, grad_scale=1.0, shapes=None, zero_init=(), late=(), **kw):
    """A keras.optimizers configuration; ``kw`` are the constructor's keywords.

    ``exclude`` is ``("var_list", [indices])`` or ``("var_names", [names])``
    for ``opt.exclude_from_weight_decay``; ``grad_scale`` multiplies the
    stored gradients (for ``loss_scale_factor``, whose gradients come scaled).
    ``shapes``: the tensors' shapes (default :data:`SHAPES`); ``zero_init``:
    the indices of tensors that start at exactly zero; ``late``: the indices
    of tensors whose gradients are all zero on the first :data:`LATE_STEPS`
    steps (Lamb: a zero update norm).
    """
    return {"name": name, "framework": "keras", "cls": cls, "kw": kw, "params": params,
            "exclude": exclude, "floatx": floatx, "steps": steps, "grad_scale": grad_scale,
            "shapes": shapes or SHAPES, "zero_init": zero_init, "late": late}


def sfree_cfg(name, groups=None, **kw):
    """A ``schedulefree.AdamWScheduleFree`` configuration (the authors' package);
    ``kw`` are the constructor's keywords, ``groups`` as in :func:`torch_cfg`.
    ``train()`` is called before every step and the :data:`SF_EVENTS` after
    some of them."""
    return {"name": name, "framework": "schedulefree", "cls": "AdamWScheduleFree", "kw": kw,
            "groups": groups}


def keras_sfree_cfg(name, keras_kw, package_kw):
    """Keras's ScheduleFreeAdamW (``keras_kw``) and the package (``package_kw``,
    no mode switches: Keras has none) on the same gradients."""
    return {"name": name, "framework": "keras", "cls": "ScheduleFreeAdamW", "kw": keras_kw,
            "package_kw": package_kw, "difference": True}


def schedule(cls, **config):
    """A learning-rate schedule, the same in Keras and in fastopt.schedules."""
    return ("schedule", cls, config)


CONFIGS = [
    # --- torch.optim, convention="torch" -----------------------------------------
    torch_cfg("torch_sgd", "SGD", lr=0.05),
    torch_cfg("torch_sgd_momentum", "SGD", lr=0.05, momentum=0.9),
    torch_cfg("torch_sgd_nesterov", "SGD", lr=0.05, momentum=0.9, nesterov=True),
    torch_cfg("torch_sgd_dampening", "SGD", lr=0.05, momentum=0.9, dampening=0.3),
    torch_cfg("torch_sgd_maximize_weight_decay", "SGD", lr=0.05, momentum=0.5,
              weight_decay=0.01, maximize=True),
    torch_cfg("torch_adagrad", "Adagrad", lr=0.1),
    torch_cfg("torch_adagrad_lr_decay_weight_decay_init", "Adagrad", lr=0.1, lr_decay=0.01,
              weight_decay=0.02, initial_accumulator_value=0.1, eps=1e-8),
    torch_cfg("torch_rmsprop", "RMSprop", lr=0.01),
    torch_cfg("torch_rmsprop_momentum", "RMSprop", lr=0.01, alpha=0.9, momentum=0.9),
    torch_cfg("torch_rmsprop_centered", "RMSprop", lr=0.01, centered=True),
    torch_cfg("torch_rmsprop_centered_momentum", "RMSprop", lr=0.01, alpha=0.95,
              momentum=0.5, centered=True, eps=1e-6),
    torch_cfg("torch_rmsprop_weight_decay_maximize", "RMSprop", lr=0.01, weight_decay=0.05,
              maximize=True),
    torch_cfg("torch_adam", "Adam", lr=0.01),
    torch_cfg("torch_adam_amsgrad_weight_decay", "Adam", lr=0.01, betas=(0.8, 0.99),
              weight_decay=0.01, amsgrad=True),
    torch_cfg("torch_adam_maximize", "Adam", lr=0.01, eps=1e-6, maximize=True),
    torch_cfg("torch_adamw", "AdamW", lr=0.01, weight_decay=0.1),
    torch_cfg("torch_adamw_amsgrad", "AdamW", lr=0.01, amsgrad=True),
    torch_cfg("torch_adam_groups", "Adam", amsgrad=True, groups=[
        {"tensors": [0, 1], "lr": 0.01, "weight_decay": 0.0},
        {"tensors": [2], "lr": 0.05, "weight_decay": 0.1}]),
    torch_cfg("torch_sgd_clip_grad_norm", "SGD", lr=0.05, momentum=0.9,
              clip=("global_clipnorm", 3.0)),
    torch_cfg("torch_adam_clip_grad_value", "Adam", lr=0.01, clip=("clipvalue", 0.5)),
    torch_cfg("torch_adamax", "Adamax", lr=0.01),
    torch_cfg("torch_adamax_weight_decay", "Adamax", lr=0.01, betas=(0.8, 0.99),
              weight_decay=0.01, eps=1e-6),
    torch_cfg("torch_adadelta", "Adadelta", lr=1.0),
    torch_cfg("torch_adadelta_weight_decay_maximize", "Adadelta", lr=0.5, rho=0.95, eps=1e-5,
              weight_decay=0.05, maximize=True),
    torch_cfg("torch_nadam", "NAdam", lr=0.01),
    torch_cfg("torch_nadam_l2_maximize", "NAdam", lr=0.01, betas=(0.8, 0.99), eps=1e-6,
              weight_decay=0.05, momentum_decay=0.01, maximize=True),
    torch_cfg("torch_nadamw", "NAdam", lr=0.01, weight_decay=0.1,
              decoupled_weight_decay=True),
    torch_cfg("torch_asgd", "ASGD", lr=0.05),
    torch_cfg("torch_asgd_averaging", "ASGD", lr=0.05, lambd=0.01, alpha=0.5, t0=10),
    torch_cfg("torch_asgd_l2_maximize", "ASGD", lr=0.05, t0=25, weight_decay=0.05,
              maximize=True),
    torch_cfg("torch_radam", "RAdam", lr=0.01),
    torch_cfg("torch_radam_weight_decay", "RAdam", lr=0.01, betas=(0.8, 0.99),
              weight_decay=0.02, eps=1e-6),
    torch_cfg("torch_radam_decoupled_weight_decay_maximize", "RAdam", lr=0.01, betas=(0.9, 0.95),
              weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
    torch_cfg("torch_rprop", "Rprop", lr=0.01),
    torch_cfg("torch_rprop_etas_step_sizes", "Rprop", lr=0.05, etas=(0.3, 1.5),
              step_sizes=(1e-3, 0.2)),
    torch_cfg("torch_rprop_maximize", "Rprop", lr=0.001, maximize=True),
    torch_cfg("torch_adafactor", "Adafactor", shapes=FACTORED_SHAPES),
    torch_cfg("torch_adafactor_options", "Adafactor", shapes=FACTORED_SHAPES, lr=0.05,
              beta2_decay=-0.6, eps=(1e-12, 1e-2), d=1.5, weight_decay=0.1, maximize=True),
    # --- keras.optimizers, convention="keras" --------------------------------------
    keras_cfg("keras_sgd", "SGD", learning_rate=0.05),
    keras_cfg("keras_sgd_momentum", "SGD", learning_rate=0.05, momentum=0.9),
    keras_cfg("keras_sgd_nesterov", "SGD", learning_rate=0.05, momentum=0.9, nesterov=True),
    keras_cfg("keras_adagrad", "Adagrad", learning_rate=0.1),
    keras_cfg("keras_rmsprop", "RMSprop", learning_rate=0.01),
    keras_cfg("keras_rmsprop_momentum", "RMSprop", learning_rate=0.01, momentum=0.9),
    keras_cfg("keras_rmsprop_centered", "RMSprop", learning_rate=0.01, centered=True),
    keras_cfg("keras_rmsprop_centered_momentum", "RMSprop", learning_rate=0.01, rho=0.95,
              momentum=0.5, centered=True),
    keras_cfg("keras_adam", "Adam", learning_rate=0.01),
    keras_cfg("keras_adam_amsgrad", "Adam", learning_rate=0.01, beta_1=0.8, beta_2=0.99,
              amsgrad=True),
    keras_cfg("keras_adamw", "AdamW", learning_rate=0.01, weight_decay=0.1),
    keras_cfg("keras_nadam", "Nadam", learning_rate=0.01),
    keras_cfg("keras_nadam_weight_decay", "Nadam", learning_rate=0.01, beta_1=0.8,
              beta_2=0.99, epsilon=1e-6, weight_decay=0.1),
    keras_cfg("keras_nadam_accumulation", "Nadam", learning_rate=0.01,
              gradient_accumulation_steps=3, steps=62),
    keras_cfg("keras_adamax", "Adamax", learning_rate=0.01),
    keras_cfg("keras_adamax_weight_decay", "Adamax", learning_rate=0.01, beta_1=0.8,
              beta_2=0.99, weight_decay=0.1),
    keras_cfg("keras_adadelta", "Adadelta", learning_rate=1.0),
    keras_cfg("keras_adadelta_weight_decay", "Adadelta", learning_rate=0.5, rho=0.9,
              epsilon=1e-6, weight_decay=0.1),
    keras_cfg("keras_lion", "Lion", learning_rate=0.01),
    keras_cfg("keras_lion_weight_decay", "Lion", learning_rate=0.01, beta_1=0.8, beta_2=0.95,
              weight_decay=0.5),
    keras_cfg("keras_lamb", "Lamb", learning_rate=0.01, shapes=MATRIX_SHAPES, zero_init=(3,),
              late=(2, 3)),
    keras_cfg("keras_lamb_weight_decay", "Lamb", learning_rate=0.02, beta_1=0.8, beta_2=0.99,
              epsilon=1e-6, weight_decay=0.1, shapes=MATRIX_SHAPES, zero_init=(3,),
              late=(2, 3), steps=64),
    keras_cfg("keras_sgd_momentum_weight_decay", "SGD", learning_rate=0.05, momentum=0.9,
              weight_decay=0.2),
    keras_cfg("keras_rmsprop_weight_decay", "RMSprop", learning_rate=0.01, weight_decay=0.3),
    keras_cfg("keras_adam_clipnorm", "Adam", learning_rate=0.01, clipnorm=1.5),
    keras_cfg("keras_sgd_global_clipnorm", "SGD", learning_rate=0.05, momentum=0.9,
              global_clipnorm=3.0),
    keras_cfg("keras_sgd_clipvalue", "SGD", learning_rate=0.05, clipvalue=0.5),
    keras_cfg("keras_adam_ema_overwrite", "Adam", learning_rate=0.01, use_ema=True,
              ema_momentum=0.9, ema_overwrite_frequency=7),
    keras_cfg("keras_rmsprop_ema", "RMSprop", learning_rate=0.01, use_ema=True),
    keras_cfg("keras_adam_accumulation", "Adam", learning_rate=0.01,
              gradient_accumulation_steps=3, steps=62),
    keras_cfg("keras_sgd_ema_accumulation", "SGD", learning_rate=0.05, momentum=0.9,
              use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=4,
              gradient_accumulation_steps=2, steps=61),
    keras_cfg("keras_adam_loss_scale", "Adam", learning_rate=0.01, loss_scale_factor=100.0,
              grad_scale=100.0),
    keras_cfg("keras_adamw_exclude_index", "AdamW", learning_rate=0.01, weight_decay=0.1,
              exclude=("var_list", [1])),
    keras_cfg("keras_adamw_exclude_name", "AdamW", params="dict", learning_rate=0.01,
              weight_decay=0.1, exclude=("var_names", ["bias"])),
    keras_cfg("keras_adam_exponential_decay", "Adam", learning_rate=schedule(
        "ExponentialDecay", initial_learning_rate=0.02, decay_steps=10, decay_rate=0.7)),
    keras_cfg("keras_sgd_cosine_decay_warmup", "SGD", momentum=0.5, learning_rate=schedule(
        "CosineDecay", initial_learning_rate=0.01, decay_steps=40, alpha=0.1,
        warmup_target=0.05, warmup_steps=8)),
    keras_cfg("keras_adam_schedule_accumulation", "Adam", gradient_accumulation_steps=2,
              learning_rate=schedule("ExponentialDecay", initial_learning_rate=0.02,
                                     decay_steps=10, decay_rate=0.7)),
    keras_cfg("keras_ftrl", "Ftrl", learning_rate=0.05),
    keras_cfg("keras_ftrl_power_l1_l2_shrinkage_beta", "Ftrl", learning_rate=0.05,
              learning_rate_power=-0.3, initial_accumulator_value=0.5,
              l1_regularization_strength=0.05, l2_regularization_strength=0.02,
              l2_shrinkage_regularization_strength=0.03, beta=0.5),
    # L1 large enough that a fifth of the recorded parameters are exactly 0
    keras_cfg("keras_ftrl_l1_weight_decay", "Ftrl", learning_rate=0.05,
              l1_regularization_strength=100.0, weight_decay=0.1),
    keras_cfg("keras_ftrl_power_zero_zero_accumulator", "Ftrl", learning_rate=0.05,
              learning_rate_power=0.0, initial_accumulator_value=0.0,
              l1_regularization_strength=0.1),
    keras_cfg("keras_ftrl_zero_accumulator_beta", "Ftrl", learning_rate=0.05,
              initial_accumulator_value=0.0, beta=1.0, l2_regularization_strength=0.01),
    # Keras's default floatx: the learning-rate variable (and AdamW's decay
    # factor) are float32; the sidecar says how fastopt is given the same values.
    keras_cfg("keras_adam_floatx32", "Adam", floatx="float32", learning_rate=0.01),
    keras_cfg("keras_adamw_floatx32", "AdamW", floatx="float32", learning_rate=0.01,
              weight_decay=0.1),
    keras_cfg("keras_adafactor", "Adafactor", shapes=FACTORED_SHAPES, learning_rate=0.001),
    keras_cfg("keras_adafactor_options", "Adafactor", shapes=FACTORED_SHAPES,
              learning_rate=0.05, beta_2_decay=-0.5, epsilon_1=1e-20, epsilon_2=1e-2,
              clip_threshold=0.5, relative_step=False, weight_decay=0.1),
    keras_cfg("keras_ftrl_floatx32", "Ftrl", floatx="float32", learning_rate=0.05,
              l1_regularization_strength=0.5, l2_shrinkage_regularization_strength=0.25),
    # --- the schedulefree package (schedule-free AdamW), convention="torch" -------
    sfree_cfg("schedulefree_adamw", lr=0.01),
    sfree_cfg("schedulefree_adamw_warmup_weight_decay", lr=0.02, betas=(0.8, 0.99), eps=1e-6,
              weight_decay=0.1, warmup_steps=10, r=0.5, weight_lr_power=1.0),
    sfree_cfg("schedulefree_adamw_groups", groups=[
        {"tensors": [0, 1], "lr": 0.01},
        {"tensors": [2, 3], "lr": 0.03, "weight_decay": 0.05, "warmup_steps": 5}]),
    # --- Keras's ScheduleFreeAdamW against the package on the same gradients:
    # not replayed (fastopt does not copy it), the difference measured
    # (tests/golden/differences, tests/test_schedulefree.py)
    keras_sfree_cfg("keras_schedulefree_adamw", {"learning_rate": 0.01}, {"lr": 0.01}),
    keras_sfree_cfg("keras_schedulefree_adamw_warmup", {"learning_rate": 0.02, "warmup_steps": 10},
                    {"lr": 0.02, "warmup_steps": 10}),
]


# ---------------------------------------------------------------------------
# Gradients and initial parameters

def make_data(name, steps, grad_scale=1.0, shapes=SHAPES, zero_init=(), late=()):
    """Initial params and a fixed gradient sequence, seeded by the name.

    About 20% exact zeros; whole zero steps; steps scaled by 1e3 and 1e-4;
    tensor 1 alone zero on one step; element [0, 0] of tensor 0 stays ~1e-30.
    Tensors ``zero_init`` start at zero; tensors ``late`` have zero gradients
    on the first :data:`LATE_STEPS` steps.
    """
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    init = [rng.standard_normal(s) for s in shapes]
    for k in zero_init:
        init[k][...] = 0.0
    grads = [np.empty((steps, *s)) for s in shapes]
    for t in range(steps):
        for k, s in enumerate(shapes):
            g = rng.standard_normal(s)
            g[rng.random(s) < 0.2] = 0.0
            if t in ZERO_STEPS or (t == ZERO_TENSOR_STEP and k == 1) \
                    or (k in late and t < LATE_STEPS):
                g[...] = 0.0
            elif t in BIG_STEPS:
                g *= 1e3
            elif t in SMALL_STEPS:
                g *= 1e-4
            if k == 0 and t not in ZERO_STEPS:
                g[0, 0] = (1.0 + rng.random()) * 1e-30 * (1 if rng.random() < 0.5 else -1)
            grads[k][t] = g * grad_scale
    return init, grads


# ---------------------------------------------------------------------------
# Recorders

def _call(func, args, kw):
    parts = list(args) + [f"{k}={_source(v)}" for k, v in kw.items()]
    return f"{func}({', '.join(parts)})"


def _source(v):
    if isinstance(v, tuple) and v and v[0] == "schedule":
        return _call(f"keras.optimizers.schedules.{v[1]}", [], v[2])
    return repr(v)


def _fastopt_value(v):
    if isinstance(v, tuple) and v and v[0] == "schedule":
        return {"class_name": v[1], "config": dict(v[2])}
    return v


def torch_slot_names(spec):
    """torch ``state`` key -> fastopt slot name for the fastopt twin ``spec``
    describes, from the registry (``Rule.torch_state`` against ``Rule.slots``
    of the rule each parameter group runs)."""
    groups = spec.get("groups") or [{}]
    names = {}
    for g in groups:
        kwargs = {**spec["kwargs"], **{k: v for k, v in g.items() if k != "tensors"}}
        rule = get_rule(getattr(fastopt, spec["class"])(np.zeros(1), **kwargs).rule)
        names.update(zip(rule.torch_state, rule.slots))
    return names


def record_torch(cfg):
    init, grads = make_data(cfg["name"], STEPS, shapes=cfg["shapes"])
    params = [torch.tensor(a.copy(), dtype=torch.float64, requires_grad=True) for a in init]
    kw = {**cfg["kw"], "foreach": False}
    if cfg["cls"] in ("Adam", "AdamW"):
        kw["fused"] = False
    if cfg["groups"]:
        group_src = "[" + ", ".join(
            "{" + ", ".join([f"'params': [{', '.join(f'params[{i}]' for i in g['tensors'])}]"]
                            + [f"{k!r}: {v!r}" for k, v in g.items() if k != "tensors"]) + "}"
            for g in cfg["groups"]) + "]"
        ctor = _call(f"torch.optim.{cfg['cls']}", [group_src], kw)
    else:
        ctor = _call(f"torch.optim.{cfg['cls']}", ["params"], kw)
    opt = eval(ctor, {"torch": torch, "params": params})
    clip_call = None
    if cfg["clip"]:
        option, value = cfg["clip"]
        clip_call = (f"torch.nn.utils.clip_grad_norm_(params, max_norm={value!r}, foreach=False)"
                     if option == "global_clipnorm" else
                     f"torch.nn.utils.clip_grad_value_(params, clip_value={value!r}, "
                     "foreach=False)")
    trajectory = [np.empty((STEPS, *s)) for s in cfg["shapes"]]
    for t in range(STEPS):
        for k, p in enumerate(params):
            p.grad = torch.tensor(grads[k][t], dtype=torch.float64)
        if clip_call:
            eval(clip_call, {"torch": torch, "params": params})
        opt.step()
        for k, p in enumerate(params):
            trajectory[k][t] = p.detach().numpy()
    fastopt_kw = {}
    for key, v in cfg["kw"].items():
        if cfg["cls"] == "Adafactor" and key in ADAFACTOR_TORCH:
            names = ADAFACTOR_TORCH[key]
            if isinstance(names, tuple):
                fastopt_kw[names[0]], fastopt_kw[names[1]] = v
            else:
                fastopt_kw[names] = v
        elif key in TORCH_PAIRS:
            first, second = TORCH_PAIRS[key]
            fastopt_kw[first], fastopt_kw[second] = v
        else:
            # ASGD's alpha is its own (RMSprop's alpha is fastopt's rho)
            own = cfg["cls"] == "ASGD" and key == "alpha"
            fastopt_kw[key if own else TORCH_TO_FASTOPT.get(key, key)] = v
    if cfg["clip"]:
        option, value = cfg["clip"]
        fastopt_kw[option] = value
    fastopt_kw["convention"] = "torch"
    spec = {"class": cfg["fastopt_class"], "convention": "torch", "kwargs": fastopt_kw,
            "params": "list"}
    if cfg["groups"]:
        spec["params"] = "groups"
        spec["groups"] = [{TORCH_TO_FASTOPT.get(k, k): v for k, v in g.items()}
                          for g in cfg["groups"]]
    slot_names = torch_slot_names(spec)
    state = {}
    for k, p in enumerate(params):
        for key, value in opt.state[p].items():
            if key in slot_names and value is not None:
                state[f"state_{slot_names[key]}_{k}"] = value.detach().numpy().copy()
            elif key in TORCH_HOST:
                state[f"host_{key}_{k}"] = np.array(float(value), dtype=np.float64)
    meta = {"framework": "torch", "framework_version": torch.__version__,
            "constructor": ctor, "clip": clip_call,
            "step": "p.grad = g for every tensor; then the clip call if any; then opt.step()",
            "fastopt": spec, "tolerance": DEFAULT_TOLERANCE,
            "roundings": [{"what": "none found: the for-loop path computes in the parameter "
                                   "dtype (float64) with Python-float hyperparameters; the "
                                   "step count is a float32 tensor (exact for integers); "
                                   "clip_grad_norm_'s norm and coefficient are float64 "
                                   "tensors",
                           "where": f"torch/optim/{cfg['cls'].lower().rstrip('w')}.py, "
                                    "torch/nn/utils/clip_grad.py",
                           "action": "none needed", "bound": None}]}
    if cfg["cls"] == "ASGD":
        meta["roundings"] = [{
            "what": "eta and mu are 0-d tensors of torch's default dtype (float32 here, as "
                    "by default): the first eta is float32(lr), and each step stores "
                    "float32(lr / (1 + lambd*lr*t)^alpha) and float32(1 / max(1, t - t0)), "
                    "which the next step reads; the rest is float64 with Python-float "
                    "hyperparameters and a float32 step count (exact for integers)",
            "where": "torch/optim/asgd.py ASGD._init_group (_get_scalar_dtype) and "
                     "_single_tensor_asgd",
            "action": "reproduced, not bounded: fastopt's ASGD keeps eta and mu as torch "
                      "does (fastopt/algorithms/asgd.py advance_asgd_torch)",
            "bound": None}]
    if cfg["cls"] == "NAdam":
        meta["roundings"] = [{
            "what": "mu_product is a 0-d tensor of torch's default dtype (float32 here, as "
                    "by default): mu_product *= mu rounds the running product to float32 "
                    "after every step, and the update reads that float32 value; the rest is "
                    "float64 with Python-float hyperparameters and a float32 step count "
                    "(exact for integers)",
            "where": "torch/optim/nadam.py NAdam._init_group (_get_scalar_dtype) and "
                     "_single_tensor_nadam",
            "action": "reproduced, not bounded: fastopt's NAdam keeps mu_product as torch "
                      "does, float32(float32(mu_product) * float32(mu)) "
                      "(fastopt/algorithms/nadam.py advance_nadam_torch)",
            "bound": None}]
    arrays = _arrays(init, grads, trajectory, state)
    return meta, arrays


def _keras_roundings(cfg):
    """The float32 roundings inside Keras 3.15.1's torch backend that touch
    ``cfg`` with float64 variables, as found in the source.

    Each is ``{"what", "where", "kind"}``: kind ``"floatx"`` (a Python float
    converted by ``convert_to_tensor`` to ``keras.config.floatx()``, so
    ``set_floatx("float64")`` removes it), ``"float32"`` (Keras's
    ``result_type`` maps float64 to float32 on the torch backend, whatever
    floatx is) or ``"none"`` (checked: computed in float64).
    """
    kw = cfg["kw"]
    found = []

    def add(kind, what, where):
        found.append({"what": what, "where": where, "kind": kind})

    if isinstance(kw["learning_rate"], tuple):
        add("floatx", "the schedule computes in the dtype of "
            "convert_to_tensor(initial_learning_rate), i.e. floatx: the initial rate, "
            "decay_rate/alpha/warmup values and the step count are cast to it and every "
            "operation rounds in it (ops.minimum on step counts rounds to float32, exact "
            "for integers)",
            "keras/src/optimizers/schedules/learning_rate_schedule.py __call__")
    else:
        add("floatx", "the learning rate is a Variable of dtype floatx; the update and the "
            "weight-decay factor see floatx(learning_rate)",
            "keras/src/optimizers/base_optimizer.py BaseOptimizer.__init__")
    if kw.get("weight_decay"):
        add("floatx", "decoupled weight-decay factor 1 - weight_decay*lr: the Python float "
            "weight_decay times the learning-rate variable is a floatx tensor, so the product "
            "and the subtraction round in floatx",
            "keras/src/backend/torch/optimizers/torch_optimizer.py "
            "TorchOptimizer._apply_weight_decay")
    if kw.get("clipnorm"):
        add("floatx", "clipnorm numerator: ops.multiply(g, clipnorm) converts clipnorm to a "
            "floatx tensor", "keras/src/optimizers/base_optimizer.py "
            "BaseOptimizer._clip_by_norm; keras/src/backend/torch/numpy.py multiply")
        add("float32", "clipnorm denominator: ops.maximum(norm, clipnorm) converts both to "
            "result_type(float64, float) = float32 (BIT64_TO_BIT32_DTYPE in "
            "keras/src/backend/common/dtypes.py _lattice_result_type), so the clipped "
            "gradient is g*clipnorm/float32(max(||g||, clipnorm))",
            "keras/src/optimizers/base_optimizer.py BaseOptimizer._clip_by_norm; "
            "keras/src/backend/torch/numpy.py maximum")
    if kw.get("global_clipnorm"):
        c = kw["global_clipnorm"]
        unclipped = float(c * np.float64(np.float32(1.0 / c))) - 1.0
        add("float32", "global_clipnorm: ops.minimum(1/norm, 1/clip_norm) converts both to "
            "result_type(float64, float) = float32 (BIT64_TO_BIT32_DTYPE in "
            "keras/src/backend/common/dtypes.py _lattice_result_type), so the scale is "
            "clip_norm*min(float32(1/norm), float32(1/clip_norm)) + (norm - norm); unclipped "
            f"steps are scaled by clip_norm*float32(1/clip_norm) = 1 + {unclipped:.3g} here",
            "keras/src/optimizers/base_optimizer.py clip_by_global_norm; "
            "keras/src/backend/torch/numpy.py minimum")
    if kw.get("clipvalue"):
        add("floatx", "clipvalue: ops.clip converts -clipvalue and clipvalue to floatx "
            "tensors", "keras/src/backend/torch/numpy.py clip")
    if kw.get("use_ema"):
        add("floatx", "EMA: ops.multiply(cast(iterations != 0, dtype), ema_momentum) "
            "converts ema_momentum to floatx",
            "keras/src/optimizers/base_optimizer.py "
            "BaseOptimizer._update_model_variables_moving_average")
    if cfg["cls"] in ("Adam", "AdamW"):
        add("none", "Adam: ops.cast(beta, float64) and ops.cast(iterations + 1, float64) are "
            "exact; the m, v updates and epsilon use Python floats in torch._foreach_*",
            "keras/src/backend/torch/optimizers/torch_adam.py Adam._parallel_update_step")
    if cfg["cls"] == "Nadam":
        add("none", "Nadam: u_t, u_{t+1}, 0.96^t and beta_2^t are computed from "
            "ops.cast(..., float64) values, and the running product _u_product is a "
            "variable of the first variable's dtype (float64 here); beta_1, beta_2 and "
            "epsilon are Python floats in torch._foreach_*",
            "keras/src/backend/torch/optimizers/torch_nadam.py Nadam._parallel_update_step, "
            "keras/src/optimizers/nadam.py build")
    if cfg["cls"] == "Adamax":
        add("none", "Adamax: ops.cast(beta_1, float64) ** ops.cast(iterations + 1, float64) "
            "is float64; beta_1, beta_2 and epsilon are Python floats in torch._foreach_*",
            "keras/src/backend/torch/optimizers/torch_adamax.py "
            "Adamax._parallel_update_step")
    if cfg["cls"] == "Adadelta":
        add("none", "Adadelta: rho, 1 - rho and epsilon are Python floats in torch._foreach_*; "
            "the learning rate is the variable above",
            "keras/src/backend/torch/optimizers/torch_adadelta.py "
            "Adadelta._parallel_update_step")
    if cfg["cls"] == "Lion":
        add("none", "Lion: beta_1, beta_2 and their complements are Python floats in "
            "torch._foreach_*; the learning rate is the variable above",
            "keras/src/backend/torch/optimizers/torch_lion.py Lion._parallel_update_step")
    if cfg["cls"] == "Lamb":
        add("none", "Lamb: ops.cast(beta, float64) ** ops.cast(iterations + 1, float64) is "
            "float64; 1 - beta and epsilon are Python floats; ops.sum, ops.sqrt, "
            "ops.greater and ops.where on float64 tensors stay float64 (ops.where converts "
            "its 1.0 to a floatx tensor, exact in either, and torch.where promotes it with "
            "the float64 ratio to float64; no result_type call)", "keras/src/optimizers/lamb.py Lamb.update_step (no "
            "torch-backend override)")
    if cfg["cls"] == "RMSprop":
        add("none", "RMSprop: rho, momentum and epsilon are Python floats in "
            "torch._foreach_*", "keras/src/backend/torch/optimizers/torch_rmsprop.py")
    if cfg["cls"] == "SGD":
        add("none", "SGD: momentum is a Python float in torch._foreach_*; the learning "
            "rate is the variable above", "keras/src/backend/torch/optimizers/torch_sgd.py")
    if cfg["cls"] == "Adagrad":
        add("none", "Adagrad: epsilon is a Python float; initial_accumulator_value fills a "
            "float64 variable", "keras/src/backend/torch/optimizers/torch_adagrad.py, "
            "keras/src/optimizers/adagrad.py build")
    if cfg["cls"] == "Ftrl":
        add("floatx", "Ftrl: ops.power(accum, -learning_rate_power) converts the exponent, "
            "ops.clip(linear, -l1, l1) the L1 bounds and ops.multiply(2 * "
            "l2_shrinkage_regularization_strength, variable) the shrinkage factor to floatx "
            "tensors", "keras/src/optimizers/ftrl.py Ftrl.update_step; "
            "keras/src/backend/torch/numpy.py power, clip, multiply")
        add("none", "Ftrl: l2_regularization_strength + beta / (2 * lr) is a float64 tensor "
            "(lr is cast to the variable's dtype); Keras runs the generic update_step (no "
            "torch-backend override)", "keras/src/optimizers/ftrl.py Ftrl.update_step")
    if cfg["cls"] == "Adafactor":
        add("floatx", "Adafactor: ops.power(t, beta_2_decay), ops.add(g*g, epsilon_1) and "
            "ops.divide(RMS(u), clip_threshold) convert the Python floats beta_2_decay, "
            "epsilon_1 and clip_threshold to floatx tensors",
            "keras/src/optimizers/adafactor.py Adafactor.update_step; "
            "keras/src/backend/torch/numpy.py power, add, divide")
        add("float32", "Adafactor: ops.mean computes in result_type(float64, float32) = "
            "float32 (BIT64_TO_BIT32_DTYPE) and casts back, so RMS(w), RMS(u), the row and "
            "column means of g*g + epsilon_1 and mean(r) are float32 means of float32-rounded "
            "values; ops.minimum and ops.maximum return float32 for float64 inputs, so "
            "rho = float32(min(lr, 1/sqrt(t))), alpha = float32(float32(max(epsilon_2, "
            "RMS(w))) * rho) and the clipping denominator float32(max(1, RMS(u)/d)); r, c, "
            "v, u and the update are float64 otherwise",
            "keras/src/optimizers/adafactor.py Adafactor.update_step; "
            "keras/src/backend/torch/numpy.py maximum, minimum")
    if kw.get("loss_scale_factor"):
        add("none", "loss_scale_factor: g / scale, a float64 tensor by a Python float",
            "keras/src/optimizers/base_optimizer.py BaseOptimizer.apply")
    if kw.get("gradient_accumulation_steps"):
        add("none", "gradient accumulation: (g + acc) / steps with a Python int in float64",
            "keras/src/optimizers/base_optimizer.py _backend_apply_gradients")
    return found


def _exact_clip_by_norm(self, values, axes=None):
    """Keras's BaseOptimizer._clip_by_norm with the max(norm, clipnorm) kept in
    float64 (Keras's ops.maximum rounds it to float32)."""
    norm = torch.sqrt(torch.sum(values * values))
    return values * self.clipnorm / torch.maximum(norm, torch.tensor(self.clipnorm,
                                                                     dtype=norm.dtype))


def _exact_clip_by_global_norm(value_list, clip_norm):
    """Keras's clip_by_global_norm with min(1/norm, 1/clip_norm) kept in float64."""
    norm = torch.sqrt(sum(torch.sum(v * v) for v in value_list if v is not None))
    scale = clip_norm * torch.minimum(1.0 / norm, torch.tensor(1.0 / clip_norm,
                                                               dtype=norm.dtype))
    scale = scale + (norm - norm)
    return [v * scale if v is not None else v for v in value_list]


def _exact_ops():
    """ops.maximum, ops.minimum and ops.mean kept in float64 (Keras's compute
    in float32): for measuring what that rounding does to Adafactor."""
    from keras.src.backend.torch.core import convert_to_tensor

    def make(fn):
        def exact(x1, x2):
            return fn(convert_to_tensor(x1, "float64"), convert_to_tensor(x2, "float64"))
        return exact

    def mean(x, axis=None, keepdims=False):
        x = convert_to_tensor(x, "float64")
        if axis is None:
            return torch.mean(x)
        return torch.mean(x, dim=axis, keepdim=keepdims)
    return {"maximum": make(torch.maximum), "minimum": make(torch.minimum), "mean": mean}


def run_keras(cfg, floatx, exact_clip=False):
    """One Keras run: ``(init, grads, trajectory, state, final, meta)``.

    ``exact_clip`` replaces Keras's clip functions by float64 versions (to
    measure what their float32 rounding does; never used for the files).
    """
    from keras.src.optimizers import base_optimizer
    from keras.src.optimizers import adafactor as keras_adafactor
    saved = base_optimizer.clip_by_global_norm, base_optimizer.BaseOptimizer._clip_by_norm
    saved_ops = keras_adafactor.ops
    if exact_clip:  # and Adafactor's float32 means and extrema
        import types
        keras_adafactor.ops = types.SimpleNamespace(
            **{**{n: getattr(saved_ops, n) for n in dir(saved_ops) if not n.startswith("__")},
               **_exact_ops()})
        base_optimizer.clip_by_global_norm = _exact_clip_by_global_norm
        base_optimizer.BaseOptimizer._clip_by_norm = _exact_clip_by_norm
    keras.config.set_floatx(floatx)
    try:
        return _run_keras(cfg)
    finally:
        keras.config.set_floatx("float32")
        keras_adafactor.ops = saved_ops
        base_optimizer.clip_by_global_norm, base_optimizer.BaseOptimizer._clip_by_norm = saved


def _run_keras(cfg):
    steps = cfg["steps"]
    shapes = cfg["shapes"]
    init, grads = make_data(cfg["name"], steps, cfg["grad_scale"], shapes, cfg["zero_init"],
                            cfg["late"])
    names = NAMES if cfg["params"] == "dict" else [f"w{k}" for k in range(len(shapes))]
    variables = [keras.Variable(a.copy(), dtype="float64", name=n)
                 for a, n in zip(init, names)]
    ctor = _call(f"keras.optimizers.{cfg['cls']}", [], cfg["kw"])
    opt = eval(ctor, {"keras": keras})
    exclude_call = None
    if cfg["exclude"]:
        how, which = cfg["exclude"]
        if how == "var_list":
            exclude_call = ("opt.exclude_from_weight_decay(var_list=["
                            + ", ".join(f"variables[{i}]" for i in which) + "])")
        else:
            exclude_call = f"opt.exclude_from_weight_decay(var_names={which!r})"
        eval(exclude_call, {"opt": opt, "variables": variables})
    trajectory = [np.empty((steps, *s)) for s in shapes]
    for t in range(steps):
        opt.apply([torch.tensor(g[t], dtype=torch.float64) for g in grads], variables)
        for k, v in enumerate(variables):
            trajectory[k][t] = v.numpy()
    state = {}
    for ov in opt.variables:
        for k, n in enumerate(names):
            for slot in KERAS_SLOTS:
                if ov.name == f"{n}_{slot}":
                    state[f"state_{slot}_{k}"] = np.array(ov.numpy(), dtype=np.float64)
                    break
    if cfg["cls"] == "Adafactor":  # r and c are named after the variable, v "velocity"
        for k, var in enumerate(variables):
            if len(var.shape) >= 2:  # Keras's v of a matrix is r/mean(r) x c, not kept
                state[f"state_r_{k}"] = np.array(opt._r[k].numpy(), dtype=np.float64)
                state[f"state_c_{k}"] = np.array(opt._c[k].numpy(), dtype=np.float64)
                state.pop(f"state_velocity_{k}", None)
            else:  # r and c of a vector are dummy scalars
                state[f"state_velocity_{k}"] = np.array(opt._v[k].numpy(), dtype=np.float64)
    for name in KERAS_HOST:
        if hasattr(opt, f"_{name}"):
            state[f"host_{name}"] = np.array(float(getattr(opt, f"_{name}").numpy()),
                                             dtype=np.float64)
    final = None
    if cfg["kw"].get("use_ema"):
        opt.finalize_variable_values(variables)
        final = [v.numpy().copy() for v in variables]
    meta = {"names": names, "ctor": ctor, "exclude_call": exclude_call,
            "iterations": int(opt._iterations.numpy())}
    return init, grads, trajectory, state, final, meta


def deviation(a, b):
    """The test's error measure of run ``b`` against run ``a``: the largest
    ``max|b_t - a_t| / max over s <= t of max|a_s - init|`` over tensors and
    steps, and ``max|b - a| / max|a|`` over final slots and EMA finals."""
    init_a, _, traj_a, state_a, final_a, _ = a
    _, _, traj_b, state_b, final_b, _ = b
    worst = 0.0
    for k, (ta, tb) in enumerate(zip(traj_a, traj_b)):
        moved = np.maximum.accumulate(
            np.max(np.abs(ta - init_a[k]).reshape(len(ta), -1), axis=1))
        err = np.max(np.abs(tb - ta).reshape(len(ta), -1), axis=1)
        worst = max(worst, float(np.max(err / np.maximum(moved, 1e-300))))
    pairs = [(state_a[key], state_b[key]) for key in state_a]
    if final_a is not None:
        pairs += [(fa - i, fb - i) for fa, fb, i in zip(final_a, final_b, init_a)]
    for x, y in pairs:
        worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-300)))
    return worst


def _round_up(x):
    """``x`` rounded up to two significant digits."""
    e = np.floor(np.log10(x)) - 1
    return float(np.ceil(x / 10 ** e) * 10 ** e)


def record_keras(cfg):
    floatx = cfg["floatx"]
    run = run_keras(cfg, floatx)
    init, grads, trajectory, state, final, info = run
    names, ctor, exclude_call = info["names"], info["ctor"], info["exclude_call"]
    fastopt_kw = {k: _fastopt_value(v) for k, v in cfg["kw"].items()}
    roundings = _keras_roundings(cfg)
    tolerance = DEFAULT_TOLERANCE
    measured = {}
    if floatx == "float64":
        measured["deviation_if_floatx_were_float32"] = deviation(run, run_keras(cfg, "float32"))
    for r in roundings:
        kind = r["kind"]
        r["bound"] = None
        if kind == "none":
            r["action"] = "none needed"
        elif kind == "float32" and r["what"].startswith("Adafactor:"):
            dev = deviation(run, run_keras(cfg, floatx, exact_clip=True))
            r["measured_deviation"] = dev
            r["bound"] = max(DEFAULT_TOLERANCE, _round_up(2 * dev))
            r["action"] = ("not reproduced (the float32 sums' order is torch's): fastopt "
                           "computes in float64; recorded again with Adafactor's ops.mean, "
                           "ops.maximum and ops.minimum in float64; the deviation between the "
                           f"two runs (the test's measure) is {dev:.3g}; bound = twice that, "
                           "rounded up to two digits")
            tolerance = max(tolerance, r["bound"])
        elif kind == "floatx" and floatx == "float64":
            r["action"] = ("keras.config.set_floatx('float64') before building the optimizer: "
                           "computed in float64, no rounding")
        elif kind == "floatx" and "learning rate is a Variable" in r["what"]:
            lr32 = float(np.float32(cfg["kw"]["learning_rate"]))
            fastopt_kw["learning_rate"] = lr32
            r["action"] = (f"fastopt is given learning_rate=float(np.float32(lr)) = {lr32!r}: "
                           "the same value, so no bound is needed")
        elif kind == "floatx" and r["what"].startswith("Ftrl:"):
            kw = cfg["kw"]
            values = [-kw.get("learning_rate_power", -0.5),
                      kw.get("l1_regularization_strength", 0.0),
                      2 * kw.get("l2_shrinkage_regularization_strength", 0.0)]
            if any(float(np.float32(v)) != v for v in values):
                raise RuntimeError(f"{cfg['name']}: choose Ftrl values exact in float32")
            r["action"] = (f"the exponent, L1 bound and shrinkage factor here ({values}) are "
                           "exact in float32: no rounding, no bound needed")
        elif kind == "floatx" and "weight-decay factor" in r["what"]:
            wd, lr32 = cfg["kw"]["weight_decay"], np.float32(cfg["kw"]["learning_rate"])
            keep32 = np.float32(1) - np.float32(wd) * lr32
            wd_eff = (1.0 - float(keep32)) / float(lr32)
            fastopt_kw["weight_decay"] = wd_eff
            r["action"] = (f"Keras multiplies by float32(1 - float32({wd})*float32(lr)) = "
                           f"{float(keep32)!r}; fastopt is given weight_decay = (1 - that)/lr "
                           f"= {wd_eff!r}, so its float64 1 - weight_decay*lr is the same "
                           "factor to ~1e-16 and no bound is needed")
        elif kind == "float32":
            dev = deviation(run, run_keras(cfg, floatx, exact_clip=True))
            r["measured_deviation"] = dev
            r["bound"] = max(DEFAULT_TOLERANCE, _round_up(2 * dev))
            r["action"] = ("cannot be given to fastopt (it depends on each step's norm): "
                           "recorded again with the clip computed in float64; the deviation "
                           f"between the two runs (the test's measure) is {dev:.3g}; bound = "
                           "twice that, rounded up to two digits")
            tolerance = max(tolerance, r["bound"])
        else:  # pragma: no cover - a rounding this script does not know how to handle
            raise RuntimeError(f"{cfg['name']}: unhandled rounding {r['what']}")
        del r["kind"]
        r["removable_by_floatx"] = kind == "floatx"
    spec = {"class": cfg["cls"], "convention": "keras", "kwargs": fastopt_kw,
            "params": cfg["params"]}
    if cfg["params"] == "dict":
        spec["names"] = names
    if cfg["exclude"]:
        spec["kwargs"]["exclude_from_weight_decay"] = cfg["exclude"][1]
    meta = {"framework": "keras", "framework_version": keras.__version__,
            "backend": "torch", "backend_version": torch.__version__,
            "keras_floatx": floatx,
            "variables": "keras.Variable(init, dtype='float64', name=<name>) per tensor, "
                         f"names {names}",
            "constructor": ctor, "exclude_call": exclude_call,
            "step": "opt.apply([torch.tensor(g, dtype=torch.float64) per tensor], variables)",
            "keras_iterations": info["iterations"],
            "fastopt": spec, "tolerance": tolerance, "roundings": roundings,
            "measured": measured}
    return meta, _arrays(init, grads, trajectory, state, final)


def _arrays(init, grads, trajectory, state, final=None):
    arrays = {}
    for k in range(len(init)):
        arrays[f"init_{k}"] = init[k]
        arrays[f"grads_{k}"] = grads[k]
        arrays[f"params_{k}"] = trajectory[k]
        if final is not None:
            arrays[f"final_{k}"] = final[k]
    arrays.update(state)
    return arrays


# ---------------------------------------------------------------------------
# Muon (per_tensor: matrices tall and wide, and, under Keras, the tensors it
# gives to AdamW, chosen by shape and by name)

#: Keras: dict params whose names choose the path: two matrices for Muon (tall
#: and wide: it transposes the tall one), a vector, an embedding
#: (exclude_embeddings) and an output matrix (exclude_layers=["output"]) for AdamW
MUON_KERAS_SHAPES = [(6, 4), (3, 7), (5,), (4, 3), (2, 5)]
MUON_KERAS_NAMES = ["hidden_kernel", "wide_kernel", "bias", "token_embedding",
                    "output_kernel"]
#: torch: 2-D parameters only (tall, wide, square)
MUON_TORCH_SHAPES = [(6, 4), (3, 7), (5, 5)]


def muon_cfg(name, framework, exact=False, **kw):
    """A Muon configuration.  ``exact``: record the framework's code with its
    reduced-precision step replaced by a float64 one (Keras: the Frobenius
    norm that ``ops.norm`` computes in float32; torch: the bfloat16
    Newton–Schulz), the twin fastopt must match at 1e-9; without it, the
    real framework, matched within a measured bound."""
    shapes = MUON_KERAS_SHAPES if framework == "keras" else MUON_TORCH_SHAPES
    return {"name": name, "framework": framework, "recorder": f"muon_{framework}",
            "cls": "Muon", "kw": kw, "exact": exact, "shapes": shapes, "steps": STEPS}


def _exact_keras_norm(x, ord=None, axis=None, keepdims=False):
    """``ops.norm`` kept in the input's dtype (Keras's torch backend casts
    float64 to float32 first: ``result_type(float64, float)``)."""
    return torch.linalg.norm(x, dim=axis, keepdim=keepdims)


def _exact_torch_newton_schulz(grad, ns_coefficients, ns_steps, eps):
    """torch's ``_zeropower_via_newtonschulz`` with the same operations in
    the gradient's dtype instead of bfloat16."""
    a, b, c = ns_coefficients
    x = grad.clone()
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x.div(x.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


def _run_muon_keras(cfg, exact):
    from keras.src.optimizers import muon as keras_muon
    names, shapes = MUON_KERAS_NAMES, cfg["shapes"]
    init, grads = make_data(cfg["name"].removesuffix("_exact"), cfg["steps"], shapes=shapes)
    keras.config.set_floatx("float64")
    saved = keras_muon.ops.norm
    if exact:
        keras_muon.ops.norm = _exact_keras_norm
    try:
        variables = [keras.Variable(a.copy(), dtype="float64", name=n)
                     for a, n in zip(init, names)]
        ctor = _call("keras.optimizers.Muon", [], cfg["kw"])
        opt = eval(ctor, {"keras": keras})
        trajectory = [np.empty((cfg["steps"], *s)) for s in shapes]
        for t in range(cfg["steps"]):
            opt.apply([torch.tensor(g[t], dtype=torch.float64) for g in grads], variables)
            for k, v in enumerate(variables):
                trajectory[k][t] = v.numpy()
        adamw = [bool(opt._should_use_adamw(v)) for v in variables]
    finally:
        keras_muon.ops.norm = saved
        keras.config.set_floatx("float32")
    state = {}
    for ov in opt.variables:
        for k, n in enumerate(names):
            for slot in ("momentum", "velocity"):
                if ov.name == f"{n}_{slot}":
                    state[f"state_{slot}_{k}"] = np.array(ov.numpy(), dtype=np.float64)
    meta = {"ctor": ctor, "iterations": int(opt._iterations.numpy()), "adamw": adamw}
    return init, grads, trajectory, state, None, meta


def record_muon_keras(cfg):
    run = _run_muon_keras(cfg, cfg["exact"])
    init, grads, trajectory, state, _, info = run
    if not cfg["exact"]:
        dev = deviation(_run_muon_keras(cfg, True), run)
        bound = max(DEFAULT_TOLERANCE, _round_up(2 * dev))
        norm = {"what": "Newton–Schulz normalisation: ops.norm casts the float64 momentum to "
                        "result_type(float64, float) = float32 (BIT64_TO_BIT32_DTYPE) and "
                        "takes its Frobenius norm in float32, and + 1e-7 stays float32; "
                        "the division and the iteration are float64",
                "where": "keras/src/optimizers/muon.py zeropower_via_newtonschulz5; "
                         "keras/src/backend/torch/linalg.py norm",
                "action": "cannot be given to fastopt (it depends on each step's momentum): "
                          "recorded again with ops.norm in float64 (the *_exact twin, "
                          f"matched at 1e-9); the deviation between the two runs is {dev:.3g}; "
                          "bound = twice that, rounded up to two digits",
                "measured_deviation": dev, "bound": bound}
    else:
        norm = {"what": "this is the twin of the real recording with keras's ops.norm "
                        "replaced (in keras.src.optimizers.muon only) by torch.linalg.norm "
                        "in float64: what fastopt computes",
                "where": "keras/src/optimizers/muon.py zeropower_via_newtonschulz5",
                "action": "none needed", "bound": None}
    roundings = [
        {"what": "the learning rate is a Variable of dtype floatx",
         "where": "keras/src/optimizers/base_optimizer.py BaseOptimizer.__init__",
         "action": "keras.config.set_floatx('float64') before building the optimizer: "
                   "computed in float64, no rounding", "bound": None,
         "removable_by_floatx": True},
        {"what": "lr_adjust: ops.sqrt(ops.maximum(rows, cols)) of Python ints is a float32 "
                 "tensor (torch's sqrt of an integer tensor), so the update is scaled by "
                 "float32(sqrt(max(rows, cols))) * rms_rate",
         "where": "keras/src/optimizers/muon.py Muon.lr_adjust",
         "action": "reproduced, not bounded: fastopt's Keras Muon rounds the square root to "
                   "float32 (fastopt/algorithms/muon.py keras_update_scale)", "bound": None},
        {"what": "weight decay (Muon's own _apply_weight_decay): ops.cast(weight_decay or "
                 "adam_weight_decay, float64) and ops.cast(learning_rate, float64); the "
                 "momentum, AdamW and Newton–Schulz products are float64 with Python floats",
         "where": "keras/src/optimizers/muon.py Muon._apply_weight_decay, "
                  "_muon_update_step, _adamw_update_step",
         "action": "none needed", "bound": None},
        norm]
    tolerance = max([DEFAULT_TOLERANCE] + [r["bound"] for r in roundings if r["bound"]])
    spec = {"class": "Muon", "convention": "keras", "kwargs": dict(cfg["kw"]),
            "params": "dict", "names": MUON_KERAS_NAMES}
    meta = {"framework": "keras", "framework_version": keras.__version__,
            "backend": "torch", "backend_version": torch.__version__,
            "keras_floatx": "float64",
            "variables": "keras.Variable(init, dtype='float64', name=<name>) per tensor, "
                         f"names {MUON_KERAS_NAMES}",
            "constructor": info["ctor"], "exclude_call": None,
            "patch": ("keras.src.optimizers.muon.ops.norm = torch.linalg.norm in float64"
                      if cfg["exact"] else None),
            "step": "opt.apply([torch.tensor(g, dtype=torch.float64) per tensor], variables)",
            "keras_iterations": info["iterations"], "keras_uses_adamw": info["adamw"],
            "fastopt": spec, "tolerance": tolerance, "roundings": roundings, "measured": {}}
    return meta, _arrays(init, grads, trajectory, state)


def _run_muon_torch(cfg, exact):
    import torch.optim._muon as torch_muon
    shapes = cfg["shapes"]
    init, grads = make_data(cfg["name"].removesuffix("_exact"), cfg["steps"], shapes=shapes)
    saved = torch_muon._zeropower_via_newtonschulz
    if exact:
        torch_muon._zeropower_via_newtonschulz = _exact_torch_newton_schulz
    try:
        params = [torch.tensor(a.copy(), dtype=torch.float64, requires_grad=True)
                  for a in init]
        ctor = _call("torch.optim.Muon", ["params"], cfg["kw"])
        opt = eval(ctor, {"torch": torch, "params": params})
        trajectory = [np.empty((cfg["steps"], *s)) for s in shapes]
        for t in range(cfg["steps"]):
            for k, p in enumerate(params):
                p.grad = torch.tensor(grads[k][t], dtype=torch.float64)
            opt.step()
            for k, p in enumerate(params):
                trajectory[k][t] = p.detach().numpy()
    finally:
        torch_muon._zeropower_via_newtonschulz = saved
    state = {f"state_momentum_{k}": opt.state[p]["momentum_buffer"].detach().numpy().copy()
             for k, p in enumerate(params)}
    return init, grads, trajectory, state, None, {"ctor": ctor}


def record_muon_torch(cfg):
    run = _run_muon_torch(cfg, cfg["exact"])
    init, grads, trajectory, state, _, info = run
    if not cfg["exact"]:
        dev = deviation(_run_muon_torch(cfg, True), run)
        bound = max(DEFAULT_TOLERANCE, _round_up(2 * dev))
        ns = {"what": "Newton–Schulz in bfloat16: the momentum (or its Nesterov lookahead) is "
                      "cast to bfloat16, normalised and iterated in bfloat16 (products "
                      "rounded to bfloat16), and the bfloat16 result is added to the float64 "
                      "parameter; the momentum and the weight decay are float64",
              "where": "torch/optim/_muon.py _zeropower_via_newtonschulz",
              "action": "not copied: fastopt iterates in the parameters' dtype (float64 "
                        "here); recorded again with torch's iteration in float64 (the "
                        f"*_exact twin, matched at 1e-9); the deviation between the two runs "
                        f"is {dev:.3g}; bound = twice that, rounded up to two digits",
              "measured_deviation": dev, "bound": bound}
    else:
        ns = {"what": "this is the twin of the real recording with "
                      "torch.optim._muon._zeropower_via_newtonschulz replaced by the same "
                      "operations in the gradient's dtype (float64) instead of bfloat16: "
                      "what fastopt computes",
              "where": "torch/optim/_muon.py _zeropower_via_newtonschulz",
              "action": "none needed", "bound": None}
    roundings = [{"what": "the momentum (lerp), the weight decay and the learning-rate "
                          "adjustment are float64 with Python floats",
                  "where": "torch/optim/_muon.py _single_tensor_muon, _adjust_lr",
                  "action": "none needed", "bound": None}, ns]
    tolerance = max([DEFAULT_TOLERANCE] + [r["bound"] for r in roundings if r["bound"]])
    fastopt_kw = {}
    for key, v in cfg["kw"].items():
        if key == "ns_coefficients":
            fastopt_kw["muon_a"], fastopt_kw["muon_b"], fastopt_kw["muon_c"] = v
        else:
            fastopt_kw[TORCH_TO_FASTOPT.get(key, key)] = v
    fastopt_kw["convention"] = "torch"
    spec = {"class": "Muon", "convention": "torch", "kwargs": fastopt_kw, "params": "list"}
    meta = {"framework": "torch", "framework_version": torch.__version__,
            "constructor": info["ctor"], "clip": None,
            "patch": ("torch.optim._muon._zeropower_via_newtonschulz in the gradient's dtype "
                      "(make_golden._exact_torch_newton_schulz)" if cfg["exact"] else None),
            "step": "p.grad = g for every tensor; then opt.step()",
            "fastopt": spec, "tolerance": tolerance, "roundings": roundings}
    return meta, _arrays(init, grads, trajectory, state)


RECORDERS = {"muon_keras": record_muon_keras, "muon_torch": record_muon_torch}

for _exact in (False, True):
    _tail = "_exact" if _exact else ""
    CONFIGS += [
        muon_cfg("keras_muon" + _tail, "keras", _exact, learning_rate=0.01,
                 exclude_layers=["output"]),
        muon_cfg("keras_muon_options" + _tail, "keras", _exact, learning_rate=0.02,
                 adam_beta_1=0.8, adam_beta_2=0.99, adam_weight_decay=0.05, epsilon=1e-6,
                 weight_decay=0.1, exclude_layers=["out.*kernel", "^bias$"],
                 exclude_embeddings=False, muon_a=3.0, muon_b=-3.2, muon_c=1.2,
                 adam_lr_ratio=0.1, momentum=0.9, ns_steps=3, nesterov=False, rms_rate=None),
        muon_cfg("torch_muon" + _tail, "torch", _exact, lr=0.02),
        muon_cfg("torch_muon_options" + _tail, "torch", _exact, lr=0.05, weight_decay=0.01,
                 momentum=0.9, nesterov=False, ns_coefficients=(3.0, -3.2, 1.2), eps=1e-5,
                 ns_steps=3, adjust_lr_fn="match_rms_adamw"),
    ]


# ---------------------------------------------------------------------------
# schedule-free AdamW: the authors' package, and Keras's class against it

def _sf_fastopt_kwargs(kw):
    out = {}
    for key, v in kw.items():
        if key == "betas":
            out["beta_1"], out["beta_2"] = v
        else:
            out[TORCH_TO_FASTOPT.get(key, key)] = v
    return out


def run_schedulefree(name, kw, groups, events, shapes, foreach=False):
    """One run of the package: ``(init, grads, trajectory, state, None, meta)``."""
    import schedulefree
    init, grads = make_data(name, STEPS, shapes=shapes)
    params = [torch.tensor(a.copy(), dtype=torch.float64, requires_grad=True) for a in init]
    kw = {**kw, "foreach": foreach}
    if groups:
        group_src = "[" + ", ".join(
            "{" + ", ".join([f"'params': [{', '.join(f'params[{i}]' for i in g['tensors'])}]"]
                            + [f"{k!r}: {v!r}" for k, v in g.items() if k != "tensors"]) + "}"
            for g in groups) + "]"
    else:
        group_src = "params"
    ctor = _call("schedulefree.AdamWScheduleFree", [group_src], kw)
    opt = eval(ctor, {"schedulefree": schedulefree, "params": params})
    trajectory = [np.empty((STEPS, *s)) for s in shapes]
    for t in range(STEPS):
        opt.train()
        for k, p in enumerate(params):
            p.grad = torch.tensor(grads[k][t], dtype=torch.float64)
        opt.step()
        for call in events.get(t, ()):
            getattr(opt, call)()
        for k, p in enumerate(params):
            trajectory[k][t] = p.detach().numpy()
    state = {}
    for k, p in enumerate(params):
        state[f"state_momentum_{k}"] = opt.state[p]["z"].detach().numpy().copy()
        state[f"state_velocity_{k}"] = opt.state[p]["exp_avg_sq"].detach().numpy().copy()
    for g, group in enumerate(opt.param_groups):
        for key in SF_HOST:
            state[f"host_{key}_{g}"] = np.array(float(group[key]), dtype=np.float64)
    meta = {"ctor": ctor, "k": [group["k"] for group in opt.param_groups]}
    return init, grads, trajectory, state, None, meta


def record_schedulefree(cfg):
    import schedulefree
    run = run_schedulefree(cfg["name"], cfg["kw"], cfg["groups"], SF_EVENTS, SF_SHAPES)
    init, grads, trajectory, state, _, info = run
    foreach = deviation(run, run_schedulefree(cfg["name"], cfg["kw"], cfg["groups"],
                                              SF_EVENTS, SF_SHAPES, foreach=True))
    spec = {"class": "ScheduleFreeAdamW", "convention": "torch",
            "kwargs": {**_sf_fastopt_kwargs(cfg["kw"]), "convention": "torch"},
            "params": "list"}
    if cfg["groups"]:
        spec["params"] = "groups"
        spec["groups"] = [_sf_fastopt_kwargs(g) for g in cfg["groups"]]
    meta = {"framework": "schedulefree", "framework_version": schedulefree_version(),
            "torch_version": torch.__version__, "constructor": info["ctor"],
            "step": "opt.train(); p.grad = g for every tensor; opt.step(); then the calls "
                    "of 'events' after that step (0-based) if any; params_<k> is recorded "
                    "after them",
            "events": {str(t): list(calls) for t, calls in SF_EVENTS.items()},
            "fastopt": spec, "tolerance": DEFAULT_TOLERANCE,
            "roundings": [{"what": "none found: the package computes lr, the warmup, "
                                   "bias_correction2, lr_max, weight_sum and ckp1 as Python "
                                   "floats (float64) and the tensor updates (mul_, addcmul_, "
                                   "div, sqrt_, lerp_, add_) in the parameters' float64",
                           "where": "schedulefree/adamw_schedulefree.py "
                                    "AdamWScheduleFree.step, train, eval",
                           "action": "none needed", "bound": None}],
            "measured": {"deviation_foreach_true_vs_false": foreach}}
    return meta, _arrays(init, grads, trajectory, state)


def schedulefree_version():
    from importlib.metadata import version
    return version("schedulefree")


def record_keras_schedulefree(cfg):
    """Keras's ScheduleFreeAdamW and the package on the same gradients; the
    arrays hold Keras's run (``params_<k>``, ``state_<slot>_<k>``) and the
    package's (``package_params_<k>``, ``package_state_<slot>_<k>``)."""
    keras.config.set_floatx("float64")
    try:
        keras_run = _run_keras({**cfg, "params": "list", "exclude": None, "steps": STEPS,
                                "grad_scale": 1.0})
    finally:
        keras.config.set_floatx("float32")
    init, grads, trajectory, state, _, info = keras_run
    # the same initial parameters and gradients (make_data is seeded by the name)
    package = run_schedulefree(cfg["name"], cfg["package_kw"], None, {}, SHAPES)
    package = (*package[:3], {k: v for k, v in package[3].items() if k.startswith("state_")},
               *package[4:])
    for a, b in zip(init, package[0]):
        assert np.array_equal(a, b)
    keras_pkg = (init, grads, trajectory, state, None, info)
    arrays = _arrays(init, grads, trajectory, state)
    for k in range(len(init)):
        arrays[f"package_params_{k}"] = package[2][k]
    arrays.update({f"package_{key}": v for key, v in package[3].items()
                   if key.startswith("state_")})
    meta = {"framework": "keras", "framework_version": keras.__version__,
            "backend": "torch", "backend_version": torch.__version__, "keras_floatx": "float64",
            "constructor": info["ctor"],
            "step": "opt.apply([torch.tensor(g, dtype=torch.float64) per tensor], variables)",
            "package_constructor": package[5]["ctor"],
            "package_version": schedulefree_version(),
            "package_step": "opt.train(); p.grad = g for every tensor; opt.step() (no eval: "
                            "Keras's parameters are always y, so y is compared with y)",
            "measured": {
                "deviation_keras_vs_package": deviation(package, keras_pkg),
                "max_abs_param_difference_final": max(
                    float(np.max(np.abs(a[-1] - b[-1]))) for a, b in zip(trajectory, package[2])),
                "max_abs_param_displacement_final_package": max(
                    float(np.max(np.abs(b[-1] - i))) for b, i in zip(package[2], init))},
            "roundings": [{
                "what": "the warmup factor ops.minimum(local_step / warmup_steps, 1.0) is "
                        "computed in result_type(float64, float) = float32 on the torch "
                        "backend (the rest of update_step is float64 under floatx float64)",
                "where": "keras/src/optimizers/schedule_free_adamw.py update_step; "
                         "keras/src/backend/torch/numpy.py minimum",
                "action": "reproduced by the replica in tests/test_schedulefree.py "
                          "(float32(min(t / warmup_steps, 1)))",
                "bound": None}] if cfg["kw"].get("warmup_steps") else [],
            "measure": "deviation: the golden test's measure of Keras's run against the "
                       "package's, max over steps and tensors of max|keras_t - package_t| / "
                       "max over s <= t of max|package_s - init| (and the final slots' "
                       "max|difference| / max|package|)",
            "why": "keras/src/optimizers/schedule_free_adamw.py update_step: "
                   "'momentum_old = momentum.value' is, under the torch backend, the "
                   "variable's own tensor (KerasVariable.value returns it, no copy), which "
                   "self.assign_sub(momentum, grad_scaled) then updates in place, so "
                   "x_old = (y_old - (1 - beta_1) * momentum_old) / beta_1 is computed from "
                   "the new z; it also weights the average by 1/t (the package: t^r * "
                   "lr_max^weight_lr_power over their sum, which differs from 1/t during "
                   "warmup). tests/test_schedulefree.py reproduces Keras's recording with "
                   "a NumPy replica that reads the new z there, and the package's with the "
                   "same replica reading the old z (no warmup)"}
    return meta, arrays


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="configurations to record (default: all)")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "torch":
        sys.exit("run with KERAS_BACKEND=torch")
    torch.set_default_dtype(torch.float32)
    wanted = set(args.names) or {c["name"] for c in CONFIGS}
    unknown = wanted - {c["name"] for c in CONFIGS}
    if unknown:
        sys.exit(f"unknown configurations: {sorted(unknown)}")
    OUT.mkdir(parents=True, exist_ok=True)
    for cfg in CONFIGS:
        if cfg["name"] not in wanted:
            continue
        out = OUT
        if cfg.get("difference"):
            meta, arrays = record_keras_schedulefree(cfg)
            out = OUT / "differences"
            out.mkdir(exist_ok=True)
        elif cfg["framework"] == "schedulefree":
            meta, arrays = record_schedulefree(cfg)
        elif cfg.get("recorder"):
            meta, arrays = RECORDERS[cfg["recorder"]](cfg)
        else:
            meta, arrays = (record_torch if cfg["framework"] == "torch" else record_keras)(cfg)
        shapes = SF_SHAPES if cfg["framework"] == "schedulefree" else cfg.get("shapes", SHAPES)
        sidecar = {"name": cfg["name"], **meta,
                   "python_version": platform.python_version(),
                   "numpy_version": np.__version__, "dtype": "float64",
                   "steps": int(arrays["grads_0"].shape[0]),
                   "shapes": [list(s) for s in shapes],
                   "state_keys": sorted(k for k in arrays if k.startswith("state_"))}
        host_keys = sorted(k for k in arrays if k.startswith("host_"))
        if host_keys:
            sidecar["host_keys"] = host_keys
        np.savez_compressed(out / f"{cfg['name']}.npz", **arrays)
        (out / f"{cfg['name']}.json").write_text(json.dumps(sidecar, indent=1) + "\n")
        print(f"{cfg['name']}: {sidecar['steps']} steps, {len(sidecar['state_keys'])} slots")


if __name__ == "__main__":
    main()
