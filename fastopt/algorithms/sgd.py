"""Stochastic gradient descent, with optional (Nesterov) momentum.

The family: the :class:`SGD` class, its five rules (plain SGD; momentum and
Nesterov momentum under each convention), their ``prepare`` and ``element``
functions (the element language, see :mod:`fastopt._codegen`) and the float64
references (whole-array NumPy, written independently of the element
functions: they are the specification).
"""
from __future__ import annotations

import numpy as np

from .._validation import boolean, real
from ..optimizer import Optimizer
from ..rule import Rule


class SGD(Optimizer):
    """Gradient descent with optional momentum and Nesterov momentum.

    Keras 3 formulas (default; see :func:`fastopt.reference.sgd`,
    :func:`~fastopt.reference.sgd_momentum` and
    :func:`~fastopt.reference.sgd_nesterov`)::

        momentum == 0:  w <- w - lr * g
        otherwise:      m <- momentum * m - lr * g
                        w <- w + m                      (nesterov=False)
                        w <- w + momentum * m - lr * g  (nesterov=True)

    PyTorch formulas (``convention="torch"``; see
    :func:`fastopt.reference.sgd_momentum_torch`)::

        b <- g on the first step, then momentum * b + (1 - dampening) * g
        w <- w - lr * b                                 (nesterov=False)
        w <- w - lr * (g + momentum * b)                (nesterov=True)

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
        Updated in place.
    learning_rate : float or schedule, default 0.01 (keras), 0.001 (torch)
    momentum : float >= 0, default 0.0
        At most 1 under the Keras convention.  With 0 there is no momentum
        slot.
    nesterov : bool, default False
        Under the torch convention it needs ``momentum > 0`` and zero
        ``dampening``, as in PyTorch.
    dampening : float in [0, 1], default 0 (torch convention only)
    **kwargs
        ``weight_decay``, clipping, EMA, ..., ``backend``, ``convention``:
        see :class:`fastopt.Optimizer`.
    """

    _DEFAULTS = {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False}
    _TORCH_DEFAULTS = {"learning_rate": 1e-3, "momentum": 0.0, "nesterov": False,
                       "dampening": 0.0}
    _TORCH_ONLY = ("dampening",)

    def __init__(self, params, learning_rate=None, momentum=None, nesterov=None,
                 dampening=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"momentum": momentum, "nesterov": nesterov,
                                "dampening": dampening}, **kwargs)

    def _check(self, h, owner):
        torch = self.convention == "torch"
        out = {"momentum": real(owner, "momentum", h["momentum"], low=0.0,
                                high=None if torch else 1.0),
               "nesterov": boolean(owner, "nesterov", h["nesterov"]),
               "dampening": real(owner, "dampening", h["dampening"], low=0.0, high=1.0,
                                 allow_none=not torch)}
        if torch and out["nesterov"] and (out["momentum"] == 0 or out["dampening"] != 0):
            raise ValueError(f"{owner}: Nesterov momentum needs momentum > 0 and zero "
                             f"dampening (as in PyTorch), got momentum={out['momentum']} "
                             f"and dampening={out['dampening']}")
        return out

    @property
    def momentum(self):
        return self._defaults["momentum"]

    @property
    def nesterov(self):
        return self._defaults["nesterov"]

    def _rule_name(self, h):
        if h["momentum"] == 0.0:
            return "sgd"
        name = "sgd_nesterov" if h["nesterov"] else "sgd_momentum"
        return name + "_torch" if self.convention == "torch" else name

    def _scalars(self, h, lr, updates):
        if h["momentum"] == 0.0:
            return (lr,)
        if self.convention == "torch":
            return (lr, h["momentum"], h["dampening"], updates + 1)
        return (lr, h["momentum"])


# ---------------------------------------------------------------------------
# Per-step scalars (float64, once per step) and the element functions.  Both
# conventions share one momentum element: Keras keeps the learning rate inside
# the buffer (gain = -lr, rate = 1), PyTorch outside it (gain = 1 - dampening,
# rate = -lr) and takes the buffer to be the gradient on its first step.

def prepare_sgd(learning_rate):
    return {"lr": learning_rate}


def element_sgd(g, w, lr):
    w = w - lr * g
    return w


