"""Lion: the sign of an interpolated momentum (Keras 3 only).

The :class:`Lion` class, its Keras rule, the rule's ``prepare`` and
``element`` functions (the element language, see :mod:`fastopt._codegen`)
and the float64 reference.  PyTorch 2.13 has no Lion, so the class offers the
Keras convention only.
"""
from __future__ import annotations

import numpy as np

from .._validation import real
from ..optimizer import Optimizer
from ..rule import Rule


class Lion(Optimizer):
    """Lion, "evolved sign momentum" (Chen et al., 2023), as Keras 3's
    ``keras.optimizers.Lion``.

    Keras 3 formulas (the only convention; see :func:`lion`)::

        c <- m * beta_1 + g * (1 - beta_1)
        w <- w - lr * sign(c)
        m <- m * beta_2 + g * (1 - beta_2)

    ``sign`` is 0 where ``c`` is 0 (an all-zero gradient on a zero momentum
    leaves the parameter where it is) and NaN where ``c`` is NaN.  Every
    element moves by exactly ``lr`` (or not at all), so Lion's learning rate
    is usually 3-10 times smaller than AdamW's, and its decoupled
    ``weight_decay`` (``w <- w * (1 - weight_decay * lr)`` first, as every
    Keras optimizer) 3-10 times larger.

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.001
    beta_1 : float in (0, 1], default 0.9
        The weight of the momentum in the direction ``c`` (Keras refuses
        ``beta_1 <= 0``, where Lion degenerates to sign SGD).
    beta_2 : float in [0, 1], default 0.99
        The decay of the momentum.
    **kwargs
        See :class:`fastopt.Optimizer`.  ``convention`` can only be
        ``"keras"`` (PyTorch 2.13 has no Lion).
    """

    _DEFAULTS = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.99}
    _CONVENTIONS = ("keras",)

    def __init__(self, params, learning_rate=None, beta_1=None, beta_2=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"beta_1": beta_1, "beta_2": beta_2}, **kwargs)

    def _check(self, h, owner):
        return {"beta_1": real(owner, "beta_1", h["beta_1"], low=0.0, high=1.0, low_open=True),
                "beta_2": real(owner, "beta_2", h["beta_2"], low=0.0, high=1.0)}

    def _rule_name(self, h):
        return "lion"

    def _scalars(self, h, lr, updates):
        return (lr, h["beta_1"], h["beta_2"])


# ---------------------------------------------------------------------------
# Per-step scalars (float64, once per step) and the element function, in
# Keras's order: the direction from the old momentum, then the momentum.

def prepare_lion(learning_rate, beta_1, beta_2):
    return {"lr": learning_rate, "beta_1": beta_1, "one_minus_beta_1": 1.0 - beta_1,
            "beta_2": beta_2, "one_minus_beta_2": 1.0 - beta_2}


def element_lion(g, w, momentum, lr, beta_1, one_minus_beta_1, beta_2, one_minus_beta_2):
    c = momentum * beta_1 + g * one_minus_beta_1
    w = w - lr * sign(c)
    momentum = momentum * beta_2 + g * one_minus_beta_2
    return w, momentum


# ---------------------------------------------------------------------------
# The float64 reference: the specification, written as whole-array NumPy.

def lion(param, grad, momentum, *, learning_rate, beta_1, beta_2):
    """Keras Lion (``momentum``)::

        c <- beta_1 * m + (1 - beta_1) * g
        w <- w - lr * sign(c)
        m <- beta_2 * m + (1 - beta_2) * g
    """
    g = np.asarray(grad, dtype=np.float64)
    m = np.asarray(momentum, dtype=np.float64)
    direction = np.sign(beta_1 * m + (1.0 - beta_1) * g)
    w = np.asarray(param, dtype=np.float64) - learning_rate * direction
    return w, beta_2 * m + (1.0 - beta_2) * g


RULES = (
    Rule("lion", slots=("momentum",), scalars=("learning_rate", "beta_1", "beta_2"),
         prepare=prepare_lion, element=element_lion, reference=lion),
)
