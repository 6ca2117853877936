"""The training loop: ``fit`` and ``evaluate``, with Keras's figures.

An epoch's ``loss`` is the mean of its batch losses weighted by batch size,
each batch's loss taken on the forward pass before that batch's update (the
number Keras reports); ``accuracy`` is counted the same way.  ``val_loss`` and
``val_accuracy`` are computed on the validation data after the epoch (with an
optimizer that has ``train()``/``eval()``, schedule-free AdamW, at its averaged
point: ``eval()`` before, ``train()`` after).

Accuracy is Keras's ``"accuracy"``: for a softmax output the share of rows
whose largest output is the target's largest; otherwise the share of outputs
on the same side of 0.5 as the target.
"""
from __future__ import annotations

import numbers
import os

import numpy as np

from ..protocol import missing_members
from . import _checks, activations
from .losses import BinaryCrossentropy, CategoricalCrossentropy
from .callbacks import Callback, ProgressBar
from .checkpoint import load_checkpoint
from .models import MLP

__all__ = ["fit", "evaluate", "epoch_order", "History"]


class History:
    """What :func:`fit` returns, as in Keras.

    Attributes
    ----------
    history : dict of str to list of float
        ``loss`` and ``accuracy`` per epoch, and ``val_loss`` and
        ``val_accuracy`` with validation data.
    epoch : list of int
        The epochs run, from 0 (after a resume, the earlier ones included).
    """

    def __init__(self, keys):
        self.history = {k: [] for k in keys}
        self.epoch = []

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


def epoch_order(n, seed, epoch):
    """The order in which ``fit(shuffle=True, seed=seed)`` visits ``n`` rows in
    ``epoch``: a permutation that depends only on ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _correct(z, y, output):
    """Number of correct predictions in a batch, counted in :func:`_per_row`'s units."""
    if output == "softmax":
        return int(np.count_nonzero(z.argmax(axis=1) == y.argmax(axis=1)))
    return int(np.count_nonzero((activations.forward(output, z) > 0.5) == (y > 0.5)))


def _per_row(model):
    """Accuracy units per row: 1 for softmax, else one per output."""
    return 1 if model.output == "softmax" else model.n_outputs


def evaluate(model, X, y, loss=None, batch_size=1024):
    """Loss and accuracy of ``model`` on ``(X, y)``, without changing anything.

    Returns ``{"loss": float, "accuracy": float}``; the loss is the mean over
    rows, computed in batches of ``batch_size`` rows.
    """
    loss = model.get_loss(loss)
    batch_size = _checks.integer("evaluate", "batch_size", batch_size, low=1)
    X, y = _data("evaluate", model, loss, X, y)
    return _evaluate(model, X, y, loss, batch_size)


def _data(owner, model, loss, X, y, names=("X", "y")):
    """``X`` and ``y`` in the model's dtype and shapes, after checking that they are
    real, finite and, for a cross-entropy, labels the loss can take."""
    raw_x, raw_y = _checks.real(owner, names[0], X), _checks.real(owner, names[1], y)
    with np.errstate(over="ignore"):  # a value beyond the dtype's range: reported below
        X = model.inputs(raw_x)
    if len(X) == 0:
        raise ValueError(f"{owner}: {names[0]} has no rows")
    _checks.finite(owner, names[0], X, raw_x)
    if isinstance(loss, CategoricalCrossentropy) and raw_y.ndim == 1 and model.n_outputs > 1 \
            and raw_y.size == len(X):
        raise ValueError(f"{owner}: {names[1]} has one value per row, but categorical "
                         f"cross-entropy needs one-hot rows of {model.n_outputs} values; "
                         f"for class indices give np.eye({model.n_outputs})[{names[1]}]")
    with np.errstate(over="ignore"):
        y = model.targets(raw_y, len(X))
    _checks.finite(owner, names[1], y, raw_y)
    _check_labels(owner, names[1], y, loss)
    return X, y


def _check_labels(owner, name, y, loss):
    """Cross-entropy targets: probabilities (0 and 1 for hard labels); a softmax's
    rows sum to 1.  Other losses take any finite target."""
    if not isinstance(loss, (BinaryCrossentropy, CategoricalCrossentropy)):
        return
    outside = (y < 0) | (y > 1)
    if outside.any():
        r, c = (int(i) for i in np.argwhere(outside)[0])
        value = f"{name}[{r}]" if y.shape[1] == 1 else f"{name}[{r}, {c}]"
        need = ("the labels 0 and 1 (or probabilities between them)"
                if isinstance(loss, BinaryCrossentropy) else
                "one-hot rows (or class probabilities summing to 1)")
        raise ValueError(f"{owner}: {loss.name} needs {need}; {value} is {float(y[r, c]):g}")
    if isinstance(loss, CategoricalCrossentropy):
        sums = y.sum(axis=1, dtype=np.float64)
        off = np.abs(sums - 1.0) > 1e-3
        if off.any():
            r = int(np.argmax(off))
            raise ValueError(f"{owner}: {loss.name} needs one-hot rows (or class "
                             f"probabilities summing to 1); row {r} of {name} sums to "
                             f"{sums[r]:g}")


