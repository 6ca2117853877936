"""RAdam: Adam whose adaptive step is switched on, and rectified, once the
variance of its adaptive learning rate is tractable (Liu et al., 2020).

PyTorch only (``torch.optim.RAdam``; Keras 3 has no RAdam): the :class:`RAdam`
class, its rule, the rule's ``prepare`` and ``element`` functions (the element
language, see :mod:`fastopt._codegen`) and the float64 reference.
"""
from __future__ import annotations

import math

import numpy as np

from .._validation import boolean, real
from ..optimizer import Optimizer
from ..rule import Rule


class RAdam(Optimizer):
    """RAdam, as PyTorch 2.13's ``torch.optim.RAdam`` (``convention="torch"``,
    the only convention: Keras has no RAdam).

    With ``t`` counting updates from 1, ``bc1 = 1 - beta_1^t``,
    ``bc2 = 1 - beta_2^t`` (see :func:`radam_torch`)::

        m     <- m + (1 - beta_1) * (g - m)
        v     <- beta_2 * v + (1 - beta_2) * g^2
        rho_inf = 2 / (1 - beta_2) - 1
        rho_t   = rho_inf - 2 t beta_2^t / bc2
        rho_t > 5:  r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
                    w <- w - lr * (m / bc1) * r * sqrt(bc2) / (sqrt(v) + epsilon)
        otherwise:  w <- w - lr * (m / bc1)

    ``rho_t`` depends on the step count only, so which of the two updates a
    step makes is decided once per step on the host.

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.001
        PyTorch's ``lr``.
    beta_1, beta_2 : float in [0, 1), defaults 0.9 and 0.999
        PyTorch's ``betas``.
    epsilon : float >= 0, default 1e-8
        PyTorch's ``eps``.
    decoupled_weight_decay : bool, default False
        False: ``weight_decay`` is L2, ``g <- g + weight_decay * w``; True:
        decoupled, ``w <- w * (1 - lr * weight_decay)`` before the update
        (PyTorch's "RAdamW").  A parameter group may set it.
    **kwargs
        See :class:`fastopt.Optimizer` (``weight_decay``, ``maximize``,
        clipping, ...).  ``convention`` may only be ``"torch"``.

    Notes
    -----
    PyTorch's names and fastopt's:

    ==========================  =========================
    ``torch.optim.RAdam``       ``fastopt.RAdam``
    ==========================  =========================
    ``lr``                      ``learning_rate``
    ``betas=(b1, b2)``          ``beta_1=b1, beta_2=b2``
    ``eps``                     ``epsilon``
    ``weight_decay``            ``weight_decay``
    ``decoupled_weight_decay``  ``decoupled_weight_decay``
    ``maximize``                ``maximize``
    ==========================  =========================
    """

    _CONVENTIONS = ("torch",)
    _DEFAULTS = {}
    _TORCH_DEFAULTS = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8,
                       "decoupled_weight_decay": False}
    _TORCH_NAMES = {**Optimizer._TORCH_NAMES, "betas": "beta_1 and beta_2", "eps": "epsilon"}

    def __init__(self, params, learning_rate=None, beta_1=None, beta_2=None, epsilon=None,
                 decoupled_weight_decay=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon,
                                "decoupled_weight_decay": decoupled_weight_decay},
                         **kwargs)

    def _check(self, h, owner):
        return {"beta_1": real(owner, "beta_1", h["beta_1"], low=0.0, high=1.0, high_open=True),
                "beta_2": real(owner, "beta_2", h["beta_2"], low=0.0, high=1.0, high_open=True),
                "epsilon": real(owner, "epsilon", h["epsilon"], low=0.0),
                "decoupled_weight_decay": boolean(owner, "decoupled_weight_decay",
                                                  h["decoupled_weight_decay"])}

    def _rule_name(self, h):
        return "radam_torch"

    def _scalars(self, h, lr, updates):
        return (lr, h["beta_1"], h["beta_2"], h["epsilon"], updates + 1)


