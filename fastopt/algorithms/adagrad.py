"""Adagrad: the :class:`Adagrad` class, its Keras and PyTorch rules, their
``prepare`` and ``element`` functions and the float64 references."""
from __future__ import annotations

import numpy as np

from .._validation import real
from ..optimizer import Optimizer
from ..rule import Rule


class Adagrad(Optimizer):
    """Adagrad: per-coordinate step sizes from the sum of squared gradients.

    Keras 3 formula (default; see :func:`fastopt.reference.adagrad`)::

        acc <- acc + g^2                 (acc starts at initial_accumulator_value)
        w   <- w - lr * g / sqrt(acc + epsilon)

    PyTorch formula (``convention="torch"``; see
    :func:`fastopt.reference.adagrad_torch`), ``t`` counting updates from 1::

        acc <- acc + g^2
        w   <- w - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(acc) + epsilon)

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.001 (keras), 0.01 (torch)
    initial_accumulator_value : float >= 0, default 0.1 (keras), 0 (torch)
    epsilon : float >= 0, default 1e-7 (keras), 1e-10 (torch)
    lr_decay : float >= 0, default 0 (torch convention only)
    **kwargs
        See :class:`fastopt.Optimizer`.
    """

    _DEFAULTS = {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7}
    _TORCH_DEFAULTS = {"learning_rate": 0.01, "initial_accumulator_value": 0.0,
                       "epsilon": 1e-10, "lr_decay": 0.0}
    _TORCH_ONLY = ("lr_decay",)
    _TORCH_NAMES = {**Optimizer._TORCH_NAMES, "eps": "epsilon"}

    def __init__(self, params, learning_rate=None, initial_accumulator_value=None,
                 epsilon=None, lr_decay=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"initial_accumulator_value": initial_accumulator_value,
                                "epsilon": epsilon, "lr_decay": lr_decay}, **kwargs)

    def _check(self, h, owner):
        return {"initial_accumulator_value": real(owner, "initial_accumulator_value",
                                                  h["initial_accumulator_value"], low=0.0),
                "epsilon": real(owner, "epsilon", h["epsilon"], low=0.0),
                "lr_decay": real(owner, "lr_decay", h["lr_decay"], low=0.0,
                                 allow_none=self.convention == "keras")}

    def _rule_name(self, h):
        return "adagrad_torch" if self.convention == "torch" else "adagrad"

    def _slot_init(self, h):
        return {"accumulator": h["initial_accumulator_value"]}

    def _scalars(self, h, lr, updates):
        if self.convention == "torch":
            return (lr, h["epsilon"], h["lr_decay"], updates + 1)
        return (lr, h["epsilon"])


# ---------------------------------------------------------------------------
# One element for both conventions: Keras puts epsilon inside the square root,
# PyTorch outside it (and decays the learning rate with the step count).

def prepare_adagrad(learning_rate, epsilon):
    return {"lr": learning_rate, "eps_in": epsilon, "eps_out": 0.0}


def prepare_adagrad_torch(learning_rate, epsilon, lr_decay, step):
    return {"lr": learning_rate / (1.0 + (step - 1.0) * lr_decay), "eps_in": 0.0,
            "eps_out": epsilon}


def element_adagrad(g, w, accumulator, lr, eps_in, eps_out):
    accumulator = accumulator + g * g
    w = w - lr * g / (sqrt(accumulator + eps_in) + eps_out)
    return w, accumulator


# ---------------------------------------------------------------------------
# The float64 references: the specification.

def _f64(x):
    return np.asarray(x, dtype=np.float64)


def adagrad(param, grad, accumulator, *, learning_rate, epsilon):
    """Adagrad (Keras: epsilon inside the square root)::

        acc <- acc + g^2
        w   <- w - lr * g / sqrt(acc + eps)
    """
    g = _f64(grad)
    acc = _f64(accumulator) + g * g
    return _f64(param) - learning_rate * g / np.sqrt(acc + epsilon), acc


def adagrad_torch(param, grad, accumulator, *, learning_rate, epsilon, lr_decay,
                  step):
    """PyTorch Adagrad (epsilon outside the square root, learning-rate decay)::

        clr <- lr / (1 + (step - 1) * lr_decay)
        acc <- acc + g^2
        w   <- w - clr * g / (sqrt(acc) + eps)
    """
    g = _f64(grad)
    clr = learning_rate / (1.0 + (step - 1) * lr_decay)
    acc = _f64(accumulator) + g * g
    return _f64(param) - clr * g / (np.sqrt(acc) + epsilon), acc


RULES = (
    Rule("adagrad", slots=("accumulator",), scalars=("learning_rate", "epsilon"),
         prepare=prepare_adagrad, element=element_adagrad, reference=adagrad, int8_refusal=None, nonnegative=('accumulator',)),
    Rule("adagrad_torch", slots=("accumulator",),
         scalars=("learning_rate", "epsilon", "lr_decay", "step"), convention="torch",
         prepare=prepare_adagrad_torch, element=element_adagrad, reference=adagrad_torch,
         torch_state=("sum",), int8_refusal=None, nonnegative=('accumulator',)),
)
