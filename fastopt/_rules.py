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


def pack(rule: Rule, scalars, clipvalue=math.inf):
    """Pack a rule's public scalars into the tuple the kernels read as ``hp``.

    Layouts (after ``hp[0] = clipvalue``; unused entries are 0)::

        sgd*                 lr, momentum
        adagrad              lr, epsilon
        rmsprop*             lr, rho, 1 - rho, epsilon, momentum
        adam*                alpha, 1 - beta_1, 1 - beta_2, epsilon
    """
    return _PACKERS[rule.code](clipvalue, *scalars)


_PACKERS = {
    0: lambda c, lr: (c, lr, 0.0, 0.0, 0.0, 0.0),
    1: lambda c, lr, mu: (c, lr, mu, 0.0, 0.0, 0.0),
    2: lambda c, lr, mu: (c, lr, mu, 0.0, 0.0, 0.0),
    3: lambda c, lr, eps: (c, lr, eps, 0.0, 0.0, 0.0),
    4: lambda c, lr, rho, eps: (c, lr, rho, 1.0 - rho, eps, 0.0),
    5: lambda c, lr, rho, mu, eps: (c, lr, rho, 1.0 - rho, eps, mu),
    6: lambda c, lr, rho, eps: (c, lr, rho, 1.0 - rho, eps, 0.0),
    7: lambda c, lr, rho, mu, eps: (c, lr, rho, 1.0 - rho, eps, mu),
    8: lambda c, alpha, b1, b2, eps: (c, alpha, 1.0 - b1, 1.0 - b2, eps, 0.0),
    9: lambda c, alpha, b1, b2, eps: (c, alpha, 1.0 - b1, 1.0 - b2, eps, 0.0),
}
