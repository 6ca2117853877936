"""Saving and restoring optimizer state as ``.npz`` files (no pickle).

:func:`save_state` / :func:`load_state` are the public pair.  The helpers
below them (:func:`state_to_arrays`, :func:`state_from_arrays`,
:func:`write_npz_atomic`) are shared with :mod:`fastopt.train.checkpoint`,
which stores an optimizer's state next to a model's in one file.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

__all__ = ["save_state", "load_state"]

_CONFIG = "__config__"
_ITERATIONS = "__iterations__"
_SLOT_PREFIX = "slot:"


def state_to_arrays(state):
    """``Optimizer.state_dict()`` as a flat dict of arrays: the config as a
    JSON string, the iteration count, and one array per slot."""
    arrays = {_CONFIG: np.array(json.dumps(state["config"])),
              _ITERATIONS: np.array(state["iterations"], dtype=np.int64)}
    arrays.update({_SLOT_PREFIX + k: v for k, v in state["slots"].items()})
    return arrays


def state_from_arrays(z, where):
    """The inverse of :func:`state_to_arrays`, from an open ``np.load`` file;
    ``where`` names the file in the error raised when it holds no state."""
    if _CONFIG not in z.files or _ITERATIONS not in z.files:
        raise ValueError(f"{where} is not a fastopt state file")
    return {"config": json.loads(str(z[_CONFIG])),
            "iterations": int(z[_ITERATIONS]),
            "slots": {k[len(_SLOT_PREFIX):]: z[k] for k in z.files
                      if k.startswith(_SLOT_PREFIX)}}


def write_npz_atomic(path, arrays):
    """Write ``arrays`` to the ``.npz`` file ``path`` under a temporary name in
    the same folder, flushed to disk, then renamed: ``path`` always holds a
    complete file, the old one or the new one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fastopt-", suffix=".npz.tmp")
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


def save_state(optimizer, path):
    """Write ``optimizer.state_dict()`` to ``path`` (an ``.npz`` file).

    The config is stored as a JSON string and each slot as an array; the file
    is written atomically (see :func:`write_npz_atomic`) and read back with
    ``allow_pickle=False``.  A :class:`fastopt.distributed.ShardedOptimizer`
    writes its whole state from rank 0 (every rank must call this).
    """
    from .distributed.sharded import ShardedOptimizer
    if isinstance(optimizer, ShardedOptimizer):
        optimizer.save_state(path)
        return
    write_npz_atomic(path, state_to_arrays(optimizer.state_dict()))


def load_state(optimizer, path):
    """Load a file written by :func:`save_state` into ``optimizer``.

    Raises ``ValueError`` (and changes nothing) if the file is for another
    optimizer class, other hyperparameters' slots, or other shapes/dtypes.
    """
    with np.load(os.fspath(path), allow_pickle=False) as z:
        state = state_from_arrays(z, f"load_state: {os.fspath(path)!r}")
    optimizer.load_state_dict(state)
