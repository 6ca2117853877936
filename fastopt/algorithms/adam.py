"""Adam and AdamW, with optional AMSGrad: the classes, the four rules, their
``prepare`` and ``element`` functions and the float64 references."""
from __future__ import annotations

import math

import numpy as np

from .._validation import boolean, real
from ..optimizer import Optimizer
from ..rule import Rule


class Adam(Optimizer):
    """Adam, with optional AMSGrad.

    Keras 3 formulas (see :func:`fastopt.reference.adam`), with
    ``t = iterations + 1``::

        alpha <- lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)     (host, float64)
        m     <- m + (g - m) * (1 - beta_1)
        v     <- v + (g^2 - v) * (1 - beta_2)
        vhat  <- max(vhat, v)                                 (amsgrad=True)
        w     <- w - m * alpha / (sqrt(v or vhat) + epsilon)

    PyTorch formula (``convention="torch"``; see
    :func:`fastopt.reference.adam_torch`): the same ``m``, ``v`` and ``vhat``,
    with epsilon added after the bias correction of ``v``::

        w <- w - lr / (1 - beta_1^t) * m / (sqrt(v or vhat) / sqrt(1 - beta_2^t) + epsilon)

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.001
    beta_1, beta_2 : float in [0, 1), defaults 0.9 and 0.999
    epsilon : float >= 0, default 1e-7 (keras), 1e-8 (torch)
    amsgrad : bool, default False
    **kwargs
        See :class:`fastopt.Optimizer`.  ``weight_decay`` is
        decoupled under the Keras convention and L2 under the torch one (use
        :class:`AdamW` for PyTorch's decoupled form).
    """

    _DEFAULTS = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
                 "amsgrad": False}
    _TORCH_DEFAULTS = {**_DEFAULTS, "epsilon": 1e-8}
    _TORCH_NAMES = {**Optimizer._TORCH_NAMES, "betas": "beta_1 and beta_2", "eps": "epsilon"}

    def __init__(self, params, learning_rate=None, beta_1=None, beta_2=None, epsilon=None,
                 amsgrad=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon,
                                "amsgrad": amsgrad}, **kwargs)

    def _check(self, h, owner):
        return {"beta_1": real(owner, "beta_1", h["beta_1"], low=0.0, high=1.0, high_open=True),
                "beta_2": real(owner, "beta_2", h["beta_2"], low=0.0, high=1.0, high_open=True),
                "epsilon": real(owner, "epsilon", h["epsilon"], low=0.0),
                "amsgrad": boolean(owner, "amsgrad", h["amsgrad"])}

    def _rule_name(self, h):
        name = "adam_amsgrad" if h["amsgrad"] else "adam"
        return name + "_torch" if self.convention == "torch" else name

    def _scalars(self, h, lr, updates):
        if self.convention == "torch":
            return (lr, h["beta_1"], h["beta_2"], h["epsilon"], updates + 1)
        alpha = adam_alpha(lr, h["beta_1"], h["beta_2"], updates)
        return (alpha, h["beta_1"], h["beta_2"], h["epsilon"])


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras 3 ``AdamW``, PyTorch ``AdamW``).

    Exactly :class:`Adam` with ``weight_decay`` on by default (0.004 under
    the Keras convention, 0.01 under the torch one) and decoupled under both:
    ``w <- w * (1 - weight_decay * lr)`` before each Adam update.

    Parameters
    ----------
    params : array, list/tuple of arrays, or dict of arrays
    learning_rate : float or schedule, default 0.001
    weight_decay : float >= 0, default 0.004 (keras), 0.01 (torch)
    beta_1, beta_2 : float in [0, 1), defaults 0.9 and 0.999
    epsilon : float >= 0, default 1e-7 (keras), 1e-8 (torch)
    amsgrad : bool, default False
    **kwargs
        See :class:`fastopt.Optimizer`.
    """

    _DEFAULTS = {**Adam._DEFAULTS, "weight_decay": 0.004}
    _TORCH_DEFAULTS = {**Adam._TORCH_DEFAULTS, "weight_decay": 0.01}
    _TORCH_DECOUPLED = True

    def __init__(self, params, learning_rate=None, weight_decay=None, beta_1=None,
                 beta_2=None, epsilon=None, amsgrad=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=amsgrad, weight_decay=weight_decay, **kwargs)


# ---------------------------------------------------------------------------
# PyTorch bias-corrects v before adding epsilon: that is Keras's form with
# alpha = lr * sqrt(bc2) / bc1 and epsilon * sqrt(bc2).

def adam_alpha(learning_rate, beta_1, beta_2, iteration):
    """Adam's bias-corrected step size for the step after ``iteration`` steps.

    ``t = iteration + 1``; ``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``.
    """
    t = float(iteration) + 1.0
    return learning_rate * math.sqrt(1.0 - beta_2 ** t) / (1.0 - beta_1 ** t)


def prepare_adam(alpha, beta_1, beta_2, epsilon):
    return {"alpha": alpha, "one_minus_beta_1": 1.0 - beta_1,
            "one_minus_beta_2": 1.0 - beta_2, "eps": epsilon}


def prepare_adam_torch(learning_rate, beta_1, beta_2, epsilon, step):
    bc1 = 1.0 - beta_1 ** step
    root_bc2 = math.sqrt(1.0 - beta_2 ** step)
    return {"alpha": learning_rate * root_bc2 / bc1, "one_minus_beta_1": 1.0 - beta_1,
            "beta_2": beta_2, "one_minus_beta_2": 1.0 - beta_2, "eps": epsilon * root_bc2}


def element_adam(g, w, momentum, velocity, alpha, one_minus_beta_1, one_minus_beta_2, eps):
    momentum = momentum + (g - momentum) * one_minus_beta_1
    velocity = velocity + (g * g - velocity) * one_minus_beta_2
    w = w - momentum * alpha / (sqrt(velocity) + eps)
    return w, momentum, velocity


def element_amsgrad(g, w, momentum, velocity, velocity_hat, alpha, one_minus_beta_1,
                    one_minus_beta_2, eps):
    momentum = momentum + (g - momentum) * one_minus_beta_1
    velocity = velocity + (g * g - velocity) * one_minus_beta_2
    velocity_hat = max(velocity_hat, velocity)
    w = w - momentum * alpha / (sqrt(velocity_hat) + eps)
    return w, momentum, velocity, velocity_hat


# PyTorch moves m by lerp (m + (1 - beta_1) * (g - m), Keras's form) but v
# by beta_2 * v + (1 - beta_2) * g^2: the same value to rounding, and not the
# same once v is infinite (Keras's form gives inf - inf = NaN, torch's inf).

def element_adam_torch(g, w, momentum, velocity, alpha, one_minus_beta_1, beta_2,
                       one_minus_beta_2, eps):
    momentum = momentum + (g - momentum) * one_minus_beta_1
    velocity = beta_2 * velocity + one_minus_beta_2 * (g * g)
    w = w - momentum * alpha / (sqrt(velocity) + eps)
    return w, momentum, velocity


def element_amsgrad_torch(g, w, momentum, velocity, velocity_hat, alpha, one_minus_beta_1,
                          beta_2, one_minus_beta_2, eps):
    momentum = momentum + (g - momentum) * one_minus_beta_1
    velocity = beta_2 * velocity + one_minus_beta_2 * (g * g)
    velocity_hat = max(velocity_hat, velocity)
    w = w - momentum * alpha / (sqrt(velocity_hat) + eps)
    return w, momentum, velocity, velocity_hat


# ---------------------------------------------------------------------------
# The float64 references: the specification.

def _f64(x):
    return np.asarray(x, dtype=np.float64)


def adam(param, grad, m, v, *, alpha, beta_1, beta_2, epsilon):
    """Adam (Keras form; ``alpha`` from :func:`adam_alpha`)::

        m <- m + (g - m) * (1 - beta_1)
        v <- v + (g^2 - v) * (1 - beta_2)
        w <- w - m * alpha / (sqrt(v) + eps)
    """
    g = _f64(grad)
    m = _f64(m) + (g - _f64(m)) * (1.0 - beta_1)
    v = _f64(v) + (g * g - _f64(v)) * (1.0 - beta_2)
    return _f64(param) - m * alpha / (np.sqrt(v) + epsilon), m, v


def adam_amsgrad(param, grad, m, v, velocity_hat, *, alpha, beta_1, beta_2,
                 epsilon):
    """Adam with AMSGrad: as :func:`adam`, with ``vhat <- max(vhat, v)`` used
    in the denominator in place of ``v``."""
    g = _f64(grad)
    m = _f64(m) + (g - _f64(m)) * (1.0 - beta_1)
    v = _f64(v) + (g * g - _f64(v)) * (1.0 - beta_2)
    vhat = np.maximum(_f64(velocity_hat), v)
    return _f64(param) - m * alpha / (np.sqrt(vhat) + epsilon), m, v, vhat


def _adam_torch(param, grad, m, v, velocity_hat, *, learning_rate, beta_1, beta_2,
                epsilon, step):
    g = _f64(grad)
    m = _f64(m) + (1.0 - beta_1) * (g - _f64(m))
    v = beta_2 * _f64(v) + (1.0 - beta_2) * (g * g)
    step_size = learning_rate / (1.0 - beta_1 ** step)
    root_bc2 = math.sqrt(1.0 - beta_2 ** step)
    out = [None, m, v]
    d = v
    if velocity_hat is not None:
        d = np.maximum(_f64(velocity_hat), v)
        out.append(d)
    out[0] = _f64(param) - step_size * m / (np.sqrt(d) / root_bc2 + epsilon)
    return tuple(out)


def adam_torch(param, grad, m, v, *, learning_rate, beta_1, beta_2, epsilon, step):
    """PyTorch Adam (epsilon added after the bias correction of ``v``)::

        m <- m + (1 - beta_1) * (g - m)
        v <- beta_2 * v + (1 - beta_2) * g^2
        w <- w - lr / (1 - beta_1^step) * m / (sqrt(v) / sqrt(1 - beta_2^step) + eps)
    """
    return _adam_torch(param, grad, m, v, None, learning_rate=learning_rate,
                       beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, step=step)


def adam_amsgrad_torch(param, grad, m, v, velocity_hat, *, learning_rate, beta_1,
                       beta_2, epsilon, step):
    """PyTorch Adam with AMSGrad: as :func:`adam_torch` with
    ``vhat <- max(vhat, v)`` (of the raw ``v``) in the denominator."""
    return _adam_torch(param, grad, m, v, velocity_hat, learning_rate=learning_rate,
                       beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, step=step)


_ADAM_T = ("learning_rate", "beta_1", "beta_2", "epsilon", "step")
_ADAM_K = ("alpha", "beta_1", "beta_2", "epsilon")

RULES = (
    Rule("adam", slots=("momentum", "velocity"), scalars=_ADAM_K, prepare=prepare_adam,
         element=element_adam, reference=adam, int8_refusal=None, nonnegative=('velocity',)),
    Rule("adam_amsgrad", slots=("momentum", "velocity", "velocity_hat"), scalars=_ADAM_K,
         prepare=prepare_adam, element=element_amsgrad, reference=adam_amsgrad, int8_refusal=None, nonnegative=('velocity', 'velocity_hat')),
    Rule("adam_torch", slots=("momentum", "velocity"), scalars=_ADAM_T, convention="torch",
         prepare=prepare_adam_torch, element=element_adam_torch, reference=adam_torch,
         torch_state=("exp_avg", "exp_avg_sq"), int8_refusal=None, nonnegative=('velocity',)),
    Rule("adam_amsgrad_torch", slots=("momentum", "velocity", "velocity_hat"),
         scalars=_ADAM_T, convention="torch", prepare=prepare_adam_torch,
         element=element_amsgrad_torch, reference=adam_amsgrad_torch,
         torch_state=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), int8_refusal=None, nonnegative=('velocity', 'velocity_hat')),
)
