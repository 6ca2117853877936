"""``fastopt bench`` end to end at tiny sizes, and its parts.

Nothing here asserts a timing: speed is measured by the benchmark itself.
These tests check that the command runs with and without PyTorch, that its
JSON has the documented schema, that bad options exit with status 2 and one
line, that the numerics column catches a wrong kernel, and that the pieces
(the naive baseline, the tensor shapes, the bytes per parameter) are right.
"""
import io
import importlib
import inspect
import json
import math
import sys

import numpy as np
import pytest

import fastopt
from fastopt import bench
from fastopt.backends import numba_backend
from fastopt.bench import cases, naive, numerics
from fastopt.cli import _Progress, main

# tiny and fast: a few ms per measurement
TINY = ["--sizes", "64,300", "--tensors", "3", "--repeats", "2", "--warmup", "1", "--quick",
        "--quiet"]
ROW_KEYS = {"optimizer", "convention", "rule", "backend", "backend_used", "size", "tensors",
            "dtype",
            "bytes_per_param", "time_s", "ns_per_param", "gbps", "ceiling_gbps",
            "pct_of_ceiling", "naive_time_s", "speedup_vs_naive", "torch_impl", "torch_time_s",
            "speedup_vs_torch", "torch_note", "max_rel_error", "tolerance", "numerics_ok"}


