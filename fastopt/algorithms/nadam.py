"""Nadam: Adam with Nesterov momentum (Dozat, 2016).

Keras 3's ``Nadam`` and PyTorch's ``NAdam`` schedule the momentum with the
same warm-up, ``mu_t = beta_1 * (1 - 0.5 * 0.96^(t * psi))`` (Keras: ``psi =
1``; torch: ``psi = momentum_decay``, default 0.004), and both keep the
running product of the ``mu_t`` across steps: host-side scalar state
(:attr:`fastopt.rule.Rule.host_state`), advanced once per applied step by
``advance_*`` and saved and restored with the slots.  The two frameworks
otherwise differ (the product's precision, where the learning rate and
epsilon sit, decoupled weight decay), and each exists in one framework only,
so they are two classes: :class:`Nadam` (Keras) and :class:`NAdam` (torch).
"""
from __future__ import annotations

import numpy as np

from .._validation import boolean, real
from ..optimizer import Optimizer
from ..rule import Rule


def _check_betas_epsilon(h, owner):
    return {"beta_1": real(owner, "beta_1", h["beta_1"], low=0.0, high=1.0, high_open=True),
            "beta_2": real(owner, "beta_2", h["beta_2"], low=0.0, high=1.0, high_open=True),
            "epsilon": real(owner, "epsilon", h["epsilon"], low=0.0)}


class Nadam(Optimizer):
    """Keras 3's Nadam (``keras.optimizers.Nadam``; Keras convention only).

    With ``t`` counting updates from 1, ``u_t = beta_1 * (1 - 0.5 * 0.96^t)``
    and ``P`` the running product ``u_1 * ... * u_t`` (kept across steps:
    :meth:`host_state` ``"u_product/<group>"``, 1 before the first step)::

        m <- beta_1 * m + (1 - beta_1) * g
        v <- beta_2 * v + (1 - beta_2) * g^2
        m_hat = u_{t+1} * m / (1 - P * u_{t+1}) + (1 - u_t) * g / (1 - P)
        w <- w - lr * m_hat / (sqrt(v / (1 - beta_2^t)) + epsilon)

    (see :func:`nadam`).  Under gradient accumulation the product advances
    on the updates only, as Keras's does.

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.001
    beta_1, beta_2 : float in [0, 1), defaults 0.9 and 0.999
    epsilon : float >= 0, default 1e-7
    **kwargs
        See :class:`fastopt.Optimizer` (``weight_decay`` is decoupled, as in
        Keras).  ``convention`` can only be ``"keras"``: PyTorch's NAdam has
        other formulas, see :class:`NAdam`.
    """

    _DEFAULTS = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
    _TORCH_DEFAULTS = _DEFAULTS
    _CONVENTIONS = ("keras",)

    def __init__(self, params, learning_rate=None, beta_1=None, beta_2=None, epsilon=None,
                 **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon},
                         **kwargs)

    def _check(self, h, owner):
        return _check_betas_epsilon(h, owner)

    def _rule_name(self, h):
        return "nadam"

    def _scalars(self, h, lr, updates):
        return (lr, h["beta_1"], h["beta_2"], h["epsilon"], updates + 1)


