"""State files and checkpoints on disk (issue 15, items 6 and 7).

Writing: symlinks are written through, non-regular targets refused, the umask
or the replaced file's mode respected, and the temporary files of a process
that died before renaming removed by the next save (never a live process's).
Reading: one exception type, :class:`fastopt.StateFileError`, that names the
file; strict types; a format version; a config loaded whole; declared sizes
checked before anything is allocated.  On every error nothing changes.
"""
import io
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import fastopt
from fastopt import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trained(seed=0, steps=2, **kw):
    rng = np.random.default_rng(seed)
    params = {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2).astype(np.float32)}
    opt = fastopt.Adam(params, **kw)
    for _ in range(steps):
        opt.step({k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in params.items()})
    return opt


def snapshot(opt):
    state = opt.state_dict()
    return (json.dumps(state["config"], sort_keys=True), state["iterations"],
            {k: v.copy() for k, v in state["slots"].items()},
            {k: np.array(v) for k, v in opt.params.items()})


def assert_unchanged(before, opt):
    after = snapshot(opt)
    assert before[:2] == after[:2]
    for a, b in zip(before[2:], after[2:]):
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def arrays_of(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def rewrite(path, **changes):
    """Rewrite the .npz file ``path`` with arrays changed (None: removed)."""
    arrays = arrays_of(path)
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    np.savez(path, **arrays)


def assert_refused(path, opt, match):
    before = snapshot(opt)
    with pytest.raises(fastopt.StateFileError, match=match) as info:
        fastopt.load_state(opt, path)
    assert str(path) in str(info.value)
    assert_unchanged(before, opt)
    return info.value


# ---------------------------------------------------------------------------
# Writing: symlinks, non-regular targets, modes

def test_save_writes_through_a_symlink(tmp_path):
    real = tmp_path / "real.npz"
    link = tmp_path / "link.npz"
    fastopt.save_state(trained(steps=1), real)
    link.symlink_to(real)
    fastopt.save_state(trained(steps=3), link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    target = trained(7, steps=1)
    fastopt.load_state(target, real)
    assert target.iterations == 3
    # a dangling link: its target is created, the link kept
    dangling = tmp_path / "dangling.npz"
    dangling.symlink_to(tmp_path / "made.npz")
    fastopt.save_state(trained(steps=1), dangling)
    assert dangling.is_symlink() and (tmp_path / "made.npz").is_file()
    assert sorted(os.listdir(tmp_path)) == ["dangling.npz", "link.npz", "made.npz",
                                            "real.npz"]


@pytest.mark.parametrize("kind", ["fifo", "directory", "link_to_dev_null", "link_to_fifo"])
def test_save_refuses_a_non_regular_target(tmp_path, kind):
    path = tmp_path / "state.npz"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "link_to_dev_null":
        path.symlink_to("/dev/null")
    else:
        os.mkfifo(tmp_path / "pipe")
        path.symlink_to(tmp_path / "pipe")
    listing = sorted(os.listdir(tmp_path))
    with pytest.raises(OSError, match="not a regular file; nothing was written"):
        fastopt.save_state(trained(), path)
    assert sorted(os.listdir(tmp_path)) == listing
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(path).st_mode)
    elif kind == "directory":
        assert path.is_dir() and not os.listdir(path)
    else:
        assert path.is_symlink()
    with pytest.raises(OSError):  # checkpoints are written the same way
        train.save_checkpoint(path, *_model_and_opt(), epoch=1, history={})


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_new_file_respects_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        fastopt.save_state(trained(), tmp_path / "s.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "s.npz").st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o400])
def test_a_replaced_file_keeps_its_mode(tmp_path, mode):
    path = tmp_path / "s.npz"
    fastopt.save_state(trained(), path)
    os.chmod(path, mode)
    old = os.umask(0o077)
    try:
        fastopt.save_state(trained(steps=3), path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    target = trained(5)
    fastopt.load_state(target, path)
    assert target.iterations == 3


# ---------------------------------------------------------------------------
# Writing: temporary files left by a crash

CRASH = textwrap.dedent("""
    import os, sys, time
    import numpy as np, fastopt
    mode, path = sys.argv[1], sys.argv[2]
    def replace(src, dst):
        if mode == "die":
            os._exit(3)           # killed between writing and renaming
        print("written", flush=True)
        time.sleep(60)            # alive, not yet renamed
    os.replace = replace
    opt = fastopt.Adam([np.ones(1000)])
    fastopt.save_state(opt, path)
""")


def _writer(mode, path):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", CRASH, mode, str(path)], env=env,
                            stdout=subprocess.PIPE, text=True)


def test_a_later_save_removes_only_dead_processes_temp_files(tmp_path):
    from fastopt.state import _temp_prefix
    path = tmp_path / "state.npz"
    dead = _writer("die", path)
    assert dead.wait(60) == 3
    left = [n for n in os.listdir(tmp_path)]
    assert len(left) == 1 and str(dead.pid) in left[0]  # the temp file names its writer
    alive = _writer("live", path)
    try:
        assert alive.stdout.readline().strip() == "written"
        live_files = set(os.listdir(tmp_path)) - set(left)
        assert len(live_files) == 1 and str(alive.pid) in live_files.pop()
        # neighbours that are not this target's temporary files
        others = [_temp_prefix(str(tmp_path / "other.npz")) + f"{dead.pid}.0123abcd",
                  f".fastopt-{dead.pid}.npz.tmp", "notes.txt"]
        for name in others:
            (tmp_path / name).write_bytes(b"x")
        fastopt.save_state(trained(), path)
        remaining = set(os.listdir(tmp_path))
        assert left[0] not in remaining  # the dead writer's: removed
        assert {n for n in remaining if str(alive.pid) in n}  # the live writer's: kept
        assert set(others) <= remaining
        assert len(remaining) == 2 + len(others)
    finally:
        alive.kill()
        alive.wait()
    # the live one, once dead, goes at the next save
    fastopt.save_state(trained(), path)
    assert sorted(os.listdir(tmp_path)) == sorted(["state.npz", *others])


# ---------------------------------------------------------------------------
# Checkpoints: flat_params checked before anything changes

def _model_and_opt(seed=0):
    model = train.MLP(3, hidden=(4,), seed=seed)
    opt = fastopt.Adam(model.params, learning_rate=0.01)
    return model, opt


@pytest.fixture
def checkpoint(tmp_path):
    model, opt = _model_and_opt()
    rng = np.random.default_rng(0)
    for _ in range(2):
        opt.step({k: rng.standard_normal(v.shape).astype(v.dtype)
                  for k, v in model.params.items()})
    path = tmp_path / "run.npz"
    train.save_checkpoint(path, model, opt, epoch=2, history={"loss": [0.5, 0.4]})
    return path, model.flat_params.copy()


def test_a_checkpoint_round_trips(checkpoint):
    path, flat = checkpoint
    model, opt = _model_and_opt(seed=1)
    assert train.load_checkpoint(path, model, opt) == (2, {"loss": [0.5, 0.4]})
    assert np.array_equal(model.flat_params, flat) and opt.iterations == 2


@pytest.mark.parametrize("case", ["one_element", "float64", "too_short", "too_long", "2d",
                                  "epoch_float", "epoch_bool", "epoch_negative",
                                  "history_list", "no_flat_params", "format_float"])
def test_a_bad_checkpoint_changes_nothing(checkpoint, case):
    path, flat = checkpoint
    changes = {
        "one_element": {"flat_params": np.ones(1, np.float32)},
        "float64": {"flat_params": flat.astype(np.float64)},
        "too_short": {"flat_params": flat[:-1]},
        "too_long": {"flat_params": np.append(flat, np.float32(1))},
        "2d": {"flat_params": flat.reshape(1, -1)},
        "epoch_float": {"epoch": np.array(2.5)},
        "epoch_bool": {"epoch": np.array(True)},
        "epoch_negative": {"epoch": np.array(-1)},
        "history_list": {"history": np.array("[1, 2]")},
        "no_flat_params": {"flat_params": None},
        "format_float": {"format": np.array(1.5)},
    }[case]
    rewrite(path, **changes)
    model, opt = _model_and_opt(seed=1)
    before, flat_before = snapshot(opt), model.flat_params.copy()
    with pytest.raises(fastopt.StateFileError, match="load_checkpoint") as info:
        train.load_checkpoint(path, model, opt)
    assert str(path) in str(info.value)
    assert_unchanged(before, opt)
    assert np.array_equal(model.flat_params, flat_before)


def test_a_damaged_checkpoint_names_the_file(checkpoint):
    path, _ = checkpoint
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    model, opt = _model_and_opt(seed=1)
    with pytest.raises(fastopt.StateFileError, match="run.npz"):
        train.load_checkpoint(path, model, opt)


# ---------------------------------------------------------------------------
# Reading: damaged files, one exception naming the file

def _patch_zip_headers(data, offset_in_local, offset_in_central, value):
    """Set a 2-byte field of every local and central zip header."""
    out = bytearray(data)
    for sig, off in ((b"PK\x03\x04", offset_in_local), (b"PK\x01\x02", offset_in_central)):
        i = out.find(sig)
        while i >= 0:
            out[i + off:i + off + 2] = value.to_bytes(2, "little")
            i = out.find(sig, i + 4)
    return bytes(out)


def _damaged(kind, good):
    if kind == "empty":
        return b""
    if kind == "truncated":
        return good[:len(good) // 2]
    if kind == "truncated_end":
        return good[:-1]
    if kind == "garbage":
        return bytes(range(256)) * 4
    if kind == "text":
        return b"iterations: 3\n"
    if kind == "crc":  # a byte of slot data changed: zipfile's CRC check
        i = good.find(b"slot:") + 200
        return good[:i] + bytes([good[i] ^ 0x40]) + good[i + 1:]
    if kind == "compression_method":  # zipfile: NotImplementedError
        return _patch_zip_headers(good, 8, 10, 99)
    if kind == "encrypted":  # zipfile: RuntimeError, password required
        return _patch_zip_headers(good, 6, 8, 1)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty", "truncated", "truncated_end", "garbage", "text",
                                  "crc", "compression_method", "encrypted"])
def test_a_damaged_file_raises_state_file_error_naming_it(tmp_path, kind):
    good = tmp_path / "good.npz"
    fastopt.save_state(trained(), good)
    path = tmp_path / "bad.npz"
    path.write_bytes(_damaged(kind, good.read_bytes()))
    assert_refused(path, trained(3), "bad.npz")


def test_a_npy_file_is_named_as_such(tmp_path):
    path = tmp_path / "state.npy"
    np.save(path, np.ones(3))
    assert_refused(path, trained(3), r"\.npy file")


def test_a_pickle_is_never_loaded(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, __config__=np.array([{"class_name": "Adam"}], dtype=object),
             __iterations__=np.array(1))
    assert_refused(path, trained(3), "pickle")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "pipe.npz"
    os.mkfifo(path)

    def timeout(*_):
        raise TimeoutError("load_state blocked on a FIFO")
    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(5)
    try:
        assert_refused(path, trained(3), "not a regular file")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_a_missing_file_is_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastopt.load_state(trained(), tmp_path / "missing.npz")


def test_a_mismatched_state_is_a_state_file_error_too(tmp_path):
    path = tmp_path / "s.npz"
    fastopt.save_state(trained(amsgrad=True), path)
    err = assert_refused(path, trained(3), "slots differ|other hyperparameters")
    assert isinstance(err, ValueError)


# ---------------------------------------------------------------------------
# Reading: strict types, the format version, the config whole

@pytest.mark.parametrize("value", [np.array(3.7), np.array(3.0), np.array("3"), np.array(True),
                                   np.array(-1), np.array([3]), np.array(3 + 0j),
                                   np.array(2 ** 64 - 1, np.uint64)],
                         ids=["3.7", "3.0", "str", "bool", "negative", "1d", "complex",
                              "beyond_int64"])
def test_iterations_must_be_a_non_negative_integer(tmp_path, value):
    path = tmp_path / "s.npz"
    fastopt.save_state(trained(), path)
    rewrite(path, __iterations__=value)
    assert_refused(path, trained(3), "iteration count")


@pytest.mark.parametrize("value", [3.7, "3", True, np.bool_(True), -1, None])
def test_iterations_in_a_state_dict_are_strict_too(value):
    opt = trained(3)
    state = trained().state_dict()
    before = snapshot(opt)
    with pytest.raises(ValueError, match="iterations"):
        opt.load_state_dict({**state, "iterations": value})
    assert_unchanged(before, opt)


def test_iterations_are_stored_as_an_integer(tmp_path):
    path = tmp_path / "s.npz"
    fastopt.save_state(trained(steps=3), path)
    it = arrays_of(path)["__iterations__"]
    assert it.shape == () and it.dtype == np.int64 and it == 3


def test_the_format_version_is_written_and_checked(tmp_path):
    path = tmp_path / "s.npz"
    fastopt.save_state(trained(steps=3), path)
    version = arrays_of(path)["__format_version__"]
    assert version.shape == () and version.dtype.kind == "i" and version == 1
    # a file without the field (this release's older files) is version 1
    rewrite(path, __format_version__=None)
    target = trained(3)
    fastopt.load_state(target, path)
    assert target.iterations == 3
    rewrite(path, __format_version__=np.array(2))
    assert_refused(path, trained(3), "format version 2.*newer")
    for bad in (np.array(1.0), np.array("1"), np.array(True), np.array(0)):
        rewrite(path, __format_version__=bad)
        assert_refused(path, trained(3), "format version")


def _with_config(path, edit):
    config = json.loads(str(arrays_of(path)["__config__"]))
    edit(config)
    rewrite(path, __config__=np.array(json.dumps(config)))


def test_a_config_with_a_missing_key_is_refused(tmp_path):
    path = tmp_path / "s.npz"
    fastopt.save_state(trained(beta_1=0.5), path)
    _with_config(path, lambda c: c.pop("beta_1"))
    target = trained(3)
    assert_refused(path, target, r"missing keys \['beta_1'\]")
    assert target.get_config()["beta_1"] == 0.9
    # and from a state dict
    state = trained(beta_1=0.5).state_dict()
    del state["config"]["beta_1"], state["config"]["clipnorm"]
    with pytest.raises(ValueError, match=r"missing keys \['beta_1', 'clipnorm'\]"):
        target.load_state_dict(state)


def test_a_config_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "s.npz"
    fastopt.save_state(trained(), path)
    _with_config(path, lambda c: c.update(beta_3=0.1, lr=0.5))
    assert_refused(path, trained(3), r"unknown keys \['beta_3', 'lr'\]")


@pytest.mark.parametrize("config", ["not json", "[1, 2]", "3"])
def test_a_config_that_is_not_a_json_object_is_refused(tmp_path, config):
    path = tmp_path / "s.npz"
    fastopt.save_state(trained(), path)
    rewrite(path, __config__=np.array(config))
    assert_refused(path, trained(3), "config")


# ---------------------------------------------------------------------------
# Reading: declared sizes checked before allocating

def _npy(shape, descr="<f8", data=b""):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


@pytest.mark.parametrize("shape", [(2 ** 40,), (2 ** 20, 2 ** 20), (3, 2, 10 ** 6), (-2, -1)])
def test_a_declared_shape_larger_than_the_file_is_refused(tmp_path, shape):
    path = tmp_path / "s.npz"
    fastopt.save_state(trained(), path)
    arrays = arrays_of(path)
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, v)
            zf.writestr(k + ".npy", _npy(shape, data=v.tobytes()) if k == "slot:velocity/w"
                        else buf.getvalue())
    assert "slot:velocity/w" in arrays
    assert_refused(path, trained(3), "declares")


