"""Loss functions: value and gradient with respect to the output layer's logits.

A loss sees the output layer's pre-activations ``z`` (the logits), the targets
``y`` (same shape) and the name of the output activation, and returns the
batch's loss, Keras's figure (the mean over samples of each sample's loss),
and ``dL/dz``.

The two cross-entropies are computed from the logits, never from
probabilities, so they are exact and finite however confident the model is:

- binary cross-entropy, for a ``sigmoid`` output, per element
  ``softplus(z) - y*z = max(z, 0) - y*z + log1p(exp(-|z|))``, averaged over the
  outputs of a sample, with ``dL/dz = (sigmoid(z) - y) / size``.  Keras's
  TensorFlow backend also uses the logits behind a sigmoid output; its other
  backends clip the probabilities to ``[1e-7, 1 - 1e-7]``, which caps a sample's
  loss at about 16.1 where this one keeps growing.
- categorical cross-entropy, for a ``softmax`` output, per sample
  ``sum_k y_k * (logsumexp(z) - z_k)``, with ``dL/dz = (softmax(z) * sum(y) - y) / n``.

Mean squared error works behind any output activation: per sample the mean of
``(f(z) - y)^2`` over the outputs, differentiated through ``f``.
"""
from __future__ import annotations

import numpy as np

from . import activations

__all__ = ["Loss", "BinaryCrossentropy", "CategoricalCrossentropy", "MeanSquaredError",
           "get", "default_for", "LOSSES"]


class Loss:
    """Base class: ``loss(z, y, output)`` returns ``(value, dL/dz)``.

    ``outputs`` lists the output activations the loss accepts.
    """

    name = ""
    outputs: tuple = ()

    def __call__(self, z, y, output):
        """Mean loss of the batch (a float) and its gradient with respect to ``z``."""
        raise NotImplementedError  # pragma: no cover - every subclass overrides

    def check_output(self, output):
        """Raise ``ValueError`` unless this loss can follow the activation ``output``."""
        if output not in self.outputs:
            raise ValueError(f"loss {self.name!r} needs a {' or '.join(self.outputs)} output "
                             f"layer, but the model's output activation is {output!r}")

    def __repr__(self):
        return f"{type(self).__name__}()"


class BinaryCrossentropy(Loss):
    """Binary cross-entropy, computed from the logits of a sigmoid output."""

    name = "binary_crossentropy"
    outputs = ("sigmoid",)

    def __call__(self, z, y, output):
        value = np.maximum(z, 0.0) - y * z + np.log1p(np.exp(-np.abs(z)))
        dz = activations.sigmoid(z) - y
        dz /= z.size
        return float(value.mean()), dz


class CategoricalCrossentropy(Loss):
    """Categorical cross-entropy, computed from the logits of a softmax output."""

    name = "categorical_crossentropy"
    outputs = ("softmax",)

    def __call__(self, z, y, output):
        top = z.max(axis=1, keepdims=True)
        e = np.exp(z - top)
        total = e.sum(axis=1, keepdims=True)
        lse = top + np.log(total)
        value = np.sum(y * (lse - z), axis=1)
        dz = e / total * y.sum(axis=1, keepdims=True) - y
        dz /= len(z)
        return float(value.mean()), dz


class MeanSquaredError(Loss):
    """Mean squared error of the activated outputs."""

    name = "mean_squared_error"
    outputs = activations.OUTPUTS

    def __call__(self, z, y, output):
        a = activations.forward(output, z)
        diff = a - y
        dz = activations.backward(output, z, a, diff * (2.0 / z.size))
        return float(np.mean(diff * diff)), dz


LOSSES = {cls.name: cls for cls in (BinaryCrossentropy, CategoricalCrossentropy,
                                     MeanSquaredError)}
_ALIASES = {"bce": "binary_crossentropy", "cce": "categorical_crossentropy",
            "mse": "mean_squared_error"}
_DEFAULT = {"sigmoid": "binary_crossentropy", "softmax": "categorical_crossentropy",
            "linear": "mean_squared_error"}


def get(loss):
    """A :class:`Loss` from an instance or a name (``"binary_crossentropy"``,
    ``"categorical_crossentropy"``, ``"mean_squared_error"``, or ``"bce"``,
    ``"cce"``, ``"mse"``)."""
    if isinstance(loss, Loss):
        return loss
    name = _ALIASES.get(loss, loss) if isinstance(loss, str) else None
    if name not in LOSSES:
        raise ValueError(f"loss must be a Loss or one of "
                         f"{', '.join([*LOSSES, *_ALIASES])}, got {loss!r}")
    return LOSSES[name]()


def default_for(output):
    """The natural loss of an output activation: binary cross-entropy for
    sigmoid, categorical cross-entropy for softmax, MSE for linear."""
    return LOSSES[_DEFAULT[output]]()
