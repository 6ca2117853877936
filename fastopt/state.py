"""Optimizer state in and out: the checks of ``load_state_dict``, and
saving and restoring state as ``.npz`` files (no pickle).

:func:`save_state` / :func:`load_state` are the public pair; both go through
the optimizer protocol (:mod:`fastopt.protocol`), whatever the optimizer's
class.  The helpers (:func:`state_to_arrays`, :func:`state_from_arrays`,
:func:`read_npz`, :func:`read_state`, :func:`write_npz_atomic`) are shared with
:mod:`fastopt.train.checkpoint`, which stores an optimizer's state next to a
model's in one file, and with :mod:`fastopt.distributed`.
:func:`check_state_header` and :func:`check_slots` are the checks of
:meth:`fastopt.Optimizer.load_state_dict`.

A file that cannot be used raises :class:`StateFileError`, which names the
file and the problem; nothing is allocated for an array before its declared
size has been checked against the file.

The counters: a state dict carries ``"calls"``, the number of ``step`` calls
(the count learning-rate schedules see), and ``"iterations"``, the number of
updates (``calls // gradient_accumulation_steps`` under gradient
accumulation, else ``calls``).  A dict without ``"calls"`` was written before
the two were told apart: its ``"iterations"`` counted the calls.  A file
stores the call count only, as ``__iterations__``: the field every release
has written with that meaning (the update count follows from it and the
config), so files load alike in older and newer releases.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import zipfile
from collections.abc import Mapping

import numpy as np

__all__ = ["save_state", "load_state", "StateFileError"]

_CONFIG = "__config__"
_ITERATIONS = "__iterations__"
_VERSION = "__format_version__"
_SLOT_PREFIX = "slot:"
_HOST_PREFIX = "host:"

#: the state-file format this fastopt writes and reads; a file without
#: ``__format_version__`` (written before the field existed) is version 1
FORMAT_VERSION = 1

# the most a deflated zip member can expand (deflate's limit is 1032:1)
_DEFLATE_RATIO = 1032


class StateFileError(ValueError):
    """A state or checkpoint file that cannot be loaded: damaged, not a
    fastopt file, of a newer format, or not fitting the optimizer or model.
    The message names the file and the problem."""


# ---------------------------------------------------------------------------
# Arrays <-> state dict

def as_count(value, what, where):
    """``value`` as an int if it is a non-negative integer (not a bool),
    else StateFileError."""
    if isinstance(value, np.ndarray):
        if value.ndim != 0 or value.dtype.kind not in "iu":
            raise StateFileError(f"{where}: {what} must be a non-negative integer stored as "
                                 f"an integer scalar, got an array of dtype {value.dtype} "
                                 f"and shape {value.shape}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0 \
            or value > np.iinfo(np.int64).max:
        raise StateFileError(f"{where}: {what} must be a non-negative (64-bit) integer, "
                             f"got {value!r}")
    return int(value)


def as_json(array, what, where, kind):
    """The JSON document stored as the 0-d string array ``array``, checked to
    be of type ``kind`` (dict or list)."""
    if not isinstance(array, np.ndarray) or array.ndim != 0 or array.dtype.kind != "U":
        raise StateFileError(f"{where}: {what} must be a JSON string, got an array of dtype "
                             f"{getattr(array, 'dtype', None)} and shape "
                             f"{getattr(array, 'shape', None)}")
    try:
        value = json.loads(str(array))
    except ValueError as e:
        raise StateFileError(f"{where}: {what} is not valid JSON ({e})") from None
    if not isinstance(value, kind):
        raise StateFileError(f"{where}: {what} must be a JSON "
                             f"{'object' if kind is dict else 'array'}, got {value!r:.80}")
    return value


def state_to_arrays(state):
    """``Optimizer.state_dict()`` as a flat dict of arrays: the format
    version, the config as a JSON string, the call count (as
    ``__iterations__``), one array per slot (``slot:<key>``) and one float64
    0-d array per host-state scalar (``host:<key>``; only rules with running
    products have any, so other optimizers' files are as before)."""
    calls = as_count(state["calls"] if "calls" in state else state["iterations"],
                     "the call count", "save_state")
    arrays = {_VERSION: np.array(FORMAT_VERSION, dtype=np.int64),
              _CONFIG: np.array(json.dumps(state["config"])),
              _ITERATIONS: np.array(calls, dtype=np.int64)}
    arrays.update({_SLOT_PREFIX + k: v for k, v in state["slots"].items()})
    arrays.update({_HOST_PREFIX + k: np.asarray(v, dtype=np.float64)
                   for k, v in (state.get("host_state") or {}).items()})
    return arrays


def state_from_arrays(z, where):
    """The inverse of :func:`state_to_arrays`, from :func:`read_npz`'s dict
    (or an open ``np.load`` file): ``{"config", "calls", "slots"}`` (the
    loading optimizer derives the update count from the config); ``where``
    names the file in the :class:`StateFileError` raised when it holds no
    usable state."""
    files = list(z.files) if hasattr(z, "files") else list(z)
    if _CONFIG not in files or _ITERATIONS not in files:
        raise StateFileError(f"{where} is not a fastopt state file (no {_CONFIG} and "
                             f"{_ITERATIONS})")
    try:
        if _VERSION in files:
            version = as_count(z[_VERSION], "the format version", where)
            if version != FORMAT_VERSION:
                raise StateFileError(
                    f"{where}: state-file format version {version}; this fastopt reads "
                    f"version {FORMAT_VERSION}" + (" (the file is from a newer fastopt)"
                                                   if version > FORMAT_VERSION else ""))
        state = {"config": as_json(z[_CONFIG], "the config", where, dict),
                 "calls": as_count(z[_ITERATIONS], f"the iteration count ({_ITERATIONS}, "
                                   "the number of step calls)", where),
                 "slots": {k[len(_SLOT_PREFIX):]: z[k] for k in files
                           if k.startswith(_SLOT_PREFIX)}}
        host = {k[len(_HOST_PREFIX):]: z[k] for k in files if k.startswith(_HOST_PREFIX)}
        if host:
            state["host_state"] = host
        return state
    except StateFileError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # a damaged member of an np.load file
        raise StateFileError(f"{where}: damaged file ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------------------
# Reading

def _open_regular(path, where):
    """``path`` opened for binary reading, refused unless a regular file
    (without blocking on a FIFO)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateFileError(f"{where}: not a regular file")
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _member_header(zf, info, file_size, where):
    """``(key, shape, fortran_order, dtype, header_length)`` of one ``.npy``
    member, every size checked against the file before any array is made."""
    name = info.filename
    if not name.endswith(".npy"):
        raise StateFileError(f"{where}: member {name!r} is not an .npy array")
    if info.header_offset + info.compress_size > file_size:
        raise StateFileError(f"{where}: member {name!r} declares {info.compress_size} bytes "
                             "beyond the end of the file (truncated?)")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            raise StateFileError(f"{where}: member {name!r} is stored uncompressed but "
                                 f"declares {info.file_size} bytes in {info.compress_size}")
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        if info.file_size > _DEFLATE_RATIO * info.compress_size + 1024:
            raise StateFileError(f"{where}: member {name!r} declares {info.file_size} bytes, "
                                 f"more than {info.compress_size} compressed bytes can hold")
    else:
        raise StateFileError(f"{where}: member {name!r} uses zip compression method "
                             f"{info.compress_type}; only stored and deflated are read")
    with zf.open(info) as m:
        version = np.lib.format.read_magic(m)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(m)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(m)
        else:
            raise StateFileError(f"{where}: member {name!r} is .npy format {version}, "
                                 "not 1.0 or 2.0")
        header = m.tell()
    if dtype.hasobject:
        raise StateFileError(f"{where}: member {name!r} holds Python objects (pickle), "
                             "which fastopt never loads")
    if any(d < 0 for d in shape):
        raise StateFileError(f"{where}: member {name!r} declares the shape {shape}")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if header + nbytes != info.file_size:
        raise StateFileError(f"{where}: member {name!r} declares shape {shape} of {dtype} "
                             f"({nbytes} bytes) but holds {info.file_size - header}")
    return name[:-4], shape, fortran, dtype, header


def _read_member(zf, info, shape, fortran, dtype, header):
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    buf = bytearray(nbytes)
    with zf.open(info) as m:
        m.read(header)
        view, done = memoryview(buf), 0
        while done < nbytes:
            n = m.readinto(view[done:])
            if not n:
                raise EOFError(f"{info.filename}: {nbytes - done} bytes missing")
            done += n
        if m.read(1):  # also reaches the end, where zipfile checks the CRC
            raise ValueError(f"{info.filename}: data after the array")
    if nbytes == 0:
        return np.empty(shape, dtype, order="F" if fortran else "C")
    flat = np.frombuffer(buf, dtype)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def read_npz(path, where, keep=None):
    """The arrays of the ``.npz`` file ``path``, by name, without pickle.

    Every member's declared shape and dtype is checked against the file
    before anything is allocated.  ``keep(name)`` chooses which arrays to read
    (default: all).  Any problem with the file is a :class:`StateFileError`
    that starts with ``where``; a missing or unreadable file is ``OSError``.
    """
    f, file_size = _open_regular(os.fspath(path), where)
    with f:
        magic = f.read(6)
        f.seek(0)
        if magic == b"\x93NUMPY":
            raise StateFileError(f"{where}: is a .npy file (one array), not an .npz file "
                                 "of named arrays")
        if magic[:2] != b"PK":
            raise StateFileError(f"{where}: not an .npz (zip) file")
        try:
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
                names = [i.filename for i in infos]
                if len(set(names)) != len(names):
                    raise StateFileError(f"{where}: repeated member names")
                headers = [(i, _member_header(zf, i, file_size, where)) for i in infos]
                return {key: _read_member(zf, i, *rest) for i, (key, *rest) in headers
                        if keep is None or keep(key)}
        except StateFileError:
            raise
        except MemoryError:
            raise
        except Exception as e:  # BadZipFile, EOFError, zlib.error, bad headers, ...
            raise StateFileError(f"{where}: damaged file ({type(e).__name__}: {e})") from e


def _state_keys(key):
    return key.startswith("__") or key.startswith(_SLOT_PREFIX) or key.startswith(_HOST_PREFIX)


def read_state(path, where):
    """The state dict stored in the file ``path`` (by :func:`save_state`, or
    in a checkpoint), every problem a :class:`StateFileError` starting with
    ``where``; other arrays in the file are not read."""
    return state_from_arrays(read_npz(path, where, keep=_state_keys), where)


# ---------------------------------------------------------------------------
# Writing

def _temp_prefix(target):
    """The prefix of this host's temporary files for ``target``:
    ``.<name>.fastopt-tmp.<host>.``, followed by ``<pid>.<random>``."""
    base = os.path.basename(target)
    if len(base) > 120:
        digest = hashlib.sha1(base.encode("utf-8", "surrogateescape")).hexdigest()
        base = base[:100] + "~" + digest[:12]
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:48] or "host"
    return f".{base}.fastopt-tmp.{host}."


def _remove_stale_temp_files(folder, prefix):
    """Remove this host's temporary files for one target whose writing process
    is gone (a crash between writing and renaming); a live process's, or one
    whose state cannot be told, is kept."""
    if os.name != "posix":
        return
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        m = re.fullmatch(r"([1-9][0-9]{0,9})\.[0-9a-f]{8}", name[len(prefix):])
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass
        except (OSError, OverflowError):
            pass  # PermissionError: alive, another user's


def write_npz_atomic(path, arrays):
    """Write ``arrays`` to the ``.npz`` file ``path``, atomically: ``path``
    always holds a complete file, the old one or the new one.

    A symlink is followed and its target replaced (the link stays); a target
    that exists and is not a regular file (a directory, device, FIFO, socket)
    is refused with ``OSError`` and nothing is written.  A new file gets the
    umask's permissions, a replaced file keeps its mode.  The data goes to
    ``.<name>.fastopt-tmp.<host>.<pid>.<random>`` next to the target, is
    flushed to disk and renamed over it; such files left by a process that
    died before renaming are removed by the next save of the same target.
    """
    path = os.fspath(path)
    target = os.path.realpath(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        shown = path if target == os.path.abspath(path) else f"{path} (-> {target})"
        raise OSError(errno.EEXIST, f"{shown} is {kind}, not a regular file; nothing "
                      "was written")
    folder = os.path.dirname(target)
    prefix = _temp_prefix(target)
    _remove_stale_temp_files(folder, prefix)
    tmp = os.path.join(folder, f"{prefix}{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            if st is not None:
                os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode))
                if st.st_gid != os.fstat(f.fileno()).st_gid:
                    try:
                        os.fchown(f.fileno(), -1, st.st_gid)
                    except OSError:
                        pass
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself to disk
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save_state(optimizer, path):
    """Write ``optimizer.state_dict()`` to ``path`` (an ``.npz`` file).

    The file holds ``__format_version__`` (1), the config as a JSON string,
    ``__iterations__``, the number of ``step`` calls (``optimizer.calls``;
    under gradient accumulation ``iterations`` is this divided by
    ``gradient_accumulation_steps``), as an integer, and one array per slot;
    it is written atomically (see :func:`write_npz_atomic`: symlinks
    followed, non-regular targets refused, permissions kept) and read back
    without pickle.  A :class:`fastopt.distributed.ShardedOptimizer` writes
    its whole state from rank 0 (every rank must call this): each optimizer
    writes itself, through its ``save_state`` method.
    """
    optimizer.save_state(path)


def load_state(optimizer, path):
    """Load a file written by :func:`save_state` into ``optimizer``.

    Raises :class:`StateFileError` (a ``ValueError``), naming the file, and
    changes nothing if the file is damaged, not a state file, of a newer
    format, or for another optimizer class, other hyperparameters' slots, or
    other shapes/dtypes.  A file without ``__format_version__`` is read as
    version 1.  A missing or unreadable file is ``OSError``.
    """
    where = f"load_state: {os.fspath(path)!r}"
    state = read_state(path, where)
    try:
        optimizer.load_state_dict(state)
    except StateFileError:
        raise
    except ValueError as e:
        raise StateFileError(f"{where}: {e}") from e


#: what a state dict must hold, for the messages of the functions that check it
STATE_KEYS = "'config', 'iterations' (or 'calls') and 'slots'"


def is_state_dict(state):
    """Whether ``state`` has a state dict's keys: ``config``, ``slots`` and
    at least one of the counters ``calls`` and ``iterations``."""
    return isinstance(state, Mapping) and {"config", "slots"} <= set(state) \
        and ("calls" in state or "iterations" in state)


def check_state_header(owner, state, state_dtype, convention, config_keys=None):
    """Check that ``state`` is a state dict for an optimizer of class
    ``owner`` with this ``state_dtype`` and ``convention`` and, given
    ``config_keys``, a config with exactly those keys (a missing one would
    silently take the class default; only ``state_dtype`` and
    ``state_rounding`` may be left out together, for a full-precision state);
    return ``(calls, iterations)``: its call count, and the update count to
    check against it with :func:`check_update_count` (None when the state
    has no ``"calls"``: then it is an older fastopt's, and its
    ``"iterations"`` is the call count)."""
    if not is_state_dict(state):
        raise ValueError(f"{owner}.load_state_dict: expected a dict with keys {STATE_KEYS}")
    if not isinstance(state["config"], Mapping) or not isinstance(state["slots"], Mapping):
        raise ValueError(f"{owner}.load_state_dict: the state's 'config' and 'slots' must "
                         "be dicts")
    config = dict(state["config"])
    if config.get("class_name") != owner:
        raise ValueError(f"{owner}.load_state_dict: the state is for "
                         f"{config.get('class_name')!r}, not {owner}")
    # without both state_dtype keys, a config is of a full-precision state (checked below)
    optional = {"state_dtype", "state_rounding"} if not {"state_dtype", "state_rounding"} \
        & set(config) else set()
    if config_keys is not None and set(config) != set(config_keys) - optional:
        missing = sorted(set(config_keys) - set(config) - optional)
        unknown = sorted(set(config) - set(config_keys), key=str)
        raise ValueError(f"{owner}.load_state_dict: the state's config has "
                         + "; ".join(part for part in (
                             f"missing keys {missing}" if missing else "",
                             f"unknown keys {unknown}" if unknown else "") if part)
                         + " (a config is loaded whole, never filled in with defaults)")
    if config.get("state_dtype") != state_dtype:
        raise ValueError(f"{owner}.load_state_dict: the state keeps the optimizer state in "
                         f"state_dtype={config.get('state_dtype')!r}, this optimizer in "
                         f"state_dtype={state_dtype!r}; build the optimizer with the "
                         "state's state_dtype to load it")
    if config.get("convention", "keras") != convention:
        raise ValueError(f"{owner}.load_state_dict: the state uses convention "
                         f"{config.get('convention')!r}, this optimizer {convention!r}")
    counts = {key: _state_count(owner, key, state[key]) for key in ("calls", "iterations")
              if key in state}
    if "calls" not in counts:
        return counts["iterations"], None
    return counts["calls"], counts.get("iterations")


def _state_count(owner, key, value):
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{owner}.load_state_dict: {key} must be an integer >= 0, "
                         f"got {value!r}")
    return int(value)


def check_update_count(owner, calls, iterations, steps):
    """Check a state's update count ``iterations`` (None: not given) against
    its call count: ``calls // steps`` under gradient accumulation
    (``steps``, the state's ``gradient_accumulation_steps``), else ``calls``."""
    if iterations is None:
        return
    expected = calls if steps is None else calls // steps
    if iterations != expected:
        rule = ("without gradient accumulation the two are equal" if steps is None else
                f"with gradient_accumulation_steps={steps}, {calls} calls are {expected} "
                "updates")
        raise ValueError(f"{owner}.load_state_dict: the state's iterations ({iterations}) "
                         f"and calls ({calls}) disagree: {rule}")


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


def check_host_state(owner, given, live):
    """Check a state dict's ``"host_state"`` (``given``; None when the state
    has none, as every state of a rule without host state) against an
    optimizer's :meth:`~fastopt.Optimizer.host_state` (``live``): the same
    keys, each a finite real number (a float, or a 0-d float array); return
    them as Python floats (exact: the float64 values themselves)."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ValueError(f"{owner}.load_state_dict: the state's 'host_state' must be a dict, "
                         f"got {type(given).__name__}")
    if set(given) != set(live):
        raise ValueError(f"{owner}.load_state_dict: host state differs; missing "
                         f"{sorted(set(live) - set(given))}, unexpected "
                         f"{sorted(set(given) - set(live), key=str)}")
    out = {}
    for key in live:
        v = given[key]
        if isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind == "f":
            v = v.item()
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (float, np.floating)) \
                or not np.isfinite(v):
            raise ValueError(f"{owner}.load_state_dict: host state {key!r} must be a finite "
                             f"float (or a 0-d float array), got {v!r:.80}")
        out[key] = float(v)
    return out
