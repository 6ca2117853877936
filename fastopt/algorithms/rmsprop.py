"""RMSprop, plain or centred, with optional momentum: the :class:`RMSprop`
class, its eight rules, their ``prepare`` and ``element`` functions and the
float64 references."""
from __future__ import annotations

import numpy as np

from .._validation import boolean, real
from ..optimizer import Optimizer
from ..rule import Rule


class RMSprop(Optimizer):
    """RMSprop: divide by a running root mean square of the gradients.

    Keras 3 formulas (see :func:`fastopt.reference.rmsprop` and its variants)::

        v   <- rho * v + (1 - rho) * g^2
        a   <- rho * a + (1 - rho) * g                    (centered=True)
        den <- v + eps, or max(v - a^2, 0) + eps          (centered=True)
        inc <- lr * g / sqrt(den)
        w   <- w - inc                                    (momentum == 0)
        mom <- momentum * mom + inc;  w <- w - mom        (momentum > 0)

    PyTorch formulas (``convention="torch"``; ``rho`` is torch's ``alpha``; see
    :func:`fastopt.reference.rmsprop_torch` and its variants)::

        den <- sqrt(v) + eps, or sqrt(max(v - a^2, 0)) + eps   (centered=True)
        w   <- w - lr * g / den                                (momentum == 0)
        b   <- momentum * b + g / den;  w <- w - lr * b        (momentum > 0)

    The clamp at zero in the centred denominator differs from Keras only where
    rounding made ``v - a^2`` negative (it is never negative in exact
    arithmetic); Keras would then take the square root of a negative number.

    Parameters
    ----------
    params : array, list/tuple of arrays, or dict of arrays
    learning_rate : float or schedule, default 0.001 (keras), 0.01 (torch)
    rho : float in [0, 1), default 0.9 (keras), 0.99 (torch)
    momentum : float >= 0, default 0.0 (below 1 under the Keras convention)
    epsilon : float >= 0, default 1e-7 (keras), 1e-8 (torch)
    centered : bool, default False
    **kwargs
        See :class:`fastopt.Optimizer`.
    """

    _DEFAULTS = {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7,
                 "centered": False}
    _TORCH_DEFAULTS = {"learning_rate": 0.01, "rho": 0.99, "momentum": 0.0, "epsilon": 1e-8,
                       "centered": False}
    _TORCH_NAMES = {**Optimizer._TORCH_NAMES, "alpha": "rho", "eps": "epsilon"}

    def __init__(self, params, learning_rate=None, rho=None, momentum=None, epsilon=None,
                 centered=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"rho": rho, "momentum": momentum, "epsilon": epsilon,
                                "centered": centered}, **kwargs)

    def _check(self, h, owner):
        torch = self.convention == "torch"
        return {"rho": real(owner, "rho", h["rho"], low=0.0, high=1.0, high_open=True),
                "momentum": real(owner, "momentum", h["momentum"], low=0.0,
                                 high=None if torch else 1.0, high_open=True),
                "epsilon": real(owner, "epsilon", h["epsilon"], low=0.0),
                "centered": boolean(owner, "centered", h["centered"])}

    def _rule_name(self, h):
        name = "rmsprop_centered" if h["centered"] else "rmsprop"
        name = name + "_momentum" if h["momentum"] > 0 else name
        return name + "_torch" if self.convention == "torch" else name

    def _scalars(self, h, lr, updates):
        if h["momentum"] > 0:
            return (lr, h["rho"], h["momentum"], h["epsilon"])
        return (lr, h["rho"], h["epsilon"])


# ---------------------------------------------------------------------------
# One element per variant for both conventions: Keras puts epsilon inside the
# square root and the learning rate inside the momentum buffer (lr = lr,
# rate = 1); PyTorch puts epsilon outside and the learning rate outside the
# buffer (lr = 1, rate = lr; without momentum the two forms coincide).

def prepare_rmsprop(learning_rate, rho, epsilon):
    return {"lr": learning_rate, "rho": rho, "one_minus_rho": 1.0 - rho,
            "eps_in": epsilon, "eps_out": 0.0}