class NAdam(Optimizer):
    """PyTorch's NAdam (``torch.optim.NAdam``; torch convention only).

    With ``t`` counting updates from 1,
    ``mu_t = beta_1 * (1 - 0.5 * 0.96^(t * momentum_decay))`` and ``P`` the
    running product ``mu_1 * ... * mu_t``, rounded to float32 after every
    multiplication as torch keeps it (a float32 tensor ``mu_product`` under
    torch's default dtype; :meth:`host_state` ``"mu_product/<group>"``)::

        m <- m + (1 - beta_1) * (g - m)
        v <- beta_2 * v + (1 - beta_2) * g^2
        d = sqrt(v / (1 - beta_2^t)) + epsilon
        w <- w - lr * (1 - mu_t) / (1 - P) * g / d
        w <- w - lr * mu_{t+1} / (1 - P * mu_{t+1}) * m / d

    (see :func:`nadam_torch`).  ``weight_decay`` is L2 (``g <- g + wd * w``)
    or, with ``decoupled_weight_decay=True``, ``w <- w * (1 - lr * wd)``
    before the update (NAdamW).

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.002
        torch's ``lr``.
    beta_1, beta_2 : float in [0, 1), defaults 0.9 and 0.999
        torch's ``betas``.
    epsilon : float >= 0, default 1e-8
        torch's ``eps``.
    momentum_decay : float >= 0, default 0.004
    decoupled_weight_decay : bool, default False
    **kwargs
        See :class:`fastopt.Optimizer`.  ``convention`` can only be
        ``"torch"``: Keras's Nadam has other formulas, see :class:`Nadam`.
    """

    _TORCH_DEFAULTS = {"learning_rate": 0.002, "beta_1": 0.9, "beta_2": 0.999,
                       "epsilon": 1e-8, "momentum_decay": 4e-3,
                       "decoupled_weight_decay": False}
    _DEFAULTS = _TORCH_DEFAULTS
    _CONVENTIONS = ("torch",)
    _TORCH_NAMES = {**Optimizer._TORCH_NAMES, "betas": "beta_1 and beta_2", "eps": "epsilon"}

    def __init__(self, params, learning_rate=None, beta_1=None, beta_2=None, epsilon=None,
                 momentum_decay=None, decoupled_weight_decay=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon,
                                "momentum_decay": momentum_decay,
                                "decoupled_weight_decay": decoupled_weight_decay},
                         **kwargs)

    def _check(self, h, owner):
        return {**_check_betas_epsilon(h, owner),
                "momentum_decay": real(owner, "momentum_decay", h["momentum_decay"], low=0.0),
                "decoupled_weight_decay": boolean(owner, "decoupled_weight_decay",
                                                  h["decoupled_weight_decay"])}

    def _rule_name(self, h):
        return "nadam_torch"

    def _scalars(self, h, lr, updates):
        return (lr, h["beta_1"], h["beta_2"], h["epsilon"], h["momentum_decay"], updates + 1)


# ---------------------------------------------------------------------------
# The running products (host, once per applied step; the kernel reads the
# advanced value), the per-step scalars and the element functions.

def advance_nadam(learning_rate, beta_1, beta_2, epsilon, step, u_product):
    # Keras (torch backend): u_product_t = u_product * (beta_1 * (1 - 0.5 * 0.96^t)),
    # in the variables' dtype (float64 here)
    return {"u_product": u_product * (beta_1 * (1.0 - 0.5 * 0.96 ** step))}


def prepare_nadam(learning_rate, beta_1, beta_2, epsilon, step, u_product):
    u_t = beta_1 * (1.0 - 0.5 * 0.96 ** step)
    u_next = beta_1 * (1.0 - 0.5 * 0.96 ** (step + 1.0))
    return {"lr": learning_rate, "beta_1": beta_1, "one_minus_beta_1": 1.0 - beta_1,
            "beta_2": beta_2, "one_minus_beta_2": 1.0 - beta_2, "eps": epsilon,
            "c_m": u_next / (1.0 - u_product * u_next), "c_g": (1.0 - u_t) / (1.0 - u_product),
            "bc2": 1.0 - beta_2 ** step}


def element_nadam(g, w, momentum, velocity, lr, beta_1, one_minus_beta_1, beta_2,
                  one_minus_beta_2, eps, c_m, c_g, bc2):
    momentum = beta_1 * momentum + one_minus_beta_1 * g
    velocity = beta_2 * velocity + one_minus_beta_2 * (g * g)
    w = w - (momentum * c_m + g * c_g) * lr / (sqrt(velocity / bc2) + eps)
    return w, momentum, velocity


def advance_nadam_torch(learning_rate, beta_1, beta_2, epsilon, momentum_decay, step,
                        mu_product):
    # torch: ``mu_product *= mu`` on a float32 0-d tensor (torch's default
    # dtype), a float32 multiplication of float32(mu_product) by float32(mu)
    mu = beta_1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))
    return {"mu_product": float(np.float32(mu_product) * np.float32(mu))}


def prepare_nadam_torch(learning_rate, beta_1, beta_2, epsilon, momentum_decay, step,
                        mu_product):
    mu = beta_1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))
    mu_next = beta_1 * (1.0 - 0.5 * 0.96 ** ((step + 1.0) * momentum_decay))
    return {"one_minus_beta_1": 1.0 - beta_1, "beta_2": beta_2,
            "one_minus_beta_2": 1.0 - beta_2, "bc2": 1.0 - beta_2 ** step, "eps": epsilon,
            "c_g": -learning_rate * (1.0 - mu) / (1.0 - mu_product),
            "c_m": -learning_rate * mu_next / (1.0 - mu_product * mu_next)}