def _evaluate(model, X, y, loss, batch_size=1024):
    total = correct = 0.0
    for start in range(0, len(X), batch_size):
        xb, yb = X[start:start + batch_size], y[start:start + batch_size]
        z, _ = model.forward(xb)
        value, _ = loss(z, yb, model.output)
        total += value * len(xb)
        correct += _correct(z, yb, model.output)
    return {"loss": total / len(X), "accuracy": correct / (len(X) * _per_row(model))}


def _grads_like(model, optimizer):
    """``model.grads`` in the structure of ``optimizer.params`` (an array, list,
    dict, or parameter groups of those), checking that the optimizer was built
    on exactly the model's parameters."""
    grad_of = {id(p): model.grads[k] for k, p in model.params.items()}
    seen = []

    def like(part):
        if isinstance(part, np.ndarray):
            seen.append(id(part))
            return grad_of.get(id(part))
        if isinstance(part, dict):
            return {k: like(v) for k, v in part.items()}
        return [like(v) for v in part]

    mine = optimizer.params
    if isinstance(mine, list) and all(isinstance(e, dict) for e in mine):  # parameter groups
        grads = [like(group["params"]) for group in mine]
    else:
        grads = like(mine)
    if sorted(seen) != sorted(grad_of):
        raise ValueError("fit: the optimizer must be built on model.params (all of them, e.g. "
                         "fastopt.Adam(model.params)); it holds other arrays")
    return grads