def prepare_momentum(learning_rate, momentum):
    return {"gain": -learning_rate, "decay": momentum, "rate": 1.0,
            "direct": -learning_rate, "lookahead": momentum}


def prepare_momentum_torch(learning_rate, momentum, dampening, step):
    if step <= 1:  # torch: the buffer starts as a copy of the first gradient
        return {"gain": 1.0, "decay": 0.0, "rate": -learning_rate, "direct": 1.0,
                "lookahead": momentum}
    return {"gain": 1.0 - dampening, "decay": momentum, "rate": -learning_rate,
            "direct": 1.0, "lookahead": momentum}


def element_momentum(g, w, momentum, gain, decay, rate, direct, lookahead):
    momentum = decay * momentum + gain * g
    w = w + rate * momentum
    return w, momentum


def element_nesterov(g, w, momentum, gain, decay, rate, direct, lookahead):
    momentum = decay * momentum + gain * g
    w = w + rate * (lookahead * momentum + direct * g)
    return w, momentum


# ---------------------------------------------------------------------------
# The float64 references: the specification.

def _f64(x):
    return np.asarray(x, dtype=np.float64)


def sgd(param, grad, *, learning_rate):
    """Plain SGD: ``w <- w - lr * g``."""
    return (_f64(param) - learning_rate * _f64(grad),)


def sgd_momentum(param, grad, momentum_buf, *, learning_rate, momentum):
    """SGD with (Keras) momentum::

        m <- momentum * m - lr * g
        w <- w + m
    """
    m = momentum * _f64(momentum_buf) - learning_rate * _f64(grad)
    return _f64(param) + m, m


def sgd_nesterov(param, grad, momentum_buf, *, learning_rate, momentum):
    """SGD with (Keras) Nesterov momentum::

        m <- momentum * m - lr * g
        w <- w + momentum * m - lr * g        (with the new m)
    """
    g = _f64(grad)
    m = momentum * _f64(momentum_buf) - learning_rate * g
    return _f64(param) + (momentum * m - learning_rate * g), m


def sgd_momentum_torch(param, grad, momentum_buf, *, learning_rate, momentum,
                       dampening, step):
    """PyTorch SGD with momentum::

        b <- g                                   (step 1)
        b <- momentum * b + (1 - dampening) * g  (later steps)
        w <- w - lr * b
    """
    g = _f64(grad)
    if step <= 1:
        b = g.copy()
    else:
        b = momentum * _f64(momentum_buf) + (1.0 - dampening) * g
    return _f64(param) - learning_rate * b, b


def sgd_nesterov_torch(param, grad, momentum_buf, *, learning_rate, momentum,
                       dampening, step):
    """PyTorch SGD with Nesterov momentum: ``b`` as in
    :func:`sgd_momentum_torch`, then ``w <- w - lr * (g + momentum * b)``."""
    g = _f64(grad)
    _, b = sgd_momentum_torch(param, g, momentum_buf, learning_rate=learning_rate,
                              momentum=momentum, dampening=dampening, step=step)
    return _f64(param) - learning_rate * (g + momentum * b), b


_SGD_T = ("learning_rate", "momentum", "dampening", "step")

RULES = (
    Rule("sgd", scalars=("learning_rate",), prepare=prepare_sgd, element=element_sgd,
         reference=sgd, bf16_refusal="it has no state"),
    Rule("sgd_momentum", slots=("momentum",), scalars=("learning_rate", "momentum"),
         prepare=prepare_momentum, element=element_momentum, reference=sgd_momentum, int8_refusal=None),
    Rule("sgd_nesterov", slots=("momentum",), scalars=("learning_rate", "momentum"),
         prepare=prepare_momentum, element=element_nesterov, reference=sgd_nesterov, int8_refusal=None),
    Rule("sgd_momentum_torch", slots=("momentum",), scalars=_SGD_T, convention="torch",
         prepare=prepare_momentum_torch, element=element_momentum,
         reference=sgd_momentum_torch, torch_state=("momentum_buffer",), int8_refusal=None),
    Rule("sgd_nesterov_torch", slots=("momentum",), scalars=_SGD_T, convention="torch",
         prepare=prepare_momentum_torch, element=element_nesterov,
         reference=sgd_nesterov_torch, torch_state=("momentum_buffer",), int8_refusal=None),
)