# ---------------------------------------------------------------------------
# Per-step scalars and the element function.  The step either rectifies
# (adaptive step: lr_adaptive / (sqrt(v) + eps), lr_sgd = 0) or not (an SGD
# step with the bias-corrected momentum: lr_sgd, lr_adaptive = 0); one element
# function serves both, the host choosing the scalars.  In the step without
# rectification eps is 1, which only keeps 0 / (sqrt(v) + eps) a zero where v
# and epsilon are 0 (0/0 would be NaN).

def prepare_radam_torch(learning_rate, beta_1, beta_2, epsilon, step):
    bc1 = 1.0 - beta_1 ** step
    bc2 = 1.0 - beta_2 ** step
    rho_inf = 2.0 / (1.0 - beta_2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta_2 ** step / bc2
    if rho_t > 5.0:
        rect = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                         / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        return {"one_minus_beta_1": 1.0 - beta_1, "beta_2": beta_2,
                "one_minus_beta_2": 1.0 - beta_2, "lr_sgd": 0.0,
                "lr_adaptive": learning_rate * rect * math.sqrt(bc2) / bc1, "eps": epsilon}
    return {"one_minus_beta_1": 1.0 - beta_1, "beta_2": beta_2,
            "one_minus_beta_2": 1.0 - beta_2, "lr_sgd": learning_rate / bc1,
            "lr_adaptive": 0.0, "eps": 1.0}


def element_radam_torch(g, w, momentum, velocity, one_minus_beta_1, beta_2, one_minus_beta_2,
                        lr_sgd, lr_adaptive, eps):
    momentum = momentum + (g - momentum) * one_minus_beta_1
    velocity = beta_2 * velocity + one_minus_beta_2 * (g * g)
    w = w - momentum * (lr_sgd + lr_adaptive / (sqrt(velocity) + eps))
    return w, momentum, velocity


# ---------------------------------------------------------------------------
# The float64 reference: the specification, written as whole-array NumPy.

def radam_torch(param, grad, momentum, velocity, *, learning_rate, beta_1, beta_2, epsilon,
                step):
    """PyTorch RAdam (``exp_avg``, ``exp_avg_sq``; ``step`` counts from 1)::

        m <- m + (1 - beta_1) * (g - m)
        v <- beta_2 * v + (1 - beta_2) * g^2
        m_hat = m / (1 - beta_1^step)
        rho_inf = 2 / (1 - beta_2) - 1
        rho = rho_inf - 2 step beta_2^step / (1 - beta_2^step)
        rho > 5:    l = sqrt(1 - beta_2^step) / (sqrt(v) + eps)
                    r = sqrt((rho - 4)(rho - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho))
                    w <- w - lr * m_hat * l * r
        otherwise:  w <- w - lr * m_hat
    """
    g = np.asarray(grad, dtype=np.float64)
    m = np.asarray(momentum, dtype=np.float64)
    m = m + (1.0 - beta_1) * (g - m)
    v = beta_2 * np.asarray(velocity, dtype=np.float64) + (1.0 - beta_2) * np.square(g)
    m_hat = m / (1.0 - beta_1 ** step)
    w = np.asarray(param, dtype=np.float64)
    rho_inf = 2.0 / (1.0 - beta_2) - 1.0
    rho = rho_inf - 2.0 * step * beta_2 ** step / (1.0 - beta_2 ** step)
    if rho > 5.0:
        adaptive = math.sqrt(1.0 - beta_2 ** step) / (np.sqrt(v) + epsilon)
        rect = math.sqrt((rho - 4.0) * (rho - 2.0) * rho_inf
                         / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho))
        return w - learning_rate * m_hat * adaptive * rect, m, v
    return w - learning_rate * m_hat, m, v


RULES = (
    Rule("radam_torch", slots=("momentum", "velocity"),
         scalars=("learning_rate", "beta_1", "beta_2", "epsilon", "step"), convention="torch",
         prepare=prepare_radam_torch, element=element_radam_torch, reference=radam_torch,
         torch_state=("exp_avg", "exp_avg_sq")),
)
