"""Stochastic gradient descent, with optional (Nesterov) momentum."""
from __future__ import annotations

from .._validation import boolean, real
from .base import Optimizer


class SGD(Optimizer):
    """Gradient descent with optional momentum and Nesterov momentum.

    Keras 3 formulas (see :func:`fastopt.reference.sgd`,
    :func:`~fastopt.reference.sgd_momentum` and
    :func:`~fastopt.reference.sgd_nesterov`)::

        momentum == 0:  w <- w - lr * g
        otherwise:      m <- momentum * m - lr * g
                        w <- w + m                      (nesterov=False)
                        w <- w + momentum * m - lr * g  (nesterov=True)

    Parameters
    ----------
    params : array, list/tuple of arrays, or dict of arrays
        Updated in place.
    learning_rate : float or schedule, default 0.01
    momentum : float in [0, 1], default 0.0
        With 0 there is no momentum slot (and ``nesterov`` has no effect).
    nesterov : bool, default False
    **kwargs
        ``weight_decay``, ``clipnorm``, ``clipvalue``, ``global_clipnorm``,
        ``backend``, ``convention``: see :class:`fastopt.optimizers.base.Optimizer`.
    """

    _DEFAULTS = {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False}

    def __init__(self, params, learning_rate=None, momentum=None, nesterov=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"momentum": momentum, "nesterov": nesterov}, **kwargs)

    def _check(self, h):
        return {"momentum": real("SGD", "momentum", h["momentum"], low=0.0, high=1.0),
                "nesterov": boolean("SGD", "nesterov", h["nesterov"])}

    @property
    def momentum(self):
        return self._hyper["momentum"]

    @property
    def nesterov(self):
        return self._hyper["nesterov"]

    def _rule_name(self):
        if self.momentum == 0.0:
            return "sgd"
        return "sgd_nesterov" if self.nesterov else "sgd_momentum"

    def _scalars(self, lr, iteration):
        return (lr,) if self.momentum == 0.0 else (lr, self.momentum)
