"""The table of update rules shared by every backend.

A *rule* is one fused kernel: one optimizer variant under one convention
(Keras SGD with Nesterov momentum, PyTorch centred RMSprop with momentum, ...).
Every backend implements every rule with the same public signature::

    kernel(param, grad, *slots, *scalars, keep=1.0, gscale=1.0, l2=0.0,
           clipvalue=inf)

The two conventions differ only in where constants sit in the formulas
(epsilon inside or outside the square root, the learning rate inside or
outside a momentum buffer, bias corrections folded or not), so a Keras rule
and its PyTorch twin share one compiled element loop (``Rule.code``) and
differ only in how :func:`pack` turns their public scalars into the internal
scalar vector ``hp``.  ``hp[0]`` is always ``clipvalue``; the complements
(``1 - beta`` ...), bias corrections and learning-rate decay are computed
here, once per step, in float64.
"""
from __future__ import annotations

import math
from typing import NamedTuple


__all__ = ["Rule", "RULES", "pack", "HP_SIZE"]


class Rule(NamedTuple):
    name: str
    code: int           # element loop used by the compiled drivers
    slots: tuple        # state arrays, Keras slot names, in kernel order
    scalars: tuple      # public scalar arguments, in kernel order
    convention: str     # "keras" or "torch"


_SGD_T = ("learning_rate", "momentum", "dampening", "step")
_RMS = ("learning_rate", "rho", "epsilon")
_RMS_MOM = ("learning_rate", "rho", "momentum", "epsilon")
_ADAM_T = ("learning_rate", "beta_1", "beta_2", "epsilon", "step")

RULES = {r.name: r for r in (
    # Keras 3 formulas (and plain SGD, which is the same in both conventions)
    Rule("sgd", 0, (), ("learning_rate",), "keras"),
    Rule("sgd_momentum", 1, ("momentum",), ("learning_rate", "momentum"), "keras"),
    Rule("sgd_nesterov", 2, ("momentum",), ("learning_rate", "momentum"), "keras"),
    Rule("adagrad", 3, ("accumulator",), ("learning_rate", "epsilon"), "keras"),
    Rule("rmsprop", 4, ("velocity",), _RMS, "keras"),
    Rule("rmsprop_momentum", 5, ("velocity", "momentum"), _RMS_MOM, "keras"),
    Rule("rmsprop_centered", 6, ("velocity", "average_gradient"), _RMS, "keras"),
    Rule("rmsprop_centered_momentum", 7, ("velocity", "average_gradient", "momentum"),
         _RMS_MOM, "keras"),
    Rule("adam", 8, ("momentum", "velocity"), ("alpha", "beta_1", "beta_2", "epsilon"),
         "keras"),
    Rule("adam_amsgrad", 9, ("momentum", "velocity", "velocity_hat"),
         ("alpha", "beta_1", "beta_2", "epsilon"), "keras"),
    # PyTorch 2.13 torch.optim formulas; ``step`` counts from 1 as torch's does
    Rule("sgd_momentum_torch", 1, ("momentum",), _SGD_T, "torch"),
    Rule("sgd_nesterov_torch", 2, ("momentum",), _SGD_T, "torch"),
    Rule("adagrad_torch", 3, ("accumulator",),
         ("learning_rate", "epsilon", "lr_decay", "step"), "torch"),
    Rule("rmsprop_torch", 4, ("velocity",), _RMS, "torch"),
    Rule("rmsprop_momentum_torch", 5, ("velocity", "momentum"), _RMS_MOM, "torch"),
    Rule("rmsprop_centered_torch", 6, ("velocity", "average_gradient"), _RMS, "torch"),
    Rule("rmsprop_centered_momentum_torch", 7, ("velocity", "average_gradient", "momentum"),
         _RMS_MOM, "torch"),
    Rule("adam_torch", 8, ("momentum", "velocity"), _ADAM_T, "torch"),
    Rule("adam_amsgrad_torch", 9, ("momentum", "velocity", "velocity_hat"), _ADAM_T,
         "torch"),
)}

#: Length of the packed scalar vector (the longest layout, plus clipvalue).
HP_SIZE = 8


