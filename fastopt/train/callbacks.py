"""Callbacks for :func:`fastopt.train.fit`: early stopping, checkpoints, a progress bar.

Before training, ``fit`` sets on each callback ``model``, ``optimizer``,
``history`` (the :class:`~fastopt.train.History` being filled, its keys
already present) and ``params`` (``{"epochs", "steps", "samples"}``), then
calls, as in Keras::

    on_train_begin()
    on_epoch_begin(epoch)                  # epoch counts from 0
    on_batch_end(batch, logs)              # logs: running "loss", "accuracy"
    on_epoch_end(epoch, logs) -> bool      # logs: the epoch's figures; True stops
    on_train_end()

Training stops after the epoch in which any ``on_epoch_end`` returned True.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

from . import _checks
from .checkpoint import save_checkpoint

__all__ = ["Callback", "EarlyStopping", "Checkpoint", "ProgressBar"]


class Callback:
    """Base class; every hook does nothing."""

    model = optimizer = history = params = None

    def on_train_begin(self):
        """Called once before the first epoch."""

    def on_epoch_begin(self, epoch):
        """Called at the start of each epoch."""

    def on_batch_end(self, batch, logs):
        """Called after each optimizer step."""

    def on_epoch_end(self, epoch, logs):
        """Called after each epoch; return True to stop training."""
        return False

    def on_train_end(self):
        """Called once after the last epoch."""


class EarlyStopping(Callback):
    """Stop when a monitored figure has stopped improving (Keras semantics).

    An epoch improves on the best so far when its value beats the best by
    more than ``min_delta``.  After ``patience`` epochs in a row without
    improvement (at least one: as in Keras, patience 0 and 1 both stop at the
    first epoch that does not improve), training stops.  With
    ``restore_best_weights`` the model's parameters are then set back to those
    of the best epoch (like Keras, only when it stops training early).  The
    optimizer's state is not rolled back.

    Parameters
    ----------
    monitor : str, default "val_loss"
        A history key: ``loss``, ``accuracy``, ``val_loss`` or ``val_accuracy``.
    min_delta : float >= 0, default 0
    patience : int >= 0, default 0
    mode : {"auto", "min", "max"}, default "auto"
        ``auto`` maximises keys ending in ``accuracy`` and minimises the others.
    restore_best_weights : bool, default False
    verbose : int, default 0
        1 prints a line to stderr when it stops.

    Attributes
    ----------
    best : float
    best_epoch : int or None
    stopped_epoch : int or None
        The epoch (from 0) after which it stopped training, or None.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto",
                 restore_best_weights=False, verbose=0):
        owner = "EarlyStopping"
        if not isinstance(monitor, str):
            raise TypeError(f"{owner}: monitor must be a string, got {monitor!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) \
                or not min_delta >= 0 or not math.isfinite(min_delta):
            raise ValueError(f"{owner}: min_delta must be a finite number >= 0, got {min_delta!r}")
        self.monitor, self.min_delta = monitor, float(min_delta)
        self.patience = _checks.integer(owner, "patience", patience, low=0)
        mode = _checks.choice(owner, "mode", mode, ("auto", "min", "max"))
        if mode == "auto":
            mode = "max" if monitor.endswith("accuracy") else "min"
        self.mode = mode
        if not isinstance(restore_best_weights, bool):
            raise TypeError(f"{owner}: restore_best_weights must be True or False, "
                            f"got {restore_best_weights!r}")
        self.restore_best_weights = restore_best_weights
        self.verbose = _checks.integer(owner, "verbose", verbose, low=0)
        self._best_weights = None

    def on_train_begin(self):
        if self.monitor not in self.history.history:
            raise ValueError(f"EarlyStopping: monitor {self.monitor!r} is not computed in this "
                             f"run; available: {', '.join(self.history.history)}")
        self.best = -math.inf if self.mode == "max" else math.inf
        self.best_epoch = self.stopped_epoch = None
        self._wait = 0
        if self.restore_best_weights:
            self._best_weights = np.empty_like(self.model.flat_params)

    def _improves(self, value):
        if self.mode == "max":
            return value - self.min_delta > self.best
        return value + self.min_delta < self.best

    def on_epoch_end(self, epoch, logs):
        value = logs[self.monitor]
        if self._improves(value):
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best_weights:
                np.copyto(self._best_weights, self.model.flat_params)
            return False
        self._wait += 1
        if self._wait < self.patience:
            return False
        self.stopped_epoch = epoch
        if self.restore_best_weights and self.best_epoch is not None:
            np.copyto(self.model.flat_params, self._best_weights)
        if self.verbose:
            restored = (f"; restored the weights of epoch {self.best_epoch + 1}"
                        if self.restore_best_weights and self.best_epoch is not None else "")
            print(f"Early stopping after epoch {epoch + 1}: {self.monitor} has not improved "
                  f"on {self.best:.4g} for {self._wait} epoch(s){restored}", file=sys.stderr)
        return True


class Checkpoint(Callback):
    """Write a training checkpoint at the end of every epoch.

    The file (see :mod:`fastopt.train.checkpoint`) holds the model's
    parameters, the optimizer's state, the number of epochs done and the
    history, and is replaced atomically.  Resume with
    ``fit(..., resume=path)``.

    Parameters
    ----------
    path : str or os.PathLike
    """

    def __init__(self, path):
        self.path = path

    def on_epoch_end(self, epoch, logs):
        save_checkpoint(self.path, self.model, self.optimizer, epoch + 1,
                        self.history.history)
        return False


class ProgressBar(Callback):
    """Plain-text progress, one line per epoch.

    On a terminal the line is redrawn as batches go (at most 20 times a
    second); elsewhere, or with ``per_batch=False``, only each epoch's final
    line is written.  ``fit(verbose=1)`` adds one with ``per_batch=True``,
    ``verbose=2`` with ``per_batch=False``.

    Parameters
    ----------
    stream : file, optional
        Default: ``sys.stderr`` at the time of writing.
    per_batch : bool, default True
    width : int >= 1, default 30
        Characters of the bar.
    """

    def __init__(self, stream=None, per_batch=True, width=30):
        self.stream = stream
        self.per_batch = per_batch
        self.width = _checks.integer("ProgressBar", "width", width, low=1)

    def _out(self):
        return sys.stderr if self.stream is None else self.stream

    def on_epoch_begin(self, epoch):
        self._epoch = epoch
        self._start = time.perf_counter()
        self._last_draw = -math.inf
        out = self._out()
        self._live = self.per_batch and hasattr(out, "isatty") and out.isatty()

    def _line(self, done, logs):
        steps, epochs = self.params["steps"], self.params["epochs"]
        filled = self.width * done // steps
        bar = "=" * filled + (">" if filled < self.width else "") \
            + "." * (self.width - filled - 1)
        figures = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        return (f"Epoch {self._epoch + 1}/{epochs} {done:>{len(str(steps))}}/{steps} "
                f"[{bar}] {time.perf_counter() - self._start:.1f}s - {figures}")

    def on_batch_end(self, batch, logs):
        if not self._live:
            return
        now = time.perf_counter()
        if now - self._last_draw >= 0.05:
            self._last_draw = now
            self._out().write("\r" + self._line(batch + 1, logs))
            self._out().flush()

    def on_epoch_end(self, epoch, logs):
        out = self._out()
        out.write(("\r" if self._live else "") + self._line(self.params["steps"], logs) + "\n")
        out.flush()
        return False
