"""What ``fastopt bench`` runs: the optimizers, their baselines and their inputs.

:data:`CASES` maps each benchmark name to the fastopt optimizer it builds,
the naive NumPy step it is compared with (:mod:`fastopt.bench.naive`, same
name) and the ``torch.optim`` optimizer of the same update:
``fused=True`` where PyTorch has a fused CPU implementation (Adam, AdamW,
SGD, Adagrad), ``foreach=True`` otherwise (RMSprop, Adamax, Adadelta); none where
torch has no such optimizer (Lion, Ftrl, Lamb).  Hyperparameters are
the Keras defaults of fastopt and of the naive steps, and the same values
are given to torch, so all three run the same amount of arithmetic.

The benchmark names are the names of fastopt's Keras rules
(:data:`fastopt.rule.RULES`) plus ``adamw`` and, for an optimizer of PyTorch
only, its torch rule (``nadam_torch``, ``asgd_torch``, ``radam``, ``rprop``), and
``schedulefree_adamw``, compared with the ``schedulefree`` package's step.  An
optimizer that exists in one framework only runs under that framework's
convention whatever the benchmark's.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..hyperparams import convention_for
from ..optimizers import (ASGD, SGD, Adadelta, Adafactor, Adagrad, Adam, Adamax, AdamW, Ftrl, Lamb,
                          Lion, NAdam, Nadam, RAdam, RMSprop, Rprop, ScheduleFreeAdamW)
from . import naive

__all__ = ["Case", "CASES", "make_optimizer", "split_shapes", "timing_arrays",
           "fastopt_stepper", "naive_stepper", "torch_stepper"]


class Case(NamedTuple):
    """One benchmark optimizer."""

    cls: type           # the fastopt optimizer class
    options: dict       # its keyword arguments (besides params, backend, convention)
    rule: str           # the Keras rule it runs: its bytes per parameter
    torch: tuple        # (torch.optim class name, keyword arguments, "fused" or "foreach"),
                        # or None: torch.optim has no such optimizer; a dotted name
                        # ("schedulefree.AdamWScheduleFree") is a class of that module


_ADAM_T = {"lr": 0.001, "eps": 1e-7}
_RMS_T = {"lr": 0.001, "alpha": 0.9, "eps": 1e-7}

#: benchmark name -> :class:`Case`, in display order
CASES = {
    "sgd": Case(SGD, {}, "sgd", ("SGD", {"lr": 0.01}, "fused")),
    "sgd_momentum": Case(SGD, {"momentum": 0.3}, "sgd_momentum",
                         ("SGD", {"lr": 0.01, "momentum": 0.3}, "fused")),
    "sgd_nesterov": Case(SGD, {"momentum": 0.3, "nesterov": True}, "sgd_nesterov",
                         ("SGD", {"lr": 0.01, "momentum": 0.3, "nesterov": True}, "fused")),
    "adagrad": Case(Adagrad, {}, "adagrad",
                    ("Adagrad", {"lr": 0.001, "eps": 1e-7, "initial_accumulator_value": 0.1},
                     "fused")),
    "rmsprop": Case(RMSprop, {}, "rmsprop", ("RMSprop", _RMS_T, "foreach")),
    "rmsprop_momentum": Case(RMSprop, {"momentum": 0.5}, "rmsprop_momentum",
                             ("RMSprop", {**_RMS_T, "momentum": 0.5}, "foreach")),
    "rmsprop_centered": Case(RMSprop, {"centered": True}, "rmsprop_centered",
                             ("RMSprop", {**_RMS_T, "centered": True}, "foreach")),
    "rmsprop_centered_momentum": Case(
        RMSprop, {"centered": True, "momentum": 0.5}, "rmsprop_centered_momentum",
        ("RMSprop", {**_RMS_T, "centered": True, "momentum": 0.5}, "foreach")),
    "adam": Case(Adam, {}, "adam", ("Adam", _ADAM_T, "fused")),
    "adam_amsgrad": Case(Adam, {"amsgrad": True}, "adam_amsgrad",
                         ("Adam", {**_ADAM_T, "amsgrad": True}, "fused")),
    "adamw": Case(AdamW, {}, "adam", ("AdamW", {**_ADAM_T, "weight_decay": 0.004}, "fused")),
    # torch 2.13 has no fused Adamax: its multi-tensor (foreach) path
    "adamax": Case(Adamax, {}, "adamax", ("Adamax", _ADAM_T, "foreach")),
    # Keras 3 only, torch.optim has no Ftrl: the defaults (learning_rate_power
    # -0.5, square roots), and a general power (two pow per element)
    "ftrl_sqrt": Case(Ftrl, {}, "ftrl_sqrt", None),
    "ftrl": Case(Ftrl, {"learning_rate_power": -0.3}, "ftrl", None),
    "adadelta": Case(Adadelta, {}, "adadelta",
                     ("Adadelta", {"lr": 0.001, "rho": 0.95, "eps": 1e-7}, "foreach")),
    # Keras 3 only: torch.optim has no Lion
    "lion": Case(Lion, {}, "lion", None),
    # Keras 3 only: torch.optim has no Lamb (a two_phase rule: two passes)
    "lamb": Case(Lamb, {}, "lamb", None),
    # torch has no Keras Nadam: its NAdam (foreach), the same traffic and
    # nearly the same arithmetic
    "nadam": Case(Nadam, {}, "nadam", ("NAdam", _ADAM_T, "foreach")),
    # torch's own NAdam, at torch's defaults on both sides
    "nadam_torch": Case(NAdam, {}, "nadam_torch", ("NAdam", {"lr": 0.002}, "foreach")),
    "asgd_torch": Case(ASGD, {}, "asgd_torch", ("ASGD", {"lr": 0.01}, "foreach")),
    # torch only, at torch's defaults; torch 2.13 has no fused RAdam or Rprop
    "radam": Case(RAdam, {}, "radam_torch", ("RAdam", {"lr": 0.001, "eps": 1e-8}, "foreach")),
    "rprop": Case(Rprop, {}, "rprop_torch", ("Rprop", {"lr": 0.01}, "foreach")),
    # per-tensor: factored moments; torch's Adafactor (another epsilon
    # placement, the same passes) at the Keras learning rate; torch defaults
    # to its for-loop, foreach is timed too
    "adafactor": Case(Adafactor, {}, "adafactor", ("Adafactor", {"lr": 0.001}, "foreach")),
    # the authors' package (torch.optim has none), at its defaults on both sides; its
    # step also overwrites p.grad with the normalised update (one more write)
    "schedulefree_adamw": Case(ScheduleFreeAdamW, {}, "schedulefree_adamw",
                               ("schedulefree.AdamWScheduleFree", {"lr": 0.0025}, "foreach")),
}


def make_optimizer(name, params, backend="auto", convention=None, **options):
    """The fastopt optimizer of benchmark ``name`` over ``params``
    (``convention`` is ignored for a class of one framework only, such as
    Lion or RAdam, which runs its own).

    ``options`` are extra keyword arguments for the optimizer class, on top
    of the case's own (:attr:`Case.options`).
    """
    case = CASES[name]
    return case.cls(params, backend=backend, convention=convention_for(case.cls, convention),
                    **{**case.options, **options})


def split_shapes(total, count, seed=0):
    """``count`` tensor shapes of a small network, holding exactly ``total`` elements.

    Even positions are weight matrices, odd positions bias vectors: the
    matrices get log-uniform shares (about 10x to 1000x a bias's), and each
    tensor at least one element.  A matrix is ``(rows, cols)`` with ``cols``
    a divisor of its size near a log-uniform draw from 16 to 256 (1-D when
    its size has no such divisor).  ``count == 1`` gives ``[(total,)]``.
    """
    if not 1 <= count <= total:
        raise ValueError(f"count must be in [1, total={total}], got {count}")
    if count == 1:
        return [(total,)]
    rng = np.random.default_rng(seed)
    is_matrix = np.arange(count) % 2 == 0
    share = np.where(is_matrix, np.exp(rng.uniform(np.log(10), np.log(1000), count)), 1.0)
    share *= np.exp(rng.uniform(0, np.log(4), count))          # biases vary too
    exact = share / share.sum() * (total - count)                # one element each first
    sizes = np.floor(exact).astype(np.int64)
    rest = int(total - count - sizes.sum())
    sizes[np.argsort(exact - sizes)[::-1][:rest]] += 1           # largest remainders
    sizes += 1
    shapes = []
    for size, matrix in zip(sizes.tolist(), is_matrix):
        cols = int(np.exp(rng.uniform(np.log(16), np.log(256))))
        while matrix and cols > 1 and size % cols:
            cols -= 1
        shapes.append((size // cols, cols) if matrix and cols > 1 else (size,))
    return shapes


def timing_arrays(shapes, dtype, seed):
    """Parameters (standard normal) and gradients (standard normal x 1e-2)
    for timing: normal numbers only, so no step meets a subnormal."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [(rng.standard_normal(s) * 1e-2).astype(dtype) for s in shapes]
    return params, grads


def fastopt_stepper(name, params, grads, backend, convention=None, options=None):
    """``(optimizer, step)``: ``step()`` runs one fastopt step over ``params``."""
    opt = make_optimizer(name, params, backend, convention, **(options or {}))
    return opt, lambda: opt.step(grads)


def naive_stepper(name, params, grads):
    """A callable running the naive NumPy step of ``name`` over every tensor."""
    return naive.stepper(name, params, grads)


def torch_implementations(name):
    """The ``torch.optim`` implementations of ``name``'s twin worth timing:
    ``("fused",)`` where torch has a fused CPU one, else ``("foreach",
    "for-loop")`` (the faster of the two is the one to beat: for some
    optimizers, Adadelta among them, torch's for-loop beats its foreach)."""
    twin = CASES[name].torch
    if twin is None:
        return (None,)  # torch_stepper says that torch has no such optimizer
    return ("fused",) if twin[2] == "fused" else ("foreach", "for-loop")


def torch_stepper(name, params, grads, implementation=None):
    """``(step, implementation)`` for the ``torch.optim`` twin of ``name``.

    ``params`` and ``grads`` (NumPy arrays) are shared with torch tensors, not
    copied; ``implementation`` is ``"fused"``, ``"foreach"`` or ``"for-loop"``
    (default: the case's fused or foreach one).  Raises ImportError when torch
    cannot be imported, LookupError when torch.optim has no such optimizer.
    """
    import torch

    if CASES[name].torch is None:
        raise LookupError(f"torch.optim {torch.__version__} has no "
                          f"{CASES[name].cls.__name__}")
    cls, kwargs, impl = CASES[name].torch
    impl = impl if implementation is None else implementation
    tensors = []
    for p, g in zip(params, grads):
        t = torch.nn.Parameter(torch.from_numpy(p))
        t.grad = torch.from_numpy(g)
        tensors.append(t)
    flags = {"foreach": False} if impl == "for-loop" else {impl: True}
    if impl == "for-loop" and cls in ("Adam", "AdamW"):
        flags["fused"] = False
    if "." in cls:  # a torch optimizer of another package (ImportError without it)
        import importlib
        module, _, cls = cls.rpartition(".")
        opt = getattr(importlib.import_module(module), cls)(tensors, **kwargs, **flags)
    else:
        opt = getattr(torch.optim, cls)(tensors, **kwargs, **flags)
    if hasattr(opt, "train"):  # schedule-free: steps only in train mode
        opt.train()
    return opt.step, impl
