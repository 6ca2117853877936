"""Optimizer state in and out: the checks of ``load_state_dict``, and
saving and restoring state as ``.npz`` files (no pickle).

:func:`save_state` / :func:`load_state` are the public pair; both go through
the optimizer protocol (:mod:`fastopt.protocol`), whatever the optimizer's
class.  The helpers (:func:`state_to_arrays`, :func:`state_from_arrays`,
:func:`write_npz_atomic`) are shared with :mod:`fastopt.train.checkpoint`,
which stores an optimizer's state next to a model's in one file, and with
:mod:`fastopt.distributed`.  :func:`check_state_header` and
:func:`check_slots` are the checks of :meth:`fastopt.Optimizer.load_state_dict`.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping

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
    writes its whole state from rank 0 (every rank must call this): each
    optimizer writes itself, through its ``save_state`` method.
    """
    optimizer.save_state(path)


def load_state(optimizer, path):
    """Load a file written by :func:`save_state` into ``optimizer``.

    Raises ``ValueError`` (and changes nothing) if the file is for another
    optimizer class, other hyperparameters' slots, or other shapes/dtypes.
    """
    with np.load(os.fspath(path), allow_pickle=False) as z:
        state = state_from_arrays(z, f"load_state: {os.fspath(path)!r}")
    optimizer.load_state_dict(state)


def check_state_header(owner, state, state_dtype, convention):
    """Check that ``state`` is a state dict for an optimizer of class
    ``owner`` with this ``state_dtype`` and ``convention``; return its
    iteration count as an int."""
    if not isinstance(state, Mapping) or not {"config", "iterations", "slots"} <= set(state):
        raise ValueError(f"{owner}.load_state_dict: expected a dict with keys 'config', "
                         "'iterations' and 'slots'")
    config = dict(state["config"])
    if config.get("class_name") != owner:
        raise ValueError(f"{owner}.load_state_dict: the state is for "
                         f"{config.get('class_name')!r}, not {owner}")
    if config.get("state_dtype") != state_dtype:
        raise ValueError(f"{owner}.load_state_dict: the state keeps the optimizer state in "
                         f"state_dtype={config.get('state_dtype')!r}, this optimizer in "
                         f"state_dtype={state_dtype!r}; build the optimizer with the "
                         "state's state_dtype to load it")
    if config.get("convention", "keras") != convention:
        raise ValueError(f"{owner}.load_state_dict: the state uses convention "
                         f"{config.get('convention')!r}, this optimizer {convention!r}")
    iterations = state["iterations"]
    if isinstance(iterations, np.ndarray) and iterations.ndim == 0:
        iterations = iterations.item()
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) \
            or iterations < 0:
        raise ValueError(f"{owner}.load_state_dict: iterations must be an integer >= 0, "
                         f"got {iterations!r}")
    return int(iterations)


def check_slots(owner, slots, live):
    """Check that ``slots`` (a state dict's) has exactly the keys of ``live``
    (an optimizer's :meth:`state_arrays`), each a NumPy array of the same
    shape and dtype."""
    if set(slots) != set(live):
        raise ValueError(f"{owner}.load_state_dict: slots differ; missing "
                         f"{sorted(set(live) - set(slots))}, unexpected "
                         f"{sorted(set(slots) - set(live))}")
    for key, dst in live.items():
        a = slots[key]
        if not isinstance(a, np.ndarray) or a.shape != dst.shape or a.dtype != dst.dtype:
            raise ValueError(
                f"{owner}.load_state_dict: slot {key!r} has "
                f"shape {getattr(a, 'shape', None)} and dtype {getattr(a, 'dtype', None)}, "
                f"expected {dst.shape} and {dst.dtype}")
