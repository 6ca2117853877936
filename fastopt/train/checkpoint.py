"""Training checkpoints: model parameters, optimizer state, epoch and history in
one ``.npz`` file, written atomically and read without pickle.

:func:`fastopt.train.fit` resumes from one with ``resume=path``; because the
batch order of epoch ``e`` depends only on ``(seed, e)``, a resumed run
continues bit-identically to one that never stopped.

Keys in the file: ``format``; ``epoch`` (epochs completed); ``history`` and
``model_config`` (JSON strings); ``flat_params``; and the optimizer's state as
:func:`fastopt.save_state` stores it.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..state import state_from_arrays

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
    ValueError
        If the file is not a checkpoint or does not fit the model or optimizer.
    """
    path = os.fspath(path)
    agree = getattr(optimizer, "agree", None)  # a sharded optimizer: every rank reads or none
    epoch, history, flat, state = (_read(path, model) if agree is None else
                                   agree(lambda: _read(path, model), "load_checkpoint"))
    optimizer.load_state_dict(state)  # checks itself whole before it changes anything
    model.flat_params[...] = flat
    return epoch, history


def _read(path, model):
    """``(epoch, history, flat_params, optimizer state)`` of a checkpoint,
    checked against ``model``."""
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z.files or int(z["format"]) != _FORMAT:
            raise ValueError(f"load_checkpoint: {path!r} is not a fastopt training checkpoint")
        saved = json.loads(str(z["model_config"]))
        if saved != _architecture(model):
            raise ValueError(f"load_checkpoint: {path!r} is for the model {saved}, not "
                             f"{_architecture(model)}")
        flat = z["flat_params"]
        if flat.shape != model.flat_params.shape:
            raise ValueError(f"load_checkpoint: {path!r} holds {flat.shape} parameters, the "
                             f"model {model.flat_params.shape}")
        state = state_from_arrays(z, f"load_checkpoint: {path!r}")
        return int(z["epoch"]), json.loads(str(z["history"])), flat, state
