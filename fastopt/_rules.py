"""The table of update rules shared by every backend.

A *rule* is one fused kernel: one optimizer variant (plain SGD, SGD with
Nesterov momentum, centred RMSprop with momentum, ...).  Every backend
implements every rule with the same public signature::

    kernel(param, grad, *slots, *scalars, keep=1.0, gscale=1.0, clipvalue=inf)

and the same internal scalar vector ``hp`` built by :func:`pack`:
``hp[0]`` is ``clipvalue`` and the rest is the rule's own scalars, with the
``1 - beta`` style complements computed here, once, in float64.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["Rule", "RULES", "pack", "HP_SIZE"]


class Rule(NamedTuple):
    name: str
    code: int           # integer id used by compiled drivers
    slots: tuple        # state arrays, Keras slot names, in kernel order
    scalars: tuple      # public scalar arguments, in kernel order


RULES = {r.name: r for r in (
    Rule("sgd", 0, (), ("learning_rate",)),
    Rule("sgd_momentum", 1, ("momentum",), ("learning_rate", "momentum")),
    Rule("sgd_nesterov", 2, ("momentum",), ("learning_rate", "momentum")),
    Rule("adagrad", 3, ("accumulator",), ("learning_rate", "epsilon")),
    Rule("rmsprop", 4, ("velocity",), ("learning_rate", "rho", "epsilon")),
    Rule("rmsprop_momentum", 5, ("velocity", "momentum"),
         ("learning_rate", "rho", "momentum", "epsilon")),
    Rule("rmsprop_centered", 6, ("velocity", "average_gradient"),
         ("learning_rate", "rho", "epsilon")),
    Rule("rmsprop_centered_momentum", 7,
         ("velocity", "average_gradient", "momentum"),
         ("learning_rate", "rho", "momentum", "epsilon")),
    Rule("adam", 8, ("momentum", "velocity"),
         ("alpha", "beta_1", "beta_2", "epsilon")),
    Rule("adam_amsgrad", 9, ("momentum", "velocity", "velocity_hat"),
         ("alpha", "beta_1", "beta_2", "epsilon")),
)}

#: Length of the packed scalar vector (the longest rule's, plus clipvalue).
HP_SIZE = 6


def pack(rule: Rule, scalars, clipvalue=math.inf, out=None) -> np.ndarray:
    """Pack a rule's public scalars into the float64 vector the kernels read.

    Layouts (after ``hp[0] = clipvalue``)::

        sgd*                 lr, momentum
        adagrad              lr, epsilon
        rmsprop*             lr, rho, 1 - rho, epsilon, momentum
        adam*                alpha, 1 - beta_1, 1 - beta_2, epsilon
    """
    hp = np.zeros(HP_SIZE) if out is None else out
    hp[0] = clipvalue
    s = scalars
    name = rule.name
    if name.startswith("sgd"):
        hp[1] = s[0]
        hp[2] = s[1] if len(s) > 1 else 0.0
    elif name == "adagrad":
        hp[1], hp[2] = s
    elif name.startswith("rmsprop"):
        lr, rho = s[0], s[1]
        momentum = s[2] if len(s) == 4 else 0.0
        hp[1], hp[2], hp[3], hp[4], hp[5] = lr, rho, 1.0 - rho, s[-1], momentum
    else:  # adam, adam_amsgrad
        alpha, beta_1, beta_2, eps = s
        hp[1], hp[2], hp[3], hp[4] = alpha, 1.0 - beta_1, 1.0 - beta_2, eps
    return hp
