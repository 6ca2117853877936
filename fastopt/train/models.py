"""Models with analytic backward passes: a stack of Dense layers.

All parameters of a model live in one contiguous buffer, ``model.flat_params``;
``model.params`` is a dict of views of it, one per tensor, named as in Keras
(``"dense_0/kernel"`` of shape ``(inputs, units)``, ``"dense_0/bias"``).  The
gradients live the same way in ``model.flat_grads`` / ``model.grads``, with the
same names and shapes, and :meth:`MLP.loss_and_grad` overwrites them in place.
Give the optimizer ``model.params`` and step it with ``model.grads``::

    model = LogisticRegression(4, seed=0)
    opt = fastopt.Adam(model.params, learning_rate=0.01)
    value, _ = model.loss_and_grad(X, y, "binary_crossentropy")
    opt.step(model.grads)

The optimizer then sees every layer as its own tensor (per-tensor clipping
works) while one step stays one fused kernel call over one dtype group.

Initialisation is Keras's: kernels ``glorot_uniform`` (uniform in
``[-l, l]``, ``l = sqrt(6 / (fan_in + fan_out))``), biases zero, drawn from
``numpy.random.default_rng(seed)``, so the seed alone fixes the initial weights.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from . import _checks, activations
from . import losses as _losses

__all__ = ["Dense", "MLP", "LogisticRegression"]


class Dense(NamedTuple):
    """One fully connected layer: ``a = activation(x @ kernel + bias)``."""

    name: str
    inputs: int
    units: int
    activation: str


class MLP:
    """A multilayer perceptron: Dense layers with one hidden activation.

    Parameters
    ----------
    n_features : int >= 1
        Number of input columns.
    hidden : sequence of int, default (16,)
        Units of each hidden layer; empty for no hidden layer.
    activation : {"relu", "tanh", "sigmoid"}, default "relu"
        Activation of the hidden layers.
    n_outputs : int >= 1, default 1
        Units of the output layer (at least 2 for softmax).
    output : {"sigmoid", "softmax", "linear"}, default "sigmoid"
        Activation of the output layer.
    seed : int >= 0, default 0
        Fixes the initial weights.
    dtype : float32 or float64, default float32
        Dtype of the parameters, gradients and computations (Keras's default
        is float32); inputs are converted to it.

    Attributes
    ----------
    params, grads : dict of str to ndarray
        Views of ``flat_params`` and ``flat_grads``, one per tensor, in layer
        order (kernel, then bias).
    layers : tuple of :class:`Dense`
    """

    def __init__(self, n_features, hidden=(16,), activation="relu", n_outputs=1,
                 output="sigmoid", seed=0, dtype="float32"):
        owner = type(self).__name__
        n_features = _checks.integer(owner, "n_features", n_features, low=1)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(f"{owner}: hidden must be a sequence of layer sizes, got {hidden!r}")
        hidden = tuple(_checks.integer(owner, f"hidden[{i}]", h, low=1)
                       for i, h in enumerate(hidden))
        activation = _checks.choice(owner, "activation", activation, activations.HIDDEN)
        n_outputs = _checks.integer(owner, "n_outputs", n_outputs, low=1)
        output = _checks.choice(owner, "output", output, activations.OUTPUTS)
        if output == "softmax" and n_outputs < 2:
            raise ValueError(f"{owner}: a softmax output needs n_outputs >= 2, got {n_outputs}")
        self.seed = _checks.integer(owner, "seed", seed, low=0)
        self.dtype = _checks.float_dtype(owner, dtype)
        self.hidden, self.activation = hidden, activation

        sizes = (n_features, *hidden, n_outputs)
        acts = (activation,) * len(hidden) + (output,)
        self.layers = tuple(Dense(f"dense_{i}", sizes[i], sizes[i + 1], acts[i])
                            for i in range(len(acts)))
        shapes = {}
        for layer in self.layers:
            shapes[f"{layer.name}/kernel"] = (layer.inputs, layer.units)
            shapes[f"{layer.name}/bias"] = (layer.units,)
        total = sum(int(np.prod(s)) for s in shapes.values())
        self.flat_params = np.zeros(total, self.dtype)
        self.flat_grads = np.zeros(total, self.dtype)
        self.params, self.grads = {}, {}
        start = 0
        for name, shape in shapes.items():
            stop = start + int(np.prod(shape))
            self.params[name] = self.flat_params[start:stop].reshape(shape)
            self.grads[name] = self.flat_grads[start:stop].reshape(shape)
            start = stop
        self._weights = [(self.params[f"{l.name}/kernel"], self.params[f"{l.name}/bias"])
                         for l in self.layers]
        self._gradients = [(self.grads[f"{l.name}/kernel"], self.grads[f"{l.name}/bias"])
                           for l in self.layers]

        rng = np.random.default_rng(self.seed)
        for layer, (kernel, _) in zip(self.layers, self._weights):
            limit = np.sqrt(6.0 / (layer.inputs + layer.units))
            kernel[...] = rng.uniform(-limit, limit, size=kernel.shape)

    # -- shape facts ------------------------------------------------------------
    @property
    def n_features(self):
        """Number of input columns."""
        return self.layers[0].inputs

    @property
    def n_outputs(self):
        """Number of output units."""
        return self.layers[-1].units

    @property
    def output(self):
        """Activation of the output layer."""
        return self.layers[-1].activation

    @property
    def n_params(self):
        """Number of scalar parameters (the length of ``flat_params``)."""
        return self.flat_params.size

    def get_config(self):
        """The constructor's arguments, JSON-able, with the class name."""
        return {"class_name": type(self).__name__, "n_features": self.n_features,
                "hidden": list(self.hidden), "activation": self.activation,
                "n_outputs": self.n_outputs, "output": self.output, "seed": self.seed,
                "dtype": self.dtype.name}

    def __repr__(self):
        config = self.get_config()
        args = ", ".join(f"{k}={v!r}" for k, v in config.items() if k != "class_name")
        return f"{config['class_name']}({args})"

    # -- computation --------------------------------------------------------------
    def inputs(self, X):
        """``X`` as a 2-D array of the model's dtype (no copy if it already is)."""
        X = np.asarray(X, dtype=self.dtype)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"{type(self).__name__}: X must have shape (n, {self.n_features}), "
                             f"got {X.shape}")
        return X

    def targets(self, y, n):
        """``y`` as an ``(n, n_outputs)`` array of the model's dtype."""
        y = np.asarray(y, dtype=self.dtype)
        if y.size != n * self.n_outputs or (y.ndim == 2 and y.shape[1] != self.n_outputs) \
                or y.ndim > 2:
            raise ValueError(f"{type(self).__name__}: y must have shape ({n}, {self.n_outputs})"
                             f"{f' or ({n},)' if self.n_outputs == 1 else ''}, got {y.shape}")
        return y.reshape(n, self.n_outputs)

    def forward(self, X):
        """Logits of the output layer and the cache :meth:`backward` needs.

        Returns ``(z, cache)``: ``z`` the output layer's pre-activations, and
        ``cache`` per layer ``(input, pre-activation, activation)`` (the output
        layer's activation left as ``None``: the loss works from ``z``).
        """
        a = self.inputs(X)
        cache = []
        last = len(self.layers) - 1
        for i, (layer, (kernel, bias)) in enumerate(zip(self.layers, self._weights)):
            z = a @ kernel
            z += bias
            out = None if i == last else activations.forward(layer.activation, z)
            cache.append((a, z, out))
            a = out
        return z, cache

    def predict(self, X):
        """Outputs of the model (probabilities for sigmoid or softmax outputs)."""
        z, _ = self.forward(X)
        return activations.forward(self.output, z)

    def backward(self, cache, dz):
        """Write the gradients of the loss into ``self.grads``, in place.

        ``cache`` is from :meth:`forward` and ``dz`` the gradient of the loss
        with respect to the output logits.
        """
        for i in range(len(self.layers) - 1, -1, -1):
            a_in, z, a_out = cache[i]
            if a_out is not None:  # hidden layer: through its activation
                dz = activations.backward(self.layers[i].activation, z, a_out, dz)
            g_kernel, g_bias = self._gradients[i]
            np.matmul(a_in.T, dz, out=g_kernel)
            np.sum(dz, axis=0, out=g_bias)
            if i:
                dz = dz @ self._weights[i][0].T

    def loss_and_grad(self, X, y, loss=None):
        """Loss of the batch, with its gradients written into ``self.grads``.

        Parameters
        ----------
        X : array of shape (n, n_features)
        y : array of shape (n, n_outputs) (or (n,) for one output), the model's dtype
        loss : str or Loss, optional
            Default: the output activation's natural loss
            (:func:`fastopt.train.losses.default_for`).

        Returns
        -------
        (float, ndarray)
            The batch's mean loss and the output logits ``z``.
        """
        loss = self.get_loss(loss)
        z, cache = self.forward(X)
        value, dz = loss(z, self.targets(y, len(z)), self.output)
        self.backward(cache, dz)
        return value, z

    def get_loss(self, loss=None):
        """The :class:`~fastopt.train.losses.Loss` named by ``loss`` (default:
        the output's natural loss), checked against the output activation."""
        loss = _losses.default_for(self.output) if loss is None else _losses.get(loss)
        loss.check_output(self.output)
        return loss


class LogisticRegression(MLP):
    """Logistic regression: one Dense layer.

    Two classes give one sigmoid output (binary cross-entropy); more give a
    softmax over ``n_classes`` outputs (multinomial logistic regression).

    Parameters
    ----------
    n_features : int >= 1
    n_classes : int >= 2, default 2
    seed : int >= 0, default 0
        Fixes the initial weights (glorot_uniform kernel, zero bias).
    dtype : float32 or float64, default float32
    """

    def __init__(self, n_features, n_classes=2, seed=0, dtype="float32"):
        n_classes = _checks.integer(type(self).__name__, "n_classes", n_classes, low=2)
        super().__init__(n_features, hidden=(), n_outputs=1 if n_classes == 2 else n_classes,
                         output="sigmoid" if n_classes == 2 else "softmax", seed=seed,
                         dtype=dtype)

    @property
    def n_classes(self):
        """Number of classes."""
        return max(self.n_outputs, 2)

    def get_config(self):
        return {"class_name": "LogisticRegression", "n_features": self.n_features,
                "n_classes": self.n_classes, "seed": self.seed, "dtype": self.dtype.name}
