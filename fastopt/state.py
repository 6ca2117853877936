"""Saving and restoring optimizer state as ``.npz`` files (no pickle)."""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

__all__ = ["save_state", "load_state"]

_CONFIG = "__config__"
_ITERATIONS = "__iterations__"
_SLOT_PREFIX = "slot:"


def save_state(optimizer, path):
    """Write ``optimizer.state_dict()`` to ``path`` (an ``.npz`` file).

    The config is stored as a JSON string and each slot as an array; the file
    is written to a temporary name and renamed, so a crash never leaves a
    half-written file at ``path``.  It is read back with ``allow_pickle=False``.
    """
    state = optimizer.state_dict()
    arrays = {_CONFIG: np.array(json.dumps(state["config"])),
              _ITERATIONS: np.array(state["iterations"], dtype=np.int64)}
    arrays.update({_SLOT_PREFIX + k: v for k, v in state["slots"].items()})
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fastopt-", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_state(optimizer, path):
    """Load a file written by :func:`save_state` into ``optimizer``.

    Raises ``ValueError`` (and changes nothing) if the file is for another
    optimizer class, other hyperparameters' slots, or other shapes/dtypes.
    """
    with np.load(os.fspath(path), allow_pickle=False) as z:
        if _CONFIG not in z.files or _ITERATIONS not in z.files:
            raise ValueError(f"load_state: {os.fspath(path)!r} is not a fastopt state file")
        state = {"config": json.loads(str(z[_CONFIG])),
                 "iterations": int(z[_ITERATIONS]),
                 "slots": {k[len(_SLOT_PREFIX):]: z[k] for k in z.files
                           if k.startswith(_SLOT_PREFIX)}}
    optimizer.load_state_dict(state)