def prepare_rmsprop_torch(learning_rate, rho, epsilon):
    return {"lr": learning_rate, "rho": rho, "one_minus_rho": 1.0 - rho,
            "eps_in": 0.0, "eps_out": epsilon}


def prepare_momentum(learning_rate, rho, momentum, epsilon):
    return {"lr": learning_rate, "rho": rho, "one_minus_rho": 1.0 - rho,
            "eps_in": epsilon, "eps_out": 0.0, "mu": momentum, "rate": 1.0}


def prepare_momentum_torch(learning_rate, rho, momentum, epsilon):
    return {"lr": 1.0, "rho": rho, "one_minus_rho": 1.0 - rho,
            "eps_in": 0.0, "eps_out": epsilon, "mu": momentum, "rate": learning_rate}


def element_rmsprop(g, w, velocity, lr, rho, one_minus_rho, eps_in, eps_out):
    velocity = rho * velocity + one_minus_rho * (g * g)
    w = w - lr * g / (sqrt(velocity + eps_in) + eps_out)
    return w, velocity


def element_momentum(g, w, velocity, momentum, lr, rho, one_minus_rho, eps_in, eps_out,
                     mu, rate):
    velocity = rho * velocity + one_minus_rho * (g * g)
    momentum = mu * momentum + lr * g / (sqrt(velocity + eps_in) + eps_out)
    w = w - rate * momentum
    return w, velocity, momentum


def element_centered(g, w, velocity, average_gradient, lr, rho, one_minus_rho, eps_in,
                     eps_out):
    velocity = rho * velocity + one_minus_rho * (g * g)
    average_gradient = rho * average_gradient + one_minus_rho * g
    # v - a^2 >= 0 exactly; rounding can take it a hair below zero
    variance = max(velocity - average_gradient * average_gradient, 0.0)
    w = w - lr * g / (sqrt(variance + eps_in) + eps_out)
    return w, velocity, average_gradient


def element_centered_momentum(g, w, velocity, average_gradient, momentum, lr, rho,
                              one_minus_rho, eps_in, eps_out, mu, rate):
    velocity = rho * velocity + one_minus_rho * (g * g)
    average_gradient = rho * average_gradient + one_minus_rho * g
    variance = max(velocity - average_gradient * average_gradient, 0.0)
    momentum = mu * momentum + lr * g / (sqrt(variance + eps_in) + eps_out)
    w = w - rate * momentum
    return w, velocity, average_gradient, momentum


# ---------------------------------------------------------------------------
# The float64 references: the specification.

def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _rms_denominator(velocity, average_gradient, epsilon):
    if average_gradient is None:
        return velocity + epsilon
    # v - a^2 >= 0 in exact arithmetic; rounding can push it a hair below zero
    # (mostly in float32).  fastopt clamps it at zero there, where Keras would
    # take the square root of a possibly negative number.
    return np.maximum(velocity - average_gradient * average_gradient, 0.0) + epsilon


def _rmsprop(param, grad, velocity, average_gradient, momentum_buf, *,
             learning_rate, rho, momentum, epsilon):
    g = _f64(grad)
    v = rho * _f64(velocity) + (1.0 - rho) * (g * g)
    a = None
    if average_gradient is not None:
        a = rho * _f64(average_gradient) + (1.0 - rho) * g
    inc = learning_rate * g / np.sqrt(_rms_denominator(v, a, epsilon))
    out = [None, v]
    if a is not None:
        out.append(a)
    if momentum_buf is not None:
        mom = momentum * _f64(momentum_buf) + inc
        out[0] = _f64(param) - mom
        out.append(mom)
    else:
        out[0] = _f64(param) - inc
    return tuple(out)


def rmsprop(param, grad, velocity, *, learning_rate, rho, epsilon):
    """RMSprop (Keras: epsilon inside the square root)::

        v <- rho * v + (1 - rho) * g^2
        w <- w - lr * g / sqrt(v + eps)
    """
    return _rmsprop(param, grad, velocity, None, None, learning_rate=learning_rate,
                    rho=rho, momentum=0.0, epsilon=epsilon)