def test_a_deflated_member_declaring_more_than_it_can_hold_is_refused(tmp_path):
    path = tmp_path / "s.npz"
    fastopt.save_state(trained(), path)
    np.savez_compressed(path, **arrays_of(path))
    data = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size
        i = data.find(sig)
        while i >= 0:
            data[i + off:i + off + 4] = (2 ** 31).to_bytes(4, "little")
            i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))
    assert_refused(path, trained(3), "more than .* compressed bytes can hold")


def test_repeated_member_names_are_refused(tmp_path):
    path = tmp_path / "s.npz"
    fastopt.save_state(trained(), path)
    with pytest.warns(UserWarning, match="Duplicate name"):
        with zipfile.ZipFile(path, "a") as zf:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.array(99))
            zf.writestr("__iterations__.npy", buf.getvalue())
    assert_refused(path, trained(3), "repeated member names")


def test_a_compressed_state_file_still_loads(tmp_path):
    path = tmp_path / "s.npz"
    fastopt.save_state(trained(steps=3), path)
    np.savez_compressed(path, **arrays_of(path))
    target = trained(3)
    fastopt.load_state(target, path)
    assert target.iterations == 3


def test_bit_flips_never_load_silently_wrong(tmp_path):
    """Bits of a small state file flipped one at a time (every 7th here, to
    stay fast): the load raises StateFileError, or loads exactly the saved
    state (a flip in a timestamp, say), never anything else."""
    source = trained(steps=3)
    good = tmp_path / "good.npz"
    fastopt.save_state(source, good)
    data = good.read_bytes()
    expected = snapshot(source)[:3]
    path = tmp_path / "flipped.npz"
    loaded = refused = 0
    target = trained(5)  # a refused load changes nothing, a good one loads `expected`
    for bit in range(0, len(data) * 8, 7):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(flipped))
        try:
            fastopt.load_state(target, path)
        except fastopt.StateFileError as e:
            assert str(path) in str(e)
            refused += 1
            continue
        got = snapshot(target)[:3]
        assert got[:2] == expected[:2], bit
        assert all(np.array_equal(got[2][k], expected[2][k]) for k in expected[2]), bit
        loaded += 1
    assert refused > loaded > 0