def fit(model, X, y, optimizer, epochs=1, batch_size=32, shuffle=True, seed=0,
        validation_data=None, callbacks=(), verbose=1, loss=None, resume=None):
    """Train ``model`` on ``(X, y)`` with ``optimizer``, Keras-style.

    Each epoch visits the rows in batches of ``batch_size`` (the last one may
    be smaller) in the order :func:`epoch_order` ``(n, seed, epoch)``, and for
    each batch computes the loss and gradients and calls
    ``optimizer.step(model.grads)``.  The seed fixes the batch order only, so
    the same model seed and fit seed give every optimizer the same start and
    the same batches.

    Parameters
    ----------
    model : fastopt.train.MLP or LogisticRegression
    X : array of shape (n, n_features)
    y : array of shape (n, n_outputs), or (n,) for one output
        ``X`` and ``y`` are converted to the model's dtype.  Both must be
        real and finite (in that dtype), and ``y`` what the loss takes:
        0/1 labels (or probabilities) for binary cross-entropy, one-hot rows
        (or probabilities summing to 1) for categorical cross-entropy;
        anything else raises ``TypeError`` or ``ValueError`` before any step.
    optimizer : fastopt.Optimizer or fastopt.distributed.ShardedOptimizer
        Built on ``model.params``.  For data-parallel training over MPI, give
        a :class:`fastopt.distributed.DataParallelModel` and a
        ``ShardedOptimizer`` on every rank.
    epochs : int >= 1, default 1
        Train until this many epochs are done (counting resumed ones).
    batch_size : int >= 1, default 32
    shuffle : bool, default True
        False visits the rows in their order every epoch.
    seed : int >= 0, default 0
    validation_data : tuple (X_val, y_val), optional
        Adds ``val_loss`` and ``val_accuracy`` to the history.
    callbacks : sequence of Callback
    verbose : {0, 1, 2}, default 1
        0 silent; 1 a progress bar on stderr; 2 one line per epoch.
    loss : str or fastopt.train.losses.Loss, optional
        Default: the natural loss of the model's output (binary cross-entropy
        for sigmoid, categorical for softmax, MSE for linear).
    resume : str or os.PathLike, optional
        A file written by :class:`~fastopt.train.Checkpoint`: the model,
        optimizer and history are restored from it and training continues
        after its last epoch.  With the same data, seed and batch size the
        result is bit-identical to a run that never stopped.  Callbacks start
        afresh (early stopping forgets its best value).

    Returns
    -------
    History
    """
    owner = "fit"
    if not isinstance(model, MLP):
        raise TypeError(f"{owner}: model must be a fastopt.train model (MLP or "
                        f"LogisticRegression), got {type(model).__name__}")
    if missing_members(optimizer):  # the optimizer protocol, whatever the class
        raise TypeError(f"{owner}: optimizer must be a fastopt optimizer, "
                        f"got {type(optimizer).__name__}")
    epochs = _checks.integer(owner, "epochs", epochs, low=1)
    batch_size = _checks.integer(owner, "batch_size", batch_size, low=1)
    if not isinstance(shuffle, bool):
        raise TypeError(f"{owner}: shuffle must be True or False, got {shuffle!r}")
    seed = _checks.integer(owner, "seed", seed, low=0)
    if isinstance(verbose, bool) or not isinstance(verbose, numbers.Integral) \
            or verbose not in (0, 1, 2):
        raise ValueError(f"{owner}: verbose must be 0, 1 or 2, got {verbose!r}")
    callbacks = list(callbacks)
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise TypeError(f"{owner}: callbacks[{i}] must be a fastopt.train.Callback, "
                            f"got {type(cb).__name__}")
    if resume is not None and not isinstance(resume, (str, os.PathLike)):
        raise TypeError(f"{owner}: resume must be a path, got {resume!r}")
    # With a sharded optimizer (its ``agree``, fastopt.protocol) each rank
    # checks its own shard of the data: every rank goes on, or every rank
    # raises (one rank's bad data must not leave the others in a collective)
    agree = getattr(optimizer, "agree", None)
    any_rank = getattr(optimizer, "any_rank", None)

    def on_every_rank(work, where):
        return work() if agree is None else agree(work, f"{owner}: {where}")

    def check_data():
        loss_fn = model.get_loss(loss)
        data = _data(owner, model, loss_fn, X, y)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError(f"{owner}: validation_data must be a tuple (X_val, y_val)")
            val = _data(owner, model, loss_fn, *validation_data,
                        names=("validation_data X", "validation_data y"))
        return loss_fn, data, val, _grads_like(model, optimizer)
    loss, (X, y), val_data, grads = on_every_rank(check_data, "the training data")
    keys = ["loss", "accuracy"]
    if val_data is not None:
        X_val, y_val = val_data
        keys += ["val_loss", "val_accuracy"]

    history = History(keys)
    first = 0
    if resume is not None:
        first, saved = load_checkpoint(resume, model, optimizer)

        def check_keys():
            if sorted(saved) != sorted(keys):
                raise ValueError(f"{owner}: the checkpoint {os.fspath(resume)!r} has history "
                                 f"keys {sorted(saved)}, this run {sorted(keys)} "
                                 "(validation_data given in one and not the other?)")
        on_every_rank(check_keys, "the checkpoint's history")
        history.history = saved
        history.epoch = list(range(first))

    n = len(X)
    steps = -(-n // batch_size)
    if verbose:
        callbacks.insert(0, ProgressBar(per_batch=verbose == 1))
    for cb in callbacks:
        cb.model, cb.optimizer, cb.history = model, optimizer, history
        cb.params = {"epochs": epochs, "steps": steps, "samples": n}

    def call(method, *args):
        """Every callback's ``method``; whether one asked to stop.  Under a
        sharded optimizer every rank goes on or every rank raises."""
        def work():
            stop = False
            for cb in callbacks:
                stop = bool(getattr(cb, method)(*args)) or stop
            return stop
        if agree is None:
            return work() if callbacks else False
        # every rank enters the collective, with callbacks or without (verbose
        # on one rank only), and a stop asked for on any rank stops every rank
        stop = on_every_rank(work, f"the callbacks' {method}")
        return any_rank(stop) if any_rank is not None else stop
    call("on_train_begin")
    # whether the batches call the callbacks: on every rank alike when any
    # rank has callbacks (each call is collective under a sharded optimizer)
    per_batch = bool(callbacks)
    if agree is not None:
        per_batch = any_rank(per_batch) if any_rank is not None else True

    x_buf = np.empty((min(batch_size, n), X.shape[1]), X.dtype)
    y_buf = np.empty((min(batch_size, n), y.shape[1]), y.dtype)
    units = _per_row(model)
    for epoch in range(first, epochs):
        call("on_epoch_begin", epoch)
        order = epoch_order(n, seed, epoch) if shuffle else np.arange(n)
        total = correct = 0.0
        for batch, start in enumerate(range(0, n, batch_size)):
            idx = order[start:start + batch_size]
            xb = np.take(X, idx, axis=0, out=x_buf[:len(idx)])
            yb = np.take(y, idx, axis=0, out=y_buf[:len(idx)])
            z, cache = model.forward(xb)
            value, dz = loss(z, yb, model.output)
            model.backward(cache, dz)
            optimizer.step(grads)
            total += value * len(idx)
            correct += _correct(z, yb, model.output)
            seen = start + len(idx)
            if per_batch:
                logs = {"loss": total / seen, "accuracy": correct / (seen * units)}
                call("on_batch_end", batch, logs)
        logs = {"loss": total / n, "accuracy": correct / (n * units)}
        if validation_data is not None:
            modes = hasattr(optimizer, "train_mode")  # schedule-free: evaluate at x
            if modes:
                optimizer.eval()
            val = _evaluate(model, X_val, y_val, loss)
            if modes:
                optimizer.train()
            logs.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        for k in keys:
            history.history[k].append(logs[k])
        history.epoch.append(epoch)
        if call("on_epoch_end", epoch, logs):
            break
    call("on_train_end")
    return history
