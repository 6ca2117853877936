"""Adamax: Adam with the infinity norm in place of the second moment.

The whole family in one module -- the :class:`Adamax` class, its Keras and
PyTorch rules, their ``prepare`` and ``element`` functions (the element
language, see :mod:`fastopt._codegen`) and the float64 references.  It is the
worked example of the contributor guide (``docs/adding-an-optimizer.md``).
"""
from __future__ import annotations

import numpy as np

from .._validation import real
from ..optimizer import Optimizer
from ..rule import Rule


class Adamax(Optimizer):
    """Adamax (Kingma & Ba, 2015, section 7.1).

    Keras 3 formulas (default; see :func:`adamax`), ``t`` counting updates
    from 1::

        m <- m + (g - m) * (1 - beta_1)
        u <- max(beta_2 * u, |g|)
        w <- w - lr * m / ((1 - beta_1^t) * (u + epsilon))

    PyTorch formulas (``convention="torch"``; see :func:`adamax_torch`)::

        m <- m + (g - m) * (1 - beta_1)
        u <- max(beta_2 * u, |g| + epsilon)
        w <- w - lr / (1 - beta_1^t) * (m / u)

    ``max`` follows NumPy (a NaN wins), as ``torch.maximum`` and Keras's
    ``ops.maximum`` do.

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.001 (keras), 0.002 (torch)
    beta_1, beta_2 : float in [0, 1), defaults 0.9 and 0.999
        PyTorch's ``betas``.
    epsilon : float >= 0, default 1e-7 (keras), 1e-8 (torch)
        PyTorch's ``eps``.
    **kwargs
        See :class:`fastopt.Optimizer`.  ``weight_decay`` is
        decoupled under the Keras convention and L2 under the torch one, as
        in the frameworks.
    """

    _DEFAULTS = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
    _TORCH_DEFAULTS = {**_DEFAULTS, "learning_rate": 0.002, "epsilon": 1e-8}
    _TORCH_NAMES = {**Optimizer._TORCH_NAMES, "betas": "beta_1 and beta_2", "eps": "epsilon"}

    def __init__(self, params, learning_rate=None, beta_1=None, beta_2=None, epsilon=None,
                 **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon},
                         **kwargs)

    def _check(self, h, owner):
        return {"beta_1": real(owner, "beta_1", h["beta_1"], low=0.0, high=1.0, high_open=True),
                "beta_2": real(owner, "beta_2", h["beta_2"], low=0.0, high=1.0, high_open=True),
                "epsilon": real(owner, "epsilon", h["epsilon"], low=0.0)}

    def _rule_name(self, h):
        return "adamax_torch" if self.convention == "torch" else "adamax"

    def _scalars(self, h, lr, updates):
        return (lr, h["beta_1"], h["beta_2"], h["epsilon"], updates + 1)


# ---------------------------------------------------------------------------
# Per-step scalars (float64, once per step) and the element functions.  The
# conventions differ in where epsilon sits and in the order of the final
# division, so each has its own element.

def prepare_adamax(learning_rate, beta_1, beta_2, epsilon, step):
    return {"lr": learning_rate, "one_minus_beta_1": 1.0 - beta_1, "beta_2": beta_2,
            "eps": epsilon, "bc1": 1.0 - beta_1 ** step}


def element_adamax(g, w, momentum, norm, lr, one_minus_beta_1, beta_2, eps, bc1):
    momentum = momentum + (g - momentum) * one_minus_beta_1
    norm = max(beta_2 * norm, abs(g))
    w = w - lr * momentum / (bc1 * (norm + eps))
    return w, momentum, norm


def prepare_adamax_torch(learning_rate, beta_1, beta_2, epsilon, step):
    return {"clr": learning_rate / (1.0 - beta_1 ** step), "one_minus_beta_1": 1.0 - beta_1,
            "beta_2": beta_2, "eps": epsilon}


def element_adamax_torch(g, w, momentum, norm, clr, one_minus_beta_1, beta_2, eps):
    momentum = momentum + (g - momentum) * one_minus_beta_1
    norm = max(beta_2 * norm, abs(g) + eps)
    w = w - clr * (momentum / norm)
    return w, momentum, norm


# ---------------------------------------------------------------------------
# The float64 references: the specification, written as whole-array NumPy.

def adamax(param, grad, momentum, norm, *, learning_rate, beta_1, beta_2, epsilon, step):
    """Keras Adamax (``step`` counts updates from 1)::

        m <- m + (g - m) * (1 - beta_1)
        u <- max(beta_2 * u, |g|)
        w <- w - lr * m / ((1 - beta_1^step) * (u + eps))
    """
    g = np.asarray(grad, dtype=np.float64)
    m = np.asarray(momentum, dtype=np.float64)
    m = m + (1.0 - beta_1) * (g - m)
    u = np.maximum(beta_2 * np.asarray(norm, dtype=np.float64), np.abs(g))
    w = np.asarray(param, dtype=np.float64)
    return w - (learning_rate * m) / ((1.0 - beta_1 ** step) * (u + epsilon)), m, u


def adamax_torch(param, grad, momentum, norm, *, learning_rate, beta_1, beta_2, epsilon,
                 step):
    """PyTorch Adamax (``exp_avg``, ``exp_inf``; ``step`` counts from 1)::

        m <- m + (1 - beta_1) * (g - m)
        u <- max(beta_2 * u, |g| + eps)
        w <- w - lr / (1 - beta_1^step) * m / u
    """
    g = np.asarray(grad, dtype=np.float64)
    m = np.asarray(momentum, dtype=np.float64)
    m = m + (1.0 - beta_1) * (g - m)
    u = np.maximum(beta_2 * np.asarray(norm, dtype=np.float64), np.abs(g) + epsilon)
    step_size = learning_rate / (1.0 - beta_1 ** step)
    return np.asarray(param, dtype=np.float64) - step_size * (m / u), m, u


_SCALARS = ("learning_rate", "beta_1", "beta_2", "epsilon", "step")

RULES = (
    Rule("adamax", slots=("momentum", "norm"), scalars=_SCALARS, prepare=prepare_adamax,
         element=element_adamax, reference=adamax),
    Rule("adamax_torch", slots=("momentum", "norm"), scalars=_SCALARS, convention="torch",
         prepare=prepare_adamax_torch, element=element_adamax_torch, reference=adamax_torch,
         torch_state=("exp_avg", "exp_inf")),
)
