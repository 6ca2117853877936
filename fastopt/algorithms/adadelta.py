"""Adadelta: steps scaled by the ratio of two running RMS values.

The :class:`Adadelta` class, its Keras and PyTorch rules, their ``prepare``
and ``element`` functions (the element language, see :mod:`fastopt._codegen`)
and the float64 references.
"""
from __future__ import annotations

import numpy as np

from .._validation import real
from ..optimizer import Optimizer
from ..rule import Rule


class Adadelta(Optimizer):
    """Adadelta (Zeiler, 2012).

    Both frameworks keep the running mean of the squared gradients
    (Keras's ``accumulated_grad``, torch's ``square_avg``) and of the squared
    updates (``accumulated_delta_var``, ``acc_delta``), and put epsilon
    inside both square roots.  Keras 3 formulas (default; see
    :func:`adadelta`)::

        a_g   <- rho * a_g + (1 - rho) * g^2
        delta <- sqrt(a_d + epsilon) * g / sqrt(a_g + epsilon)
        a_d   <- rho * a_d + (1 - rho) * delta^2
        w     <- w - lr * delta

    PyTorch formulas (``convention="torch"``; see :func:`adadelta_torch`):
    the same, with the ratio of the square roots taken first,
    ``delta <- sqrt(a_d + epsilon) / sqrt(a_g + epsilon) * g``, and torch's
    defaults, which differ: ``lr=1.0`` (the paper's, no learning rate),
    ``rho=0.9``, ``eps=1e-6`` against Keras's 0.001, 0.95 and 1e-7.

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.001 (keras), 1.0 (torch)
    rho : float in [0, 1], default 0.95 (keras), 0.9 (torch)
        The decay of both running means.
    epsilon : float >= 0, default 1e-7 (keras), 1e-6 (torch)
        PyTorch's ``eps``.
    **kwargs
        See :class:`fastopt.Optimizer`.  ``weight_decay`` is decoupled under
        the Keras convention and L2 under the torch one, and ``maximize``
        negates the gradient first, as in the frameworks.
    """

    _DEFAULTS = {"learning_rate": 0.001, "rho": 0.95, "epsilon": 1e-7}
    _TORCH_DEFAULTS = {"learning_rate": 1.0, "rho": 0.9, "epsilon": 1e-6}
    _TORCH_NAMES = {**Optimizer._TORCH_NAMES, "eps": "epsilon"}

    def __init__(self, params, learning_rate=None, rho=None, epsilon=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"rho": rho, "epsilon": epsilon}, **kwargs)

    def _check(self, h, owner):
        return {"rho": real(owner, "rho", h["rho"], low=0.0, high=1.0),
                "epsilon": real(owner, "epsilon", h["epsilon"], low=0.0)}

    def _rule_name(self, h):
        return "adadelta_torch" if self.convention == "torch" else "adadelta"

    def _scalars(self, h, lr, updates):
        return (lr, h["rho"], h["epsilon"])


# ---------------------------------------------------------------------------
# Per-step scalars (float64, once per step) and the element functions.  The
# conventions compute the same quantities in a different order (Keras
# multiplies by g before dividing, torch divides the square roots first), so
# each has its own element, in its framework's order.

def prepare_adadelta(learning_rate, rho, epsilon):
    return {"lr": learning_rate, "rho": rho, "one_minus_rho": 1.0 - rho, "eps": epsilon}


def element_adadelta(g, w, accumulated_grad, accumulated_delta_var, lr, rho, one_minus_rho,
                     eps):
    accumulated_grad = accumulated_grad * rho + (g * g) * one_minus_rho
    delta = sqrt(accumulated_delta_var + eps) * g / sqrt(accumulated_grad + eps)
    accumulated_delta_var = accumulated_delta_var * rho + (delta * delta) * one_minus_rho
    w = w - lr * delta
    return w, accumulated_grad, accumulated_delta_var


def element_adadelta_torch(g, w, accumulated_grad, accumulated_delta_var, lr, rho,
                           one_minus_rho, eps):
    accumulated_grad = accumulated_grad * rho + one_minus_rho * g * g
    delta = sqrt(accumulated_delta_var + eps) / sqrt(accumulated_grad + eps) * g
    accumulated_delta_var = accumulated_delta_var * rho + one_minus_rho * delta * delta
    w = w - lr * delta
    return w, accumulated_grad, accumulated_delta_var


# ---------------------------------------------------------------------------
# The float64 references: the specification, written as whole-array NumPy.

def adadelta(param, grad, accumulated_grad, accumulated_delta_var, *, learning_rate, rho,
             epsilon):
    """Keras Adadelta (``accumulated_grad``, ``accumulated_delta_var``)::

        a_g   <- rho * a_g + (1 - rho) * g^2
        delta <- sqrt(a_d + eps) * g / sqrt(a_g + eps)
        a_d   <- rho * a_d + (1 - rho) * delta^2
        w     <- w - lr * delta
    """
    g = np.asarray(grad, dtype=np.float64)
    a_g = rho * np.asarray(accumulated_grad, dtype=np.float64) + (1.0 - rho) * np.square(g)
    a_d = np.asarray(accumulated_delta_var, dtype=np.float64)
    delta = np.sqrt(a_d + epsilon) * g / np.sqrt(a_g + epsilon)
    a_d = rho * a_d + (1.0 - rho) * np.square(delta)
    return np.asarray(param, dtype=np.float64) - learning_rate * delta, a_g, a_d


def adadelta_torch(param, grad, accumulated_grad, accumulated_delta_var, *, learning_rate,
                   rho, epsilon):
    """PyTorch Adadelta (``square_avg``, ``acc_delta``)::

        a_g   <- rho * a_g + (1 - rho) * g^2
        delta <- sqrt(a_d + eps) / sqrt(a_g + eps) * g
        a_d   <- rho * a_d + (1 - rho) * delta^2
        w     <- w - lr * delta
    """
    g = np.asarray(grad, dtype=np.float64)
    a_g = rho * np.asarray(accumulated_grad, dtype=np.float64) + (1.0 - rho) * np.square(g)
    a_d = np.asarray(accumulated_delta_var, dtype=np.float64)
    delta = np.sqrt(a_d + epsilon) / np.sqrt(a_g + epsilon) * g
    a_d = rho * a_d + (1.0 - rho) * np.square(delta)
    return np.asarray(param, dtype=np.float64) - learning_rate * delta, a_g, a_d


_SLOTS = ("accumulated_grad", "accumulated_delta_var")
_SCALARS = ("learning_rate", "rho", "epsilon")

RULES = (
    Rule("adadelta", slots=_SLOTS, scalars=_SCALARS, prepare=prepare_adadelta,
         element=element_adadelta, reference=adadelta),
    Rule("adadelta_torch", slots=_SLOTS, scalars=_SCALARS, convention="torch",
         prepare=prepare_adadelta, element=element_adadelta_torch, reference=adadelta_torch,
         torch_state=("square_avg", "acc_delta")),
)