def _run(argv, capsys):
    code = main(["bench", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_bench_without_torch_writes_table_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)   # `import torch` fails, as without it
    path = tmp_path / "bench.json"
    code, out, err = _run(["--optimizers", "adam,sgd_nesterov", "--backends", "numba,auto",
                           *TINY, "--json", str(path)], capsys)
    assert code == 0, err
    assert "[#" not in err                       # no progress bar: not a terminal, --quiet
    assert "torch: n/a, cannot import torch" in out
    for header in ("optimizer", "backend", "time/step", "ns/param", "GB/s", "% ceiling",
                   "vs naive", "vs torch", "max rel err", "rmw GB/s", "copy GB/s"):
        assert header in out
    assert "threading layer" in out and "load average" in out
    assert "medians of 2 samples (a sample: back-to-back steps for at least 0.5 ms)" in out
    r = json.loads(path.read_text())
    assert set(r) >= {"fastopt", "date", "machine", "config", "torch", "ceiling", "rows",
                      "warnings", "seconds", "command"}
    assert r["command"].startswith("fastopt bench --optimizers adam,sgd_nesterov")
    m = r["machine"]
    assert {"cpu", "cores", "threads", "python", "numpy", "numba", "threading_layer",
            "fastopt", "loadavg_at_start", "loadavg_at_end"} <= set(m)
    assert r["torch"]["version"] is None and "torch" in r["torch"]["reason"]
    assert [c["size"] for c in r["ceiling"]] == [64, 300]
    for c in r["ceiling"]:
        assert _positive(c["rmw_gbps"]) and _positive(c["copy_gbps"])
        assert c["rmw_form"] in c["rmw_forms_gbps"]
    rows = r["rows"]
    assert len(rows) == 2 * 2 * 2
    assert {(x["optimizer"], x["backend"], x["size"]) for x in rows} == {
        (o, b, n) for o in ("adam", "sgd_nesterov") for b in ("numba", "auto")
        for n in (64, 300)}
    for x in rows:
        assert set(x) == ROW_KEYS
        assert x["tensors"] == 3 and x["dtype"] == "float32"
        assert x["bytes_per_param"] == {"adam": 28, "sgd_nesterov": 20}[x["optimizer"]]
        for key in ("time_s", "ns_per_param", "gbps", "ceiling_gbps", "pct_of_ceiling",
                    "naive_time_s", "speedup_vs_naive"):
            assert _positive(x[key]), key
        assert x["gbps"] == pytest.approx(x["bytes_per_param"] * x["size"] / x["time_s"] / 1e9)
        assert x["torch_time_s"] is None and x["speedup_vs_torch"] is None
        assert x["numerics_ok"] is True and 0 <= x["max_rel_error"] <= x["tolerance"]
        assert x["backend_used"] in fastopt.available_backends()
    assert "n/a" in out.split("optimizer  ")[1]    # the torch column of the table


def test_bench_with_torch_fills_the_torch_columns(capsys):
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    code, out, err = _run(["--optimizers", "adam,rmsprop", "--backends", "numba", *TINY,
                           "--threads", "1"], capsys)
    assert code == 0, err
    assert f"torch: {torch.__version__} (1 threads)" in out
    assert "fused" in out and "foreach" in out
    assert torch.get_num_threads() == threads          # restored


def test_bench_json_rows_with_torch(tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "b.json"
    code, _, err = _run(["--optimizers", "sgd_momentum,adagrad,adamw", "--backends", "numba",
                         *TINY, "--no-numerics", "--json", str(path)], capsys)
    assert code == 0, err
    rows = json.loads(path.read_text())["rows"]
    for x in rows:
        assert x["torch_impl"] == "fused"
        assert _positive(x["torch_time_s"]) and _positive(x["speedup_vs_torch"])
        assert x["max_rel_error"] is None and x["numerics_ok"] is None


def test_bench_of_an_optimizer_torch_lacks_says_so(tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "b.json"
    code, _, err = _run(["--optimizers", "ftrl_sqrt,ftrl", "--backends", "numba", *TINY,
                         "--json", str(path)], capsys)
    assert code == 0, err
    rows = json.loads(path.read_text())["rows"]
    assert sorted({x["rule"] for x in rows}) == ["ftrl", "ftrl_sqrt"]
    for x in rows:
        assert x["bytes_per_param"] == 28 and x["numerics_ok"]
        assert x["torch_impl"] is None and x["speedup_vs_torch"] is None
        assert "has no Ftrl" in x["torch_note"]
    code, _, err = _run(["--optimizers", "lion", "--backends", "numba", *TINY, "--json",
                         str(path)], capsys)
    assert code == 0, err
    rows = json.loads(path.read_text())["rows"]
    for x in rows:
        assert x["rule"] == "lion" and x["bytes_per_param"] == 20 and x["numerics_ok"]
        assert x["torch_impl"] is None and x["speedup_vs_torch"] is None
        assert "has no Lion" in x["torch_note"]
    # Lamb, a two-phase rule: Adam's 28 B plus its first pass's reads of the
    # parameter, the gradient and both slots (16 B)
    code, _, err = _run(["--optimizers", "lamb", "--backends", "numba,cython", *TINY,
                         "--json", str(path)], capsys)
    assert code == 0, err
    rows = json.loads(path.read_text())["rows"]
    assert rows
    for x in rows:
        assert x["rule"] == "lamb" and x["bytes_per_param"] == 44 and x["numerics_ok"]
        assert x["torch_impl"] is None and "has no Lamb" in x["torch_note"]


@pytest.fixture
def broken_numba(monkeypatch):
    """The numba backend's step, off by a relative 1e-3 on every third element."""
    step = numba_backend.Plan.step

    def broken(self, grads, pt, scalars, clipvalue=math.inf):
        step(self, grads, pt, scalars, clipvalue)
        self.params[0][::3] *= self.dtype.type(1.001)
    monkeypatch.setattr(numba_backend.Plan, "step", broken)


def test_numerics_column_catches_a_wrong_kernel(broken_numba, tmp_path, capsys):
    path = tmp_path / "b.json"
    code, out, err = _run(["--optimizers", "adam", "--backends", "numba,cython", *TINY,
                           "--no-torch", "--json", str(path)], capsys)
    assert code == 1
    assert "2 rows failed the numerics check" in err
    rows = json.loads(path.read_text())["rows"]
    for x in rows:
        if x["backend"] == "numba":
            assert x["numerics_ok"] is False and x["max_rel_error"] > 5e-4
        else:
            assert x["numerics_ok"] is True and x["max_rel_error"] < 1e-6
    flagged = [ln for ln in out.splitlines() if ln.rstrip().endswith("!")]
    assert len(flagged) == 2 and all(" numba " in ln for ln in flagged)
    assert "warning: numerics: adam on numba" in out


@pytest.mark.parametrize("name", list(bench.CASES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_step_error_is_within_tolerance_for_every_optimizer(name, dtype):
    shapes = cases.split_shapes(5000, 4)
    # cuda (on the simulator in the tests) updates device arrays only
    for backend in [b for b in fastopt.available_backends() if b not in ("numpy", "cuda")]:
        err = numerics.step_error(name, shapes, dtype, backend)
        assert 0 <= err <= numerics.TOLERANCE[dtype], (backend, err)


def test_step_error_sees_a_wrong_formula(monkeypatch):
    # the numba kernel's Adam with epsilon dropped: right almost everywhere,
    # wrong where v is small
    _drop_epsilon(monkeypatch)
    assert numerics.step_error("adam", [(4000,)], "float32", "numba") > 1e-2


def _drop_epsilon(monkeypatch):
    # every backend packs its per-step scalars through Rule.pack; epsilon is
    # Adam's last scalar
    from fastopt.rule import Rule
    pack = Rule.pack
    monkeypatch.setattr(Rule, "pack", lambda rule, scalars, clip=math.inf:
                        pack(rule, scalars[:-1] + (0.0,), clip))


def test_step_error_compares_slots_too(monkeypatch):
    step = numba_backend.Plan.step

    def wrong_slot(self, grads, pt, scalars, clipvalue=math.inf):
        step(self, grads, pt, scalars, clipvalue)
        self.slots[1][0][:] *= self.dtype.type(1.01)   # Adam's v, not the parameter
    monkeypatch.setattr(numba_backend.Plan, "step", wrong_slot)
    assert numerics.step_error("adam", [(3000,)], "float32", "numba") > 5e-3


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_bench_with_bfloat16_state(rounding, tmp_path, capsys):
    path = tmp_path / "bench.json"
    code, out, err = _run(["--optimizers", "adam,sgd_momentum", "--backends", "auto", *TINY,
                           "--no-torch", "--state-dtype", "bfloat16", "--state-rounding",
                           rounding, "--json", str(path)], capsys)
    assert code == 0, err
    assert f"state_dtype bfloat16, state_rounding {rounding}" in out
    assert "parameters only (the slots are stored rounded)" in out
    rows = json.loads(path.read_text())["rows"]
    assert {r["optimizer"]: r["bytes_per_param"] for r in rows} == {"adam": 20,
                                                                    "sgd_momentum": 16}
    assert all(r["backend_used"] == "numba" and r["numerics_ok"] for r in rows)


def test_bench_with_int8_state(tmp_path, capsys):
    """Rows of 8-bit state on numba and, where it is built, cython, timed in
    the same rounds."""
    path = tmp_path / "bench.json"
    backends = "numba,cython" if _CYTHON else "numba"
    code, out, err = _run(["--optimizers", "adam,sgd_momentum", "--backends", backends, *TINY,
                           "--no-torch", "--state-dtype", "int8", "--json", str(path)], capsys)
    assert code == 0, err
    assert "state_dtype int8, state_rounding nearest" in out
    rows = json.loads(path.read_text())["rows"]
    assert {r["optimizer"]: r["bytes_per_param"] for r in rows} == {
        "adam": 12 + 4 * (1 + 4 / 256), "sgd_momentum": 12 + 2 * (1 + 4 / 256)}
    assert all(r["numerics_ok"] for r in rows)
    assert sorted({r["backend_used"] for r in rows}) == (["cython", "numba"] if _CYTHON
                                                         else ["numba"])


def test_step_error_with_int8_state_sees_a_wrong_formula(monkeypatch):
    options = {"state_dtype": "int8"}
    assert numerics.step_error("adam", [(4000,)], "float32", "numba", options=options) <= 2e-5
    _drop_epsilon(monkeypatch)
    assert numerics.step_error("adam", [(4000,)], "float32", "numba", options=options) > 1e-2


def test_step_error_with_bfloat16_state_sees_a_wrong_formula(monkeypatch):
    options = {"state_dtype": "bfloat16"}
    assert numerics.step_error("adam", [(4000,)], "float32", "numba", options=options) <= 2e-5
    _drop_epsilon(monkeypatch)
    assert numerics.step_error("adam", [(4000,)], "float32", "numba", options=options) > 1e-2


def test_workqueue_layer_is_warned_about(monkeypatch, capsys):
    real = bench.ceiling.machine_info

    def workqueue():
        return {**real(), "threading_layer": "workqueue"}
    monkeypatch.setattr(bench.ceiling, "machine_info", workqueue)
    code, out, _ = _run(["--optimizers", "sgd", "--backends", "numba", *TINY, "--no-torch",
                         "--no-numerics", "--no-naive"], capsys)
    assert code == 0
    assert "warning: Numba uses the workqueue threading layer" in out
    assert "threading layer workqueue" in out
    assert "n/a" in out                                   # --no-naive: no naive column


@pytest.mark.parametrize("argv,message", [
    (["--optimizers", "adam,adamx"], "--optimizers: unknown name 'adamx'; valid: sgd,"),
    (["--optimizers", ","], "--optimizers: give at least one name"),
    (["--backends", "opencl"], "--backends: unknown backend 'opencl'"),
    (["--backends", "cuda"], "--backends: cuda updates device arrays, and fastopt bench times "
                             "host arrays; on a GPU machine run benchmarks/gpu_bench.py"),
    (["--state-rounding", "stochastic"], "--state-rounding: needs --state-dtype bfloat16"),
    (["--state-dtype", "float16"], "argument --state-dtype: invalid choice: 'float16'"),
    (["--sizes", "0"], "argument --sizes: expected whole numbers >= 1"),
    (["--sizes", "1e3,1.5"], "argument --sizes: expected whole numbers >= 1"),
    (["--sizes", "1e3,abc"], "got 'abc'"),
    (["--sizes", "1e3,nan"], "got 'nan'"),
    (["--sizes", "1e12"], "--sizes: sizes must be whole numbers from 1 to 2e+09"),
    (["--sizes", "100", "--tensors", "101"], "--tensors: must be an integer from 1 to the "
                                             "smallest size (100), got 101"),
    (["--tensors", "0"], "argument --tensors: expected an integer >= 1, got '0'"),
    (["--threads", "0"], "argument --threads: expected an integer >= 1, got '0'"),
    (["--threads", "4096"], "--threads: must be an integer from 1 to"),
    (["--repeats", "0"], "argument --repeats: expected an integer >= 1"),
    (["--sample-ms", "-1"], "argument --sample-ms: expected a number in [0.0, 10000.0]"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--json", "/no/such/folder/b.json"], "--json '/no/such/folder/b.json': the folder"),
])
def test_bad_options_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastopt bench: error: ")
    assert message in err


_CYTHON = "cython" in fastopt.available_backends()


@pytest.mark.parametrize("argv,message", [
    (["--state-dtype", "bfloat16", "--dtype", "float64"],
     "--state-dtype: bfloat16 state needs float32 parameters (--dtype float32), not float64"),
    (["--state-dtype", "bfloat16", "--backends", "numba,numpy"],
     "--state-dtype: bfloat16 state runs on the numba backend (or auto) only, not numpy"),
    (["--state-dtype", "int8", "--backends", "numba,numpy"],
     "--state-dtype: int8 state runs on the numba, cython or cuda backends (or auto) "
     "only, not numpy"),
    pytest.param(["--state-dtype", "bfloat16", "--backends", "cython"],
                 "--state-dtype: bfloat16 state runs on the numba backend (or auto) only, "
                 "not cython", marks=pytest.mark.skipif(not _CYTHON, reason="no cython")),
    (["--json", "."], "--json '.' is a folder; give a file name"),
    (["--json", "out/"], "--json 'out/' is a folder; give a file name"),
    (["--json", ""], "--json: expected a file name, got ''"),
    (["--json", "missing/b.json"], "--json 'missing/b.json': the folder"),
    (["--json", "a_file/b.json"], "--json 'a_file/b.json': the folder"),
    pytest.param(["--json", "/proc/fastopt-bench.json"],
                 "--json: cannot write '/proc/fastopt-bench.json'",
                 marks=pytest.mark.skipif(not sys.platform.startswith("linux"),
                                          reason="/proc")),
])
def test_bad_combinations_and_outputs_exit_2_before_any_work(argv, message, tmp_path,
                                                              monkeypatch, capsys):
    def no_work(*args, **kwargs):
        raise AssertionError("the benchmark ran")
    monkeypatch.setattr(bench, "run", no_work)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as e:
        main(["bench", "--optimizers", "adam", *TINY, "--no-torch", *argv])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("fastopt bench: error: ")
    assert message in err


def test_check_builds_every_optimizer_and_backend_it_will_time():
    config = bench.Config(optimizers=("adam",), backends=("auto", "numpy"), sizes=(64,),
                          optimizer_options={"state_dtype": "bfloat16"})
    with pytest.raises(bench.ConfigError) as e:
        bench.check(config)
    assert e.value.field == "state_dtype"
    config.backends = ("auto",)
    config.optimizer_options = {"state_dtype": "bfloat16", "state_rounding": "up"}
    with pytest.raises(bench.ConfigError, match="optimizers: adam on backend auto: .*rounding"):
        bench.check(config)


def test_the_output_probe_leaves_files_as_they_were(tmp_path):
    from fastopt.cli import _writable

    def fail(message):
        raise AssertionError(message)
    existing = tmp_path / "old.json"
    existing.write_text("keep")
    _writable(str(existing), "--json", fail)
    _writable(str(tmp_path / "new.json"), "--json", fail)
    assert existing.read_text() == "keep" and sorted(tmp_path.iterdir()) == [existing]


def test_unavailable_backend_says_how_to_get_it(monkeypatch, capsys):
    from fastopt import backends
    monkeypatch.setitem(backends._errors, "cython", ImportError("not built"))
    monkeypatch.delitem(backends._loaded, "cython", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["bench", "--backends", "cython"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--backends: backend 'cython' is not available here" in err and "pip install" in err


def test_check_names_the_config_field():
    with pytest.raises(bench.ConfigError) as e:
        bench.check(bench.Config(sizes=(1000,), sample_time=-1.0))
    assert e.value.field == "sample_time"
    with pytest.raises(bench.ConfigError, match="convention: must be keras or torch"):
        bench.check(bench.Config(convention="jax"))


def test_progress_bar_draws_and_clears():
    stream = io.StringIO()
    bar = _Progress(stream, width=10)
    bar(0, 4, "ceiling 1e3")
    bar(2, 4, "adam 1e3")
    assert "\r[#####.....] 2/4 adam 1e3" in stream.getvalue()
    bar(4, 4, "done")
    assert stream.getvalue().endswith("\r")


@pytest.mark.parametrize("total,count", [(1, 1), (10, 10), (64, 3), (1000, 200),
                                         (2_000_000, 200), (12345, 7)])
def test_split_shapes_hold_exactly_the_total(total, count):
    shapes = cases.split_shapes(total, count)
    sizes = [int(np.prod(s)) for s in shapes]
    assert len(shapes) == count and sum(sizes) == total and min(sizes) >= 1
    if total >= 100 * count and count > 1:
        assert any(len(s) == 2 for s in shapes) and any(len(s) == 1 for s in shapes)
        assert max(sizes) > 10 * min(sizes)                 # mixed sizes
    assert shapes == cases.split_shapes(total, count)      # deterministic


def test_split_shapes_rejects_more_tensors_than_elements():
    with pytest.raises(ValueError, match="count must be in"):
        cases.split_shapes(5, 6)


def test_bytes_per_param():
    bpp = bench.bytes_per_param
    assert bpp("adam") == 28 and bpp("adam", "float64") == 56 and bpp("adamw") == 28
    assert bpp("sgd") == 12 and bpp("sgd_nesterov") == 20 and bpp("adam_amsgrad") == 36
    assert bpp("rmsprop_centered_momentum", np.float32) == 36
    assert bpp("adam", "float32", state_dtype="float16") == 20


@pytest.mark.parametrize("name", list(bench.CASES))
def test_naive_baseline_is_the_same_update(name):
    """The naive step does the optimizer's work: eight steps of it match the
    fastopt optimizer of the same case (float64, numpy backend).  The naive
    Adams are the paper's, epsilon added after the bias correction: fastopt's
    torch convention, given Keras's epsilon; the naive Adamax is Keras's; the
    naive RAdam is torch's (rectified from step 6 on)."""
    rng = np.random.default_rng(3)
    shapes = [(5, 4), (7,)]
    w0 = [rng.standard_normal(s) for s in shapes]
    w_naive, w_fast = [w.copy() for w in w0], [w.copy() for w in w0]
    g_buf = [np.empty(s) for s in shapes]      # the naive step reads its gradients here
    step = naive.stepper(name, w_naive, g_buf)
    paper_adam = name in ("adam", "adam_amsgrad", "adamw")
    torch_form = {"convention": "torch", "epsilon": 1e-7} if paper_adam else {}
    if name == "adamw":
        torch_form["weight_decay"] = 0.004
    opt = cases.make_optimizer(name, w_fast, "numpy", **torch_form)
    for _ in range(8):
        grads = [rng.standard_normal(s) for s in shapes]
        for buf, g in zip(g_buf, grads):
            buf[...] = g
        step()
        opt.step(grads)
    for a, b in zip(w_naive, w_fast):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert not np.allclose(w_naive[0], w0[0])


def test_torch_twins_exist_for_every_case():
    torch = pytest.importorskip("torch")
    for name, case in bench.CASES.items():
        if case.torch is None:  # Lion, Ftrl: Keras only
            assert "torch" not in case.cls._CONVENTIONS, name
            with pytest.raises(LookupError, match=f"has no {case.cls.__name__}"):
                cases.torch_stepper(name, [np.ones(6)], [np.ones(6)])
            continue
        cls, kwargs, impl = case.torch
        module, _, short = cls.rpartition(".")  # schedulefree.AdamWScheduleFree: a package's
        if module:
            try:
                owner = importlib.import_module(module)
            except ImportError:  # the test extra has it; without it torch_stepper says so
                with pytest.raises(ImportError):
                    cases.torch_stepper(name, [np.ones(6)], [np.ones(6)])
                continue
        else:
            owner = torch.optim
        # torch's fused implementation where it has one (not RMSprop, Adamax)
        has_fused = "fused" in inspect.signature(getattr(owner, short)).parameters
        assert impl == ("fused" if has_fused else "foreach"), name
        params = [np.ones(6, np.float32)]
        step, got = cases.torch_stepper(name, params, [np.full(6, 0.5, np.float32)])
        step()
        assert got == impl and params[0][0] != 1.0     # the numpy array itself moved
        impls = cases.torch_implementations(name)
        assert impls == (("fused",) if has_fused else ("foreach", "for-loop")), name
        if not has_fused:  # the for-loop path: the same step
            loop = [np.ones(6, np.float32)]
            step, got = cases.torch_stepper(name, loop, [np.full(6, 0.5, np.float32)],
                                            "for-loop")
            step()
            assert got == "for-loop"
            np.testing.assert_allclose(loop[0], params[0], rtol=1e-6)
    assert torch.get_num_threads() >= 1


def test_time_calls_interleaves_and_rotates():
    order = []
    fns = {k: (lambda k=k: order.append(k)) for k in "abc"}
    times = bench.ceiling.time_calls(fns, repeats=3, warmup=2)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert order[:6] == list("aabbcc")                      # warm-up, untimed
    assert order[6:] == list("abc" "bca" "cab")             # each round starts later
    assert all(t >= 0 for v in times.values() for t in v)


def test_step_error_leaves_out_rprop_products_that_underflow_in_float32(monkeypatch):
    # the last gradient times the kept one is 9e-47: zero in float32 (Rprop
    # keeps the step size there, as torch does in float32), positive in
    # float64; every other element must still agree
    draws = iter([np.array([1.0, -0.7, 2.0], np.float32),    # parameters
                  np.array([0.5, 0.0, 1.0], np.float32),     # steps 1, 2
                  np.array([0.5, 3.657e-21, -1.0], np.float32),
                  np.array([0.25, 2.56e-26, -1.0], np.float32)])  # the compared step
    monkeypatch.setattr(numerics, "awkward_values", lambda rng, shape, dtype: next(draws))
    assert numerics.step_error("rprop", [(3,)], "float32", "numba") <= 1e-7
    draws = iter([np.array([1.0, -0.7, 2.0], np.float32), np.array([0.5, 0.0, 1.0], np.float32),
                  np.array([0.5, 3.657e-21, -1.0], np.float32),
                  np.array([0.25, 2.56e-26, -1.0], np.float32)])
    monkeypatch.setattr(numerics, "UNDERFLOW_DECISIONS", {})
    assert numerics.step_error("rprop", [(3,)], "float32", "numba") > 0.1


def test_report_names_the_rows_run_under_their_own_convention(capsys):
    code, out, err = _run(["--optimizers", "adam,lion,rprop", "--backends", "numba", *TINY,
                           "--no-torch", "--no-numerics", "--convention", "torch"], capsys)
    assert code == 0, err
    assert "torch convention (lion: keras, its only one)" in out
    code, out, err = _run(["--optimizers", "adam,lion,rprop", "--backends", "numba", *TINY,
                           "--no-torch", "--no-numerics"], capsys)
    assert "keras convention (rprop: torch, its only one)" in out


def test_each_row_prints_the_ceiling_its_percentage_is_taken_against(tmp_path, capsys):
    # a reader can redo the division from the printed numbers (GB/s / ceiling)
    path = tmp_path / "bench.json"
    code, out, err = _run(["--optimizers", "adam,sgd", "--backends", "numba", *TINY,
                           "--no-torch", "--no-numerics", "--json", str(path)], capsys)
    assert code == 0, err
    rows = json.loads(path.read_text())["rows"]
    lines = [ln.split() for ln in out.splitlines() if ln.split()[:2] in
             (["adam", "numba"], ["sgd", "numba"])]
    assert len(lines) == len(rows) == 4
    for cells, r in zip(lines, rows):
        gbps, ceiling, pct = float(cells[6]), float(cells[7]), float(cells[8].rstrip("%"))
        assert ceiling == round(r["ceiling_gbps"], 1)
        assert abs(100 * gbps / ceiling - pct) <= 1.0 + 100 * 0.05 / ceiling * (1 + gbps / ceiling)
