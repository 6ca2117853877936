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
        See :class:`fastopt.optimizers.base.Optimizer`.
    """

    _DEFAULTS = {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7,
                 "centered": False}
    _TORCH_DEFAULTS = {"learning_rate": 0.01, "rho": 0.99, "momentum": 0.0, "epsilon": 1e-8,
                       "centered": False}

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
