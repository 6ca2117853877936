"""Training checkpoints: model parameters, optimizer state, epoch and history in
one ``.npz`` file, written atomically and read without pickle.

:func:`fastopt.train.fit` resumes from one with ``resume=path``; because the
batch order of epoch ``e`` depends only on ``(seed, e)``, a resumed run
continues bit-identically to one that never stopped.

Keys in the file: ``format``; ``epoch`` (epochs completed); ``history`` and
``model_config`` (JSON strings); ``flat_params``; and the optimizer's state as
:func:`fastopt.save_state` stores it.  The file is written as
:func:`fastopt.save_state` writes (symlinks followed, non-regular targets
refused, permissions kept); a file that cannot be loaded raises
:class:`fastopt.StateFileError`.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..state import StateFileError, as_count, as_json, read_npz, state_from_arrays

__all__ = ["save_checkpoint", "load_checkpoint"]

_FORMAT = 1


def _architecture(model):
    """The model config without the seed, which only chose the initial weights."""
    return {k: v for k, v in model.get_config().items() if k != "seed"}


def save_checkpoint(path, model, optimizer, epoch, history):
    """Write a checkpoint to ``path``, atomically.

    The file is written under a temporary name in the same folder and then
    renamed over ``path``, so ``path`` always holds a complete checkpoint.

    Parameters
    ----------
    path : str or os.PathLike
    model : fastopt.train.MLP
    optimizer : fastopt.Optimizer or fastopt.distributed.ShardedOptimizer
        Built on ``model.params``.  A ``ShardedOptimizer``'s state is
        gathered and rank 0 writes the file (every rank must call this).
    epoch : int
        Number of epochs completed.
    history : dict of str to list of float
    """
    arrays = {"format": np.array(_FORMAT), "epoch": np.array(epoch, dtype=np.int64),
              "history": np.array(json.dumps(history)),
              "model_config": np.array(json.dumps(_architecture(model))),
              "flat_params": model.flat_params}
    # the optimizer writes itself (a sharded one collectively, from rank 0)
    optimizer.save_state(path, extra=arrays)


def load_checkpoint(path, model, optimizer):
    """Restore ``model`` and ``optimizer`` from a checkpoint.

    Everything is checked before anything changes: the model's architecture
    and dtype must match the checkpoint's, and the optimizer must be of the
    same class and hyperparameters (:meth:`fastopt.Optimizer.load_state_dict`).

    Returns
    -------
    (int, dict)
        The number of epochs completed and the history up to then.

    Raises
    ------
    fastopt.StateFileError
        (a ``ValueError``) naming the file, if it is damaged, not a
        checkpoint, or does not fit the model (architecture, and
        ``flat_params``'s exact shape and dtype) or the optimizer; nothing
        is changed.
    """
    path = os.fspath(path)
    where = f"load_checkpoint: {path!r}"
    agree = getattr(optimizer, "agree", None)  # a sharded optimizer: every rank reads or none
    epoch, history, flat, state = (_read(path, model, where) if agree is None else
                                   agree(lambda: _read(path, model, where), "load_checkpoint"))
    try:  # checks itself whole before it changes anything
        optimizer.load_state_dict(state)
    except StateFileError:
        raise
    except ValueError as e:
        raise StateFileError(f"{where}: {e}") from e
    model.flat_params[...] = flat  # cannot fail: shape and dtype checked
    return epoch, history


def _read(path, model, where):
    """``(epoch, history, flat_params, optimizer state)`` of a checkpoint,
    checked against ``model``."""
    z = read_npz(path, where)
    if "format" not in z:
        raise StateFileError(f"{where} is not a fastopt training checkpoint")
    if as_count(z["format"], "the checkpoint format", where) != _FORMAT:
        raise StateFileError(f"{where}: checkpoint format {int(z['format'])}; this fastopt "
                             f"reads format {_FORMAT}")
    for key in ("epoch", "history", "model_config", "flat_params"):
        if key not in z:
            raise StateFileError(f"{where}: no {key!r} array (damaged checkpoint)")
    saved = as_json(z["model_config"], "the model config", where, dict)
    if saved != _architecture(model):
        raise StateFileError(f"{where} is for the model {saved}, not {_architecture(model)}")
    epoch = as_count(z["epoch"], "the epoch", where)
    history = as_json(z["history"], "the history", where, dict)
    flat, dst = z["flat_params"], model.flat_params
    if flat.shape != dst.shape or flat.dtype != dst.dtype:
        raise StateFileError(f"{where}: flat_params has shape {flat.shape} and dtype "
                             f"{flat.dtype}, the model {dst.shape} and {dst.dtype}")
    return epoch, history, flat, state_from_arrays(z, where)