def rmsprop_momentum(param, grad, velocity, momentum_buf, *, learning_rate, rho,
                     momentum, epsilon):
    """RMSprop with momentum::

        v   <- rho * v + (1 - rho) * g^2
        mom <- momentum * mom + lr * g / sqrt(v + eps)
        w   <- w - mom
    """
    return _rmsprop(param, grad, velocity, None, momentum_buf,
                    learning_rate=learning_rate, rho=rho, momentum=momentum,
                    epsilon=epsilon)


def rmsprop_centered(param, grad, velocity, average_gradient, *, learning_rate,
                     rho, epsilon):
    """Centred RMSprop::

        v <- rho * v + (1 - rho) * g^2
        a <- rho * a + (1 - rho) * g
        w <- w - lr * g / sqrt(max(v - a^2, 0) + eps)
    """
    return _rmsprop(param, grad, velocity, average_gradient, None,
                    learning_rate=learning_rate, rho=rho, momentum=0.0,
                    epsilon=epsilon)


def rmsprop_centered_momentum(param, grad, velocity, average_gradient,
                              momentum_buf, *, learning_rate, rho, momentum,
                              epsilon):
    """Centred RMSprop with momentum::

        v   <- rho * v + (1 - rho) * g^2
        a   <- rho * a + (1 - rho) * g
        mom <- momentum * mom + lr * g / sqrt(max(v - a^2, 0) + eps)
        w   <- w - mom
    """
    return _rmsprop(param, grad, velocity, average_gradient, momentum_buf,
                    learning_rate=learning_rate, rho=rho, momentum=momentum,
                    epsilon=epsilon)


def _rmsprop_torch(param, grad, velocity, average_gradient, momentum_buf, *,
                   learning_rate, rho, momentum, epsilon):
    g = _f64(grad)
    v = rho * _f64(velocity) + (1.0 - rho) * (g * g)
    out = [None, v]
    if average_gradient is None:
        avg = np.sqrt(v) + epsilon
    else:
        a = rho * _f64(average_gradient) + (1.0 - rho) * g
        # clamped at zero as in the Keras form (torch would take sqrt of < 0)
        avg = np.sqrt(np.maximum(v - a * a, 0.0)) + epsilon
        out.append(a)
    if momentum_buf is None:
        out[0] = _f64(param) - learning_rate * g / avg
    else:
        b = momentum * _f64(momentum_buf) + g / avg
        out[0] = _f64(param) - learning_rate * b
        out.append(b)
    return tuple(out)


def rmsprop_torch(param, grad, velocity, *, learning_rate, rho, epsilon):
    """PyTorch RMSprop (``rho`` is torch's ``alpha``; epsilon outside)::

        v <- rho * v + (1 - rho) * g^2
        w <- w - lr * g / (sqrt(v) + eps)
    """
    return _rmsprop_torch(param, grad, velocity, None, None, learning_rate=learning_rate,
                          rho=rho, momentum=0.0, epsilon=epsilon)


def rmsprop_momentum_torch(param, grad, velocity, momentum_buf, *, learning_rate,
                           rho, momentum, epsilon):
    """PyTorch RMSprop with momentum (learning rate outside the buffer)::

        v <- rho * v + (1 - rho) * g^2
        b <- momentum * b + g / (sqrt(v) + eps)
        w <- w - lr * b
    """
    return _rmsprop_torch(param, grad, velocity, None, momentum_buf,
                          learning_rate=learning_rate, rho=rho, momentum=momentum,
                          epsilon=epsilon)


def rmsprop_centered_torch(param, grad, velocity, average_gradient, *,
                           learning_rate, rho, epsilon):
    """PyTorch centred RMSprop::

        v <- rho * v + (1 - rho) * g^2
        a <- rho * a + (1 - rho) * g
        w <- w - lr * g / (sqrt(max(v - a^2, 0)) + eps)
    """
    return _rmsprop_torch(param, grad, velocity, average_gradient, None,
                          learning_rate=learning_rate, rho=rho, momentum=0.0,
                          epsilon=epsilon)


