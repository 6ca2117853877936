"""fastopt.distributed: sharded optimizer state over MPI.

The multi-rank tests launch ``mpiexec -n 2`` and ``-n 3`` running
tests/mpi_worker.py (see its docstring for what each scenario checks and the
tolerances) and the data-parallel example; they are skipped only when mpi4py
or mpiexec is not installed (``pip install -e '.[test]'`` installs both).
The rest runs in this process, on one rank (``MPI.COMM_SELF``), or without
MPI at all.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastopt
from fastopt import train

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None


def find_mpiexec():
    """mpiexec next to this Python (a virtual environment's bin, where the
    mpich wheel puts it), else on PATH."""
    here = os.path.dirname(sys.executable)
    return shutil.which("mpiexec", path=here) or shutil.which("mpiexec")


MPIEXEC = find_mpiexec()
needs_mpi4py = pytest.mark.skipif(not HAVE_MPI4PY,
                                  reason="mpi4py is not installed (pip install 'fastopt[mpi]')")
needs_mpiexec = pytest.mark.skipif(not (HAVE_MPI4PY and MPIEXEC),
                                   reason="mpi4py or mpiexec is not installed "
                                          "(pip install 'fastopt[mpi]')")


def mpirun(n, *args, timeout=300):
    """Run ``python *args`` on ``n`` ranks; return its stdout.  One thread
    per rank: the ranks share this machine's cores."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"mpiexec -n {n} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def warm_cache():
    """Compile the Numba kernels here first, so the ranks load them from the cache."""
    for dt in (np.float32, np.float64):
        for n in (3, 1 << 18):  # the serial and the parallel drivers
            w = np.zeros(n, dt)
            fastopt.Adam([w], backend="numba", clipnorm=1.0).step([np.ones(n, dt)])


_results = {}


def worker_results(n):
    if n not in _results:
        out = mpirun(n, os.path.join(HERE, "mpi_worker.py"))
        line = next(x for x in out.splitlines() if x.startswith("MPI_WORKER_RESULTS "))
        _results[n] = json.loads(line.split(" ", 1)[1])
    return _results[n]


def _scenarios():
    sys.path.insert(0, HERE)
    try:
        from mpi_worker import SCENARIOS  # importing it needs neither mpi4py nor MPI
    finally:
        sys.path.remove(HERE)
    return SCENARIOS


@needs_mpiexec
@pytest.mark.parametrize("scenario", _scenarios())
@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_match_single_process(warm_cache, ranks, scenario):
    result = worker_results(ranks)[scenario]
    assert result["ok"], result["detail"]


