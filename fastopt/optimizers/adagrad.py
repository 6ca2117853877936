"""Adagrad."""
from __future__ import annotations

from .._validation import real
from .base import Optimizer


class Adagrad(Optimizer):
    """Adagrad: per-coordinate step sizes from the sum of squared gradients.

    Keras 3 formula (see :func:`fastopt.reference.adagrad`)::

        acc <- acc + g^2                 (acc starts at initial_accumulator_value)
        w   <- w - lr * g / sqrt(acc + epsilon)

    Parameters
    ----------
    params : array, list/tuple of arrays, or dict of arrays
    learning_rate : float or schedule, default 0.001
    initial_accumulator_value : float >= 0, default 0.1
    epsilon : float >= 0, default 1e-7
    **kwargs
        See :class:`fastopt.optimizers.base.Optimizer`.
    """

    _DEFAULTS = {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7}

    def __init__(self, params, learning_rate=None, initial_accumulator_value=None,
                 epsilon=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"initial_accumulator_value": initial_accumulator_value,
                                "epsilon": epsilon}, **kwargs)

    def _check(self, h):
        return {"initial_accumulator_value": real("Adagrad", "initial_accumulator_value",
                                                  h["initial_accumulator_value"], low=0.0),
                "epsilon": real("Adagrad", "epsilon", h["epsilon"], low=0.0)}

    def _rule_name(self):
        return "adagrad"

    def _slot_init(self):
        return {"accumulator": self._hyper["initial_accumulator_value"]}

    def _scalars(self, lr, iteration):
        return (lr, self._hyper["epsilon"])
