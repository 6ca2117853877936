"""Training checkpoints: model parameters, optimizer state, epoch and history in
one ``.npz`` file, written atomically and read without pickle.

:func:`fastopt.train.fit` resumes from one with ``resume=path``; because the
batch order of epoch ``e`` depends only on ``(seed, e)``, a resumed run
continues bit-identically to one that never stopped.

Keys in the file: ``format``; ``epoch`` (epochs completed); ``history`` and
``model_config`` (JSON strings); ``flat_params``; ``optimizer/config`` (JSON),
``optimizer/iterations`` and ``optimizer/slots/<slot name>`` (the arrays of
:meth:`fastopt.Optimizer.state_dict`).
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

__all__ = ["save_checkpoint", "load_checkpoint"]

_FORMAT = 1
_SLOTS = "optimizer/slots/"


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
    optimizer : fastopt.Optimizer
        Built on ``model.params``.
    epoch : int
        Number of epochs completed.
    history : dict of str to list of float
    """
    state = optimizer.state_dict()
    arrays = {"format": np.array(_FORMAT), "epoch": np.array(epoch, dtype=np.int64),
              "history": np.array(json.dumps(history)),
              "model_config": np.array(json.dumps(_architecture(model))),
              "flat_params": model.flat_params,
              "optimizer/config": np.array(json.dumps(state["config"])),
              "optimizer/iterations": np.array(state["iterations"], dtype=np.int64)}
    arrays.update({_SLOTS + k: v for k, v in state["slots"].items()})
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                               prefix=".fastopt-checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z.files or int(z["format"]) != _FORMAT:
            raise ValueError(f"load_checkpoint: {path!r} is not a fastopt training checkpoint")
        saved = json.loads(str(z["model_config"]))
        if saved != _architecture(model):
            raise ValueError(f"load_checkpoint: {path!r} is for the model {saved}, not "
                             f"{_architecture(model)}")
        flat = z["flat_params"]
        state = {"config": json.loads(str(z["optimizer/config"])),
                 "iterations": int(z["optimizer/iterations"]),
                 "slots": {k[len(_SLOTS):]: z[k] for k in z.files if k.startswith(_SLOTS)}}
        epoch, history = int(z["epoch"]), json.loads(str(z["history"]))
    optimizer.load_state_dict(state)  # checks itself whole before it changes anything
    model.flat_params[...] = flat
    return epoch, history