def element_nadam_torch(g, w, momentum, velocity, one_minus_beta_1, beta_2, one_minus_beta_2,
                        bc2, eps, c_g, c_m):
    momentum = momentum + (g - momentum) * one_minus_beta_1
    velocity = velocity * beta_2 + one_minus_beta_2 * (g * g)
    denom = sqrt(velocity / bc2) + eps
    w = w + c_g * (g / denom)
    w = w + c_m * (momentum / denom)
    return w, momentum, velocity


# ---------------------------------------------------------------------------
# The float64 references: the specification, written as whole-array NumPy.

def nadam(param, grad, momentum, velocity, *, learning_rate, beta_1, beta_2, epsilon, step,
          u_product):
    """Keras Nadam (``step`` counts updates from 1; ``u_product`` is the
    running product of ``u_s = beta_1 * (1 - 0.5 * 0.96^s)`` over
    ``s = 1..step``, this step's factor included)::

        m <- beta_1 * m + (1 - beta_1) * g
        v <- beta_2 * v + (1 - beta_2) * g^2
        m_hat = u_{step+1} * m / (1 - u_product * u_{step+1})
                + (1 - u_step) * g / (1 - u_product)
        w <- w - lr * m_hat / (sqrt(v / (1 - beta_2^step)) + eps)
    """
    g = np.asarray(grad, dtype=np.float64)
    m = beta_1 * np.asarray(momentum, dtype=np.float64) + (1.0 - beta_1) * g
    v = beta_2 * np.asarray(velocity, dtype=np.float64) + (1.0 - beta_2) * np.square(g)
    u_now = beta_1 * (1.0 - 0.5 * np.power(0.96, step))
    u_next = beta_1 * (1.0 - 0.5 * np.power(0.96, step + 1))
    m_hat = u_next * m / (1.0 - u_product * u_next) + (1.0 - u_now) * g / (1.0 - u_product)
    v_hat = v / (1.0 - np.power(beta_2, step))
    w = np.asarray(param, dtype=np.float64) - learning_rate * m_hat / (np.sqrt(v_hat) + epsilon)
    return w, m, v


def nadam_torch(param, grad, momentum, velocity, *, learning_rate, beta_1, beta_2, epsilon,
                momentum_decay, step, mu_product):
    """PyTorch NAdam (``exp_avg``, ``exp_avg_sq``; ``step`` counts from 1;
    ``mu_product`` is torch's state after this step, the product of
    ``mu_s = beta_1 * (1 - 0.5 * 0.96^(s * momentum_decay))`` over
    ``s = 1..step``)::

        m <- m + (1 - beta_1) * (g - m)
        v <- beta_2 * v + (1 - beta_2) * g^2
        d = sqrt(v / (1 - beta_2^step)) + eps
        w <- w - lr * (1 - mu_step) / (1 - mu_product) * g / d
               - lr * mu_{step+1} / (1 - mu_product * mu_{step+1}) * m / d
    """
    g = np.asarray(grad, dtype=np.float64)
    m = np.asarray(momentum, dtype=np.float64)
    m = m + (1.0 - beta_1) * (g - m)
    v = beta_2 * np.asarray(velocity, dtype=np.float64) + (1.0 - beta_2) * np.square(g)
    mu = beta_1 * (1.0 - 0.5 * np.power(0.96, step * momentum_decay))
    mu_next = beta_1 * (1.0 - 0.5 * np.power(0.96, (step + 1) * momentum_decay))
    d = np.sqrt(v / (1.0 - np.power(beta_2, step))) + epsilon
    w = np.asarray(param, dtype=np.float64)
    w = w - learning_rate * (1.0 - mu) / (1.0 - mu_product) * (g / d)
    w = w - learning_rate * mu_next / (1.0 - mu_product * mu_next) * (m / d)
    return w, m, v


RULES = (
    Rule("nadam", slots=("momentum", "velocity"),
         scalars=("learning_rate", "beta_1", "beta_2", "epsilon", "step", "u_product"),
         prepare=prepare_nadam, element=element_nadam, reference=nadam,
         host_state=("u_product",), host_init=(1.0,), advance=advance_nadam),
    Rule("nadam_torch", slots=("momentum", "velocity"), convention="torch",
         scalars=("learning_rate", "beta_1", "beta_2", "epsilon", "momentum_decay", "step",
                  "mu_product"),
         prepare=prepare_nadam_torch, element=element_nadam_torch, reference=nadam_torch,
         torch_state=("exp_avg", "exp_avg_sq"),
         host_state=("mu_product",), host_init=(1.0,), advance=advance_nadam_torch),
)
