"""Activation functions and their backward passes, for the trainer's Dense layers.

Each activation has a forward ``f(z) -> a`` and a backward
``(z, a, da) -> dz`` that turns the gradient with respect to the activation
``a`` into the gradient with respect to the pre-activation ``z``; the backward
uses whichever of ``z`` and ``a`` is cheaper.  All of them work row-wise on
``(batch, units)`` arrays and never overflow: the sigmoid and softmax are
written in their numerically stable forms.
"""
from __future__ import annotations

import numpy as np

__all__ = ["HIDDEN", "OUTPUTS", "forward", "backward", "sigmoid"]


def sigmoid(z):
    """``1 / (1 + exp(-z))`` without overflow for large ``|z|``."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0, e) / (1.0 + e)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _softmax_backward(z, a, da):
    # Jacobian-vector product of the softmax: a * (da - <da, a>) per row
    return a * (da - np.sum(da * a, axis=1, keepdims=True))


_FORWARD = {
    "linear": lambda z: z,
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "sigmoid": sigmoid,
    "softmax": _softmax,
}

_BACKWARD = {
    "linear": lambda z, a, da: da,
    "relu": lambda z, a, da: da * (z > 0),
    "tanh": lambda z, a, da: da * (1.0 - a * a),
    "sigmoid": lambda z, a, da: da * a * (1.0 - a),
    "softmax": _softmax_backward,
}

#: Activations allowed on hidden layers and on the output layer.
HIDDEN = ("relu", "tanh", "sigmoid")
OUTPUTS = ("sigmoid", "softmax", "linear")


def forward(name, z):
    """The activation ``name`` applied to the pre-activations ``z``."""
    return _FORWARD[name](z)


def backward(name, z, a, da):
    """Gradient with respect to ``z`` given the gradient ``da`` with respect to
    ``a = forward(name, z)``."""
    return _BACKWARD[name](z, a, da)