def rmsprop_centered_momentum_torch(param, grad, velocity, average_gradient,
                                    momentum_buf, *, learning_rate, rho, momentum,
                                    epsilon):
    """PyTorch centred RMSprop with momentum::

        v <- rho * v + (1 - rho) * g^2
        a <- rho * a + (1 - rho) * g
        b <- momentum * b + g / (sqrt(max(v - a^2, 0)) + eps)
        w <- w - lr * b
    """
    return _rmsprop_torch(param, grad, velocity, average_gradient, momentum_buf,
                          learning_rate=learning_rate, rho=rho, momentum=momentum,
                          epsilon=epsilon)


_RMS = ("learning_rate", "rho", "epsilon")
_RMS_MOM = ("learning_rate", "rho", "momentum", "epsilon")
_CENTRED_BF16 = ("centred RMSprop's denominator v - a^2 cancels: bfloat16 keeps v and a "
                 "only to about 0.2% (2^-9), so a variance below a few tenths of a percent "
                 "of v is lost to rounding and the step blows up (measured: the Rosenbrock "
                 "test diverges to NaN with stochastic rounding)")

_CENTRED_INT8 = ("centred RMSprop's denominator v - a^2 cancels: 8-bit codes keep v and a "
                 "only to about 6% (3 significand bits), far too coarse for that difference")

RULES = (
    Rule("rmsprop", slots=("velocity",), scalars=_RMS, prepare=prepare_rmsprop,
         element=element_rmsprop, reference=rmsprop, int8_refusal=None, nonnegative=('velocity',)),
    Rule("rmsprop_momentum", slots=("velocity", "momentum"), scalars=_RMS_MOM,
         prepare=prepare_momentum, element=element_momentum, reference=rmsprop_momentum, int8_refusal=None, nonnegative=('velocity',)),
    Rule("rmsprop_centered", slots=("velocity", "average_gradient"), scalars=_RMS,
         prepare=prepare_rmsprop, element=element_centered, reference=rmsprop_centered,
         bf16_refusal=_CENTRED_BF16, int8_refusal=_CENTRED_INT8),
    Rule("rmsprop_centered_momentum", slots=("velocity", "average_gradient", "momentum"),
         scalars=_RMS_MOM, prepare=prepare_momentum, element=element_centered_momentum,
         reference=rmsprop_centered_momentum, bf16_refusal=_CENTRED_BF16),
    Rule("rmsprop_torch", slots=("velocity",), scalars=_RMS, convention="torch",
         prepare=prepare_rmsprop_torch, element=element_rmsprop, reference=rmsprop_torch,
         torch_state=("square_avg",), int8_refusal=None, nonnegative=('velocity',)),
    Rule("rmsprop_momentum_torch", slots=("velocity", "momentum"), scalars=_RMS_MOM,
         convention="torch", prepare=prepare_momentum_torch, element=element_momentum,
         reference=rmsprop_momentum_torch, torch_state=("square_avg", "momentum_buffer"), int8_refusal=None, nonnegative=('velocity',)),
    Rule("rmsprop_centered_torch", slots=("velocity", "average_gradient"), scalars=_RMS,
         convention="torch", prepare=prepare_rmsprop_torch, element=element_centered,
         reference=rmsprop_centered_torch, torch_state=("square_avg", "grad_avg"),
         bf16_refusal=_CENTRED_BF16, int8_refusal=_CENTRED_INT8),
    Rule("rmsprop_centered_momentum_torch",
         slots=("velocity", "average_gradient", "momentum"), scalars=_RMS_MOM,
         convention="torch", prepare=prepare_momentum_torch,
         element=element_centered_momentum, reference=rmsprop_centered_momentum_torch,
         torch_state=("square_avg", "grad_avg", "momentum_buffer"),
         bf16_refusal=_CENTRED_BF16, int8_refusal=_CENTRED_INT8),
)