def pack(rule: Rule, scalars, clipvalue=math.inf):
    """Pack a rule's public scalars into the tuple the kernels read as ``hp``.

    Layouts after ``hp[0] = clipvalue`` (unused entries are 0), with the
    element loop each one drives::

        sgd        lr                          w -= lr * g
        momentum   a, mu, b, d, mu2            m = mu*m + a*g
                                               w += b*m                 (plain)
                                               w += b*(mu2*m + d*g)     (Nesterov)
        adagrad    lr, eps_in, eps_out         acc += g^2
                                               w -= lr*g / (sqrt(acc + eps_in) + eps_out)
        rmsprop    a, rho, 1-rho, eps_in,      v = rho*v + (1-rho)*g^2 (a: centred mean)
                   mu, eps_out, b              r = a*g / (sqrt(v [- a^2] + eps_in) + eps_out)
                                               w -= r, or mom = mu*mom + r; w -= b*mom
        adam       alpha, 1-b1, 1-b2, eps      w -= m*alpha / (sqrt(v or vhat) + eps)

    Keras puts epsilon inside the square root and the learning rate inside the
    momentum buffer; PyTorch puts epsilon outside and the learning rate outside
    the buffer, takes ``buf = g`` on its first step, and bias-corrects Adam's
    ``v`` before adding epsilon -- which is Keras's form with
    ``alpha = lr*sqrt(bc2)/bc1`` and ``eps*sqrt(bc2)``.
    """
    return _PACKERS[rule.name](clipvalue, *scalars)


def _sgd_torch(c, lr, mu, dampening, step):
    if step <= 1:  # torch: the buffer starts as a copy of the first gradient
        return (c, 1.0, 0.0, -lr, 1.0, mu, 0.0, 0.0)
    return (c, 1.0 - dampening, mu, -lr, 1.0, mu, 0.0, 0.0)


def _adagrad_torch(c, lr, eps, lr_decay, step):
    return (c, lr / (1.0 + (step - 1) * lr_decay), 0.0, eps, 0.0, 0.0, 0.0, 0.0)


def _adam_torch(c, lr, b1, b2, eps, step):
    bc1 = 1.0 - b1 ** step
    root_bc2 = math.sqrt(1.0 - b2 ** step)
    return (c, lr * root_bc2 / bc1, 1.0 - b1, 1.0 - b2, eps * root_bc2, 0.0, 0.0, 0.0)


_PACKERS = {
    "sgd": lambda c, lr: (c, lr, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "sgd_momentum": lambda c, lr, mu: (c, -lr, mu, 1.0, 0.0, mu, 0.0, 0.0),
    "sgd_nesterov": lambda c, lr, mu: (c, -lr, mu, 1.0, -lr, mu, 0.0, 0.0),
    "adagrad": lambda c, lr, eps: (c, lr, eps, 0.0, 0.0, 0.0, 0.0, 0.0),
    "rmsprop": lambda c, lr, rho, eps: (c, lr, rho, 1.0 - rho, eps, 0.0, 0.0, 1.0),
    "rmsprop_momentum":
        lambda c, lr, rho, mu, eps: (c, lr, rho, 1.0 - rho, eps, mu, 0.0, 1.0),
    "rmsprop_centered": lambda c, lr, rho, eps: (c, lr, rho, 1.0 - rho, eps, 0.0, 0.0, 1.0),
    "rmsprop_centered_momentum":
        lambda c, lr, rho, mu, eps: (c, lr, rho, 1.0 - rho, eps, mu, 0.0, 1.0),
    "adam": lambda c, alpha, b1, b2, eps: (c, alpha, 1.0 - b1, 1.0 - b2, eps, 0.0, 0.0, 0.0),
    "adam_amsgrad":
        lambda c, alpha, b1, b2, eps: (c, alpha, 1.0 - b1, 1.0 - b2, eps, 0.0, 0.0, 0.0),
    "sgd_momentum_torch": _sgd_torch,
    "sgd_nesterov_torch": _sgd_torch,
    "adagrad_torch": _adagrad_torch,
    "rmsprop_torch": lambda c, lr, rho, eps: (c, lr, rho, 1.0 - rho, 0.0, 0.0, eps, 1.0),
    "rmsprop_momentum_torch":
        lambda c, lr, rho, mu, eps: (c, 1.0, rho, 1.0 - rho, 0.0, mu, eps, lr),
    "rmsprop_centered_torch":
        lambda c, lr, rho, eps: (c, lr, rho, 1.0 - rho, 0.0, 0.0, eps, 1.0),
    "rmsprop_centered_momentum_torch":
        lambda c, lr, rho, mu, eps: (c, 1.0, rho, 1.0 - rho, 0.0, mu, eps, lr),
    "adam_torch": _adam_torch,
    "adam_amsgrad_torch": _adam_torch,
}
