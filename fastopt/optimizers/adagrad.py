"""Adagrad."""
from __future__ import annotations

from .._validation import real
from .base import Optimizer


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
        See :class:`fastopt.optimizers.base.Optimizer`.
    """

    _DEFAULTS = {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7}
    _TORCH_DEFAULTS = {"learning_rate": 0.01, "initial_accumulator_value": 0.0,
                       "epsilon": 1e-10, "lr_decay": 0.0}
    _TORCH_ONLY = ("lr_decay",)

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
