"""RMSprop, plain or centred, with optional momentum."""
from __future__ import annotations

from .._validation import boolean, real
from .base import Optimizer


class RMSprop(Optimizer):
    """RMSprop: divide by a running root mean square of the gradients.

    Keras 3 formulas (see :func:`fastopt.reference.rmsprop` and its variants)::

        v   <- rho * v + (1 - rho) * g^2
        a   <- rho * a + (1 - rho) * g                    (centered=True)
        den <- v + eps, or max(v - a^2, 0) + eps          (centered=True)
        inc <- lr * g / sqrt(den)
        w   <- w - inc                                    (momentum == 0)
        mom <- momentum * mom + inc;  w <- w - mom        (momentum > 0)

    The clamp at zero in the centred denominator differs from Keras only where
    rounding made ``v - a^2`` negative (it is never negative in exact
    arithmetic); Keras would then take the square root of a negative number.

    Parameters
    ----------
    params : array, list/tuple of arrays, or dict of arrays
    learning_rate : float or schedule, default 0.001
    rho : float in [0, 1), default 0.9
    momentum : float in [0, 1), default 0.0
    epsilon : float >= 0, default 1e-7
    centered : bool, default False
    **kwargs
        See :class:`fastopt.optimizers.base.Optimizer`.
    """

    _DEFAULTS = {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7,
                 "centered": False}

    def __init__(self, params, learning_rate=None, rho=None, momentum=None, epsilon=None,
                 centered=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"rho": rho, "momentum": momentum, "epsilon": epsilon,
                                "centered": centered}, **kwargs)

    def _check(self, h):
        return {"rho": real("RMSprop", "rho", h["rho"], low=0.0, high=1.0, high_open=True),
                "momentum": real("RMSprop", "momentum", h["momentum"], low=0.0, high=1.0,
                                 high_open=True),
                "epsilon": real("RMSprop", "epsilon", h["epsilon"], low=0.0),
                "centered": boolean("RMSprop", "centered", h["centered"])}

    def _rule_name(self):
        name = "rmsprop_centered" if self._hyper["centered"] else "rmsprop"
        return name + "_momentum" if self._hyper["momentum"] > 0 else name

    def _scalars(self, lr, iteration):
        h = self._hyper
        if h["momentum"] > 0:
            return (lr, h["rho"], h["momentum"], h["epsilon"])
        return (lr, h["rho"], h["epsilon"])