@needs_mpiexec
@pytest.mark.parametrize("ranks", [2, 3])
def test_example_trains_like_one_process(warm_cache, tmp_path, ranks):
    """examples/mpi_train.py on N ranks gives the single-process history."""
    script = os.path.join(ROOT, "examples", "mpi_train.py")
    common = ["--epochs", "2", "--model", "mlp", "--hidden", "8", "--dtype", "float64"]
    mpirun(ranks, script, *common, "--json", str(tmp_path / "dp.json"))
    single = subprocess.run([sys.executable, script, *common, "--single", "--json",
                             str(tmp_path / "one.json")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=True)
    assert "single process" in single.stdout
    dp = json.loads((tmp_path / "dp.json").read_text())
    one = json.loads((tmp_path / "one.json").read_text())
    assert dp["ranks"] == ranks and one["ranks"] == 1
    assert dp["history"].keys() == one["history"].keys()
    # float64: only the order of the sums over rows and ranks differs
    for key in one["history"]:
        np.testing.assert_allclose(dp["history"][key], one["history"][key], rtol=1e-12)
    np.testing.assert_allclose(dp["weights"], one["weights"], rtol=1e-10, atol=1e-12)


# -- a failure on one rank ---------------------------------------------------------------

#: case of tests/mpi_failures.py -> (the collective that fails, what rank 1's
#: own error says)
FAILURES = {
    "schedule_nan": ("ShardedOptimizer.step", "the learning-rate schedule returned nan"),
    "schedule_raises": ("ShardedOptimizer.step", "division by zero"),
    "load_state_truncated": ("ShardedOptimizer.load_state", "damaged file (BadZipFile"),
    "resume_truncated": ("load_checkpoint", ""),  # np.load's own error, whatever its kind
    "fit_bad_data": ("fit: the training data", "X[3, 1] is nan"),
    "callback_fails": ("fit: the callbacks' on_train_begin", "the log stream is closed"),
    "backend_missing": ("ShardedOptimizer", "backend 'cython' is not available"),
    "forward_fails": ("DataParallelModel.forward", "X must have shape (n, 4), got (8, 5)"),
    "backward_fails": ("DataParallelModel.backward", ""),  # NumPy's shape mismatch
}
FAILURE_TIMEOUT = 60


def failure_run(case):
    """``mpiexec -n 2 python tests/mpi_failures.py case``, under a timeout:
    the process and each rank's ``MPI_FAILURE`` record, by rank."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable,
                           os.path.join(HERE, "mpi_failures.py"), case], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=FAILURE_TIMEOUT)
    decoder, records = json.JSONDecoder(), {}
    for chunk in proc.stdout.split("MPI_FAILURE ")[1:]:  # the ranks' lines may interleave
        record = decoder.raw_decode(chunk)[0]
        records[record["rank"]] = record
    return proc, records


@needs_mpiexec
@pytest.mark.parametrize("case", list(FAILURES))
def test_a_failure_on_one_rank_is_an_error_on_every_rank(case):
    """Rank 1 fails; rank 0 does not wait for it: each raises (rank 1 its own
    error, rank 0 one that names rank 1 and that error), nothing changed on
    either, and a good step afterwards keeps them in step."""
    where, fragment = FAILURES[case]
    proc, records = failure_run(case)
    assert proc.returncode == 0 and sorted(records) == [0, 1], proc.stdout + proc.stderr
    bad, good = records[1], records[0]
    assert bad["error"] is not None and fragment in bad["error"]["message"], bad
    assert good["error"] is not None, good
    assert good["error"]["message"].startswith(
        f"{where}: rank 1 of 2 failed, so every rank stops here"), good
    assert good["error"]["message"].endswith(
        f"({bad['error']['kind']}: {bad['error']['message']})"), (good, bad)
    assert good["error"]["kind"] == (bad["error"]["kind"] if bad["error"]["kind"] in
                                     ("TypeError", "ValueError") else "RuntimeError")
    for record in records.values():
        assert record["unchanged"] and record["in_step"], record


@needs_mpiexec
def test_inf_gradient_under_seterr_raise_propagates_on_every_rank():
    """np.seterr(all="raise") and an inf in rank 1's shard, NumPy backend: the
    step neither raises halfway on rank 1 nor leaves rank 0 waiting; NaN and
    inf propagate as in the plain optimizer under np.errstate(all="ignore")."""
    proc, records = failure_run("inf_gradient")
    assert proc.returncode == 0 and sorted(records) == [0, 1], proc.stdout + proc.stderr
    for record in records.values():
        assert record["error"] is None and record["matches_plain"] and record["in_step"], record


@needs_mpiexec
def test_a_failure_after_the_exchange_began_aborts_every_rank():
    """A schedule that passes the step's check and raises when the wrapped
    optimizer evaluates it again, on rank 1: the others already wait in the
    exchange, so every rank is aborted, with the reason on stderr."""
    proc, records = failure_run("schedule_fails_when_evaluated_again")
    assert proc.returncode != 0 and not records, proc.stdout
    assert ("ShardedOptimizer.step: rank 1 of 2 failed after the ranks had begun exchanging "
            "data, so every rank is aborted (RuntimeError: this schedule fails on its second "
            "call)") in proc.stderr, proc.stderr


# -- without MPI -------------------------------------------------------------------------

def test_import_fastopt_never_imports_mpi4py():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import fastopt, fastopt.distributed, fastopt.train\n"
            "from fastopt.distributed import ShardedOptimizer, DataParallelModel\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_without_mpi4py_the_error_says_how_to_install(monkeypatch):
    from fastopt.distributed import DataParallelModel, ShardedOptimizer
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"pip install 'fastopt\[mpi\]'"):
        ShardedOptimizer(fastopt.Adam, [np.zeros(3)])
    with pytest.raises(ImportError, match=r"pip install 'fastopt\[mpi\]'"):
        DataParallelModel(train.LogisticRegression(2))


# -- one rank, in this process ------------------------------------------------------------

def _self():
    from mpi4py import MPI
    return MPI.COMM_SELF


CONFIGS = [
    (fastopt.Adam, {"learning_rate": 0.01, "clipnorm": 0.5}),
    (fastopt.SGD, {"momentum": 0.9, "convention": "torch", "weight_decay": 0.01,
                   "global_clipnorm": 1.0}),
    (fastopt.RMSprop, {"use_ema": True, "gradient_accumulation_steps": 2}),
    (fastopt.Adam, {"use_ema": True, "ema_overwrite_frequency": 2, "loss_scale_factor": 4.0,
                    "gradient_accumulation_steps": 2, "backend": "numba"}),
    (fastopt.Nadam, {"learning_rate": 0.01, "gradient_accumulation_steps": 2}),
    (fastopt.NAdam, {"weight_decay": 0.1, "decoupled_weight_decay": True}),
]


@needs_mpi4py
@pytest.mark.parametrize("cls, kw", CONFIGS, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_rank_is_the_plain_optimizer(cls, kw, dtype):
    from fastopt.distributed import ShardedOptimizer
    rng = np.random.default_rng(0)
    shapes = [(5, 3), (1,), (20000,)]
    p = [rng.standard_normal(s).astype(dtype) for s in shapes]
    q = [a.copy() for a in p]
    opt = ShardedOptimizer(cls, p, comm=_self(), **kw)
    ref = cls(q, **kw)
    for _ in range(5):  # with accumulation over 2 calls: stops mid-cycle
        g = [(rng.standard_normal(s) * rng.choice([0.0, 1e-4, 1.0, 1e3], size=s)).astype(dtype)
             for s in shapes]
        opt.step(g)
        ref.step(g)
    for a, b in zip(p, q):
        np.testing.assert_array_equal(a, b)
    assert (opt.calls, opt.iterations) == (ref.calls, ref.iterations)
    full = opt.consolidated_state_dict()
    want = ref.state_dict()
    assert full["config"] == want["config"]
    assert (full["iterations"], full["calls"]) == (want["iterations"], want["calls"])
    assert list(full["slots"]) == list(want["slots"])
    for k in want["slots"]:
        np.testing.assert_array_equal(full["slots"][k], want["slots"][k])
    # host-side state (running products): whole on every rank, the same values
    assert ("host_state" in full) == ("host_state" in want) == (cls in (fastopt.Nadam,
                                                                        fastopt.NAdam))
    for k, v in want.get("host_state", {}).items():
        assert full["host_state"][k] == v != 1.0
    assert opt.state_nbytes == sum(a.nbytes for a in want["slots"].values())


@needs_mpi4py
def test_one_rank_files_load_into_plain_optimizers_and_back(tmp_path):
    from fastopt.distributed import ShardedOptimizer
    p = {"w": np.ones((3, 2)), "b": np.zeros(2, np.float32)}
    opt = ShardedOptimizer(fastopt.AdamW, p, comm=_self(), exclude_from_weight_decay=["b"])
    opt.step({"w": np.full((3, 2), 0.5), "b": np.ones(2, np.float32)})
    path = tmp_path / "state.npz"
    opt.save_state(path)
    plain = fastopt.AdamW({k: v.copy() for k, v in p.items()}, exclude_from_weight_decay=["b"])
    fastopt.load_state(plain, path)
    assert plain.iterations == 1
    full = opt.consolidated_state_dict()
    for k, v in plain.state_dict()["slots"].items():
        np.testing.assert_array_equal(v, full["slots"][k])
    fastopt.save_state(plain, tmp_path / "plain.npz")
    again = ShardedOptimizer(fastopt.AdamW, {k: v.copy() for k, v in p.items()}, comm=_self(),
                             exclude_from_weight_decay=["b"])
    again.load_state(tmp_path / "plain.npz")
    assert again.iterations == 1
    for k, v in opt.state_dict()["slots"].items():
        np.testing.assert_array_equal(again.state_dict()["slots"][k], v)
    with pytest.raises(ValueError, match="damaged file|cannot read"):
        again.load_state(tmp_path / "missing.npz")


@needs_mpi4py
def test_one_rank_bad_input_changes_nothing():
    from fastopt.distributed import ShardedOptimizer
    p = [np.ones(4), np.ones((2, 2), np.float32)]
    with pytest.raises(TypeError, match="optimizer_cls must be a fastopt optimizer class"):
        ShardedOptimizer("adam", p, comm=_self())
    with pytest.raises(TypeError, match="comm must be an mpi4py intracommunicator"):
        ShardedOptimizer(fastopt.Adam, p, comm="world")
    with pytest.raises(ValueError, match="beta_1"):
        ShardedOptimizer(fastopt.Adam, p, comm=_self(), beta_1=2.0)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        ShardedOptimizer(fastopt.Adam, p, comm=_self(), lr=0.1)
    with pytest.raises(ValueError, match="state_dtype='bfloat16' is not supported under "
                                         "sharding yet"):
        ShardedOptimizer(fastopt.Adam, p, comm=_self(), state_dtype="bfloat16")
    with pytest.raises(ValueError, match="state_dtype='int8' is not supported under "
                                         "sharding yet"):
        ShardedOptimizer(fastopt.Adam, p, comm=_self(), state_dtype="int8")
    opt = ShardedOptimizer(fastopt.Adam, p, comm=_self())
    with pytest.raises(TypeError, match=r"grads\[1\] has dtype float64"):
        opt.step([np.ones(4), np.ones((2, 2))])
    with pytest.raises(ValueError, match=r"grads\[0\] has shape \(3,\)"):
        opt.step([np.ones(3), np.ones((2, 2), np.float32)])
    with pytest.raises(ValueError, match="expected 2 gradient"):
        opt.step([np.ones(4)])
    with pytest.raises(ValueError, match="slots differ"):
        opt.load_state_dict({"config": opt.get_config(), "iterations": 0, "slots": {}})
    other = opt.state_dict()
    other["shard"] = {**other["shard"], "size": 2}
    with pytest.raises(ValueError, match="to change ranks, save a consolidated state"):
        opt.load_state_dict(other)
    with pytest.raises(ValueError, match="root must be a rank"):
        opt.consolidated_state_dict(root=1)
    np.testing.assert_array_equal(p[0], np.ones(4))
    assert opt.iterations == 0


@needs_mpi4py
def test_one_rank_any_failure_changes_nothing(tmp_path):
    """Errors of any kind, not only TypeError and ValueError, leave everything
    as it was; and under np.seterr(all="raise") an inf gradient propagates."""
    from fastopt.distributed import ShardedOptimizer
    fail = []

    def lr(t):
        if fail:
            raise ZeroDivisionError("schedule failed")
        return 0.1
    p = [np.ones(4), np.ones(3)]
    opt = ShardedOptimizer(fastopt.Adam, p, comm=_self(), learning_rate=lr, backend="numpy")
    opt.step([np.ones(4), np.ones(3)])
    path = tmp_path / "state.npz"
    opt.save_state(path)
    before, state = [a.copy() for a in p], opt.state_dict()
    fail.append(1)
    with pytest.raises(ZeroDivisionError, match="schedule failed"):
        opt.step([np.ones(4), np.ones(3)])
    fail.clear()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="damaged file \\(BadZipFile"):
        opt.load_state(path)
    for a, b in zip(p, before):
        np.testing.assert_array_equal(a, b)
    assert opt.iterations == 1
    for k, v in opt.state_dict()["slots"].items():
        np.testing.assert_array_equal(v, state["slots"][k])
    with np.errstate(all="raise"):
        opt.step([np.full(4, np.inf), np.ones(3)])
    assert np.isnan(p[0]).all() and np.isfinite(p[1]).all()


@needs_mpi4py
@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_data_parallel_model_on_one_rank_is_the_model(kind):
    """fit with DataParallelModel and ShardedOptimizer on one rank is plain fit, bit for bit."""
    from fastopt.distributed import DataParallelModel, ShardedOptimizer
    X, y, _ = train.load_builtin()
    X, y = X[:200], y[:200]
    histories, weights = [], []
    for parallel in (False, True):
        model = train.comparison.make_model(kind, 4, seed=0, hidden=(8,))
        if parallel:
            opt = ShardedOptimizer(fastopt.Adam, model.params, comm=_self(), learning_rate=0.01)
            model = DataParallelModel(model, comm=_self())
        else:
            opt = fastopt.Adam(model.params, learning_rate=0.01)
        h = train.fit(model, X, y, opt, epochs=2, batch_size=16, verbose=0,
                      validation_data=(X[:50], y[:50]))
        histories.append(h.history)
        weights.append(model.flat_params.copy())
    assert histories[0] == histories[1]
    np.testing.assert_array_equal(weights[0], weights[1])


@needs_mpi4py
def test_data_parallel_model_shares_the_model():
    from fastopt.distributed import DataParallelModel
    model = train.MLP(3, hidden=(4,), seed=1)
    dp = DataParallelModel(model, comm=_self())
    assert dp.params is model.params and dp.flat_params is model.flat_params
    assert dp.get_config() == model.get_config()
    assert dp.rows(10) == (0, 10)
    with pytest.raises(TypeError, match="model must be a fastopt.train model"):
        DataParallelModel("model", comm=_self())
