"""Stochastic gradient descent, with optional (Nesterov) momentum."""
from __future__ import annotations

from .._validation import boolean, real
from .base import Optimizer


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
        see :class:`fastopt.optimizers.base.Optimizer`.
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
