"""``fastopt compare``: table, JSON, plot, every error case, and ``--framework keras``."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from train_data import banknotes_path

from fastopt import train
from fastopt.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROW = re.compile(r"^\s*(\d+)\s+(\S+)\s+([\d.]+) ± ([\d.]+)\s+([\d.]+) ± ([\d.]+)"
                 r"\s+([\d.]+) ± ([\d.]+)$")


def _table(out):
    """``[(rank, name, loss mean, loss std, ...)]`` from the printed table."""
    return [(int(m[1]), m[2], *map(float, m.groups()[2:]))
            for m in map(ROW.match, out.splitlines()) if m]


def _check_report(report, optimizers, seeds, epochs):
    assert set(report) == {"config", "runs"}
    config = report["config"]
    assert config["optimizers"] == optimizers and config["seeds"] == seeds
    assert config["epochs"] == epochs and config["learning_rate"] == 0.01
    runs = report["runs"]
    assert [(r["optimizer"], r["seed"]) for r in runs] == \
        [(name, s) for name in optimizers for s in range(seeds)]
    for r in runs:
        assert set(r) == {"optimizer", "seed", "history"}
        assert set(r["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
        assert all(len(v) == epochs and all(isinstance(x, float) for x in v)
                   for v in r["history"].values())


def test_default_run_prints_the_ranking_writes_json_and_the_default_plot(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--json", "runs.json"]) == 0
    out, err = capsys.readouterr()
    rows = _table(out)
    six = ["sgd", "momentum", "nesterov", "adam", "adagrad", "rmsprop"]
    assert sorted(r[1] for r in rows) == sorted(six)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r[2] for r in rows] == sorted(r[2] for r in rows)  # ranked by final loss
    assert "980 training and 420 validation rows" in out
    assert "plot: compare.png" in out and "json: runs.json" in out
    assert len(err.splitlines()) == 6  # one progress line per run
    report = json.loads((tmp_path / "runs.json").read_text())
    _check_report(report, six, seeds=1, epochs=5)
    final = {r["optimizer"]: r["history"] for r in report["runs"]}
    for _, name, loss, loss_std, acc, _, val_acc, _ in rows:
        assert loss == round(final[name]["loss"][-1], 4) and loss_std == 0
        assert acc == round(final[name]["accuracy"][-1], 4)
        assert val_acc == round(final[name]["val_accuracy"][-1], 4)
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG_SIGNATURE


def test_seeds_give_mean_and_std_and_the_plot_goes_where_asked(tmp_path, capsys):
    plot, js = tmp_path / "curves.png", tmp_path / "r.json"
    assert main(["compare", "--optimizers", "sgd, adam,sgd", "--seeds", "3", "--epochs", "2",
                 "--plot", str(plot), "--json", str(js)]) == 0
    rows = _table(capsys.readouterr().out)
    report = json.loads(js.read_text())
    _check_report(report, ["sgd", "adam"], seeds=3, epochs=2)
    for _, name, loss, loss_std, *_ in rows:
        finals = [r["history"]["loss"][-1] for r in report["runs"] if r["optimizer"] == name]
        assert len(set(finals)) == 3  # the seeds differ
        assert loss == pytest.approx(np.mean(finals), abs=5e-5)
        assert loss_std == pytest.approx(np.std(finals), abs=5e-5)
    data = plot.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000


def test_runs_match_the_library_within_a_seed(tmp_path, capsys):
    js = tmp_path / "r.json"
    main(["compare", "--optimizers", "nesterov", "--epochs", "2", "--no-plot",
          "--json", str(js)])
    X, y, _ = train.load_builtin()
    X_train, X_test, y_train, y_test = train.train_test_split(X, y, 0.3, seed=0)
    scaler = train.Standardizer().fit(X_train)
    model = train.LogisticRegression(4, seed=0)
    opt = train.make_optimizer("nesterov", model.params, learning_rate=0.01, momentum=0.3)
    hist = train.fit(model, scaler.transform(X_train), y_train, opt, epochs=2, batch_size=16,
                     seed=0, validation_data=(scaler.transform(X_test), y_test), verbose=0)
    assert json.loads(js.read_text())["runs"][0]["history"] == hist.history


def test_mlp_csv_and_options_are_passed_through(tmp_path, capsys):
    js = tmp_path / "r.json"
    assert main(["compare", "--csv", str(banknotes_path()), "--target", "class",
                 "--model", "mlp", "--hidden", "8,4", "--activation", "tanh",
                 "--optimizers", "amsgrad,rmsprop_centered,adamw", "--epochs", "1",
                 "--test-size", "0.25", "--dtype", "float64", "--backend", "numpy",
                 "--no-plot", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "an MLP (8, 4 tanh units, sigmoid output)" in out
    assert "1029 training and 343 validation rows" in out
    config = json.loads(js.read_text())["config"]
    assert config["features"] == ["variace", "skewness", "curtosis", "entropy"]
    assert (config["hidden"], config["activation"], config["dtype"]) == ([8, 4], "tanh",
                                                                         "float64")
    assert (config["n_train"], config["n_validation"]) == (1029, 343)
    assert not (tmp_path / "compare.png").exists()


def test_optimizer_recipes_take_momentum_only_where_it_belongs():
    w = np.zeros(3, np.float32)
    assert train.make_optimizer("momentum", w, momentum=0.3).momentum == 0.3
    nesterov = train.make_optimizer("nesterov", w, momentum=0.5)
    assert (nesterov.momentum, nesterov.nesterov) == (0.5, True)
    assert train.make_optimizer("sgd", w, momentum=0.5).momentum == 0.0
    assert train.make_optimizer("rmsprop", w, momentum=0.5).get_config()["momentum"] == 0.0
    assert train.make_optimizer("amsgrad", w).rule == "adam_amsgrad"
    adam = train.make_optimizer("adam", w, learning_rate=0.02, convention="keras")
    assert adam.learning_rate == 0.02 and adam.convention == "keras"
    assert list(train.DEFAULT_OPTIMIZERS) == ["sgd", "momentum", "nesterov", "adam", "adagrad",
                                              "rmsprop"]


def test_convention_is_passed_to_the_optimizers(tmp_path, capsys):
    """``--convention torch`` reaches every optimizer; if the installed fastopt
    cannot build one under it, the command fails cleanly before training."""
    js = tmp_path / "r.json"
    code = _exit_code(["compare", "--convention", "torch", "--optimizers", "sgd,adam",
                       "--epochs", "1", "--no-plot", "--json", str(js)])
    out, err = capsys.readouterr()
    if code == 0:
        assert json.loads(js.read_text())["config"]["convention"] == "torch"
        assert "torch convention" in out
    else:
        assert code == 2 and "convention" in err and "Traceback" not in err and out == ""


def _exit_code(argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_without_matplotlib_everything_but_the_plot_works(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    monkeypatch.chdir(tmp_path)
    assert _exit_code(["compare", "--optimizers", "sgd", "--epochs", "1", "--plot",
                       "p.png"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert "pip install -e '.[plot]'" in err and "pip install matplotlib" in err
    assert main(["compare", "--optimizers", "sgd", "--epochs", "1", "--json", "r.json"]) == 0
    out, err = capsys.readouterr()
    assert _table(out) and "no plot: plotting needs matplotlib" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def _csv(tmp_path, text):
    path = tmp_path / "d.csv"
    path.write_text(text)
    return str(path)


ERRORS = [
    (lambda t: ["--csv", str(t / "missing.csv"), "--target", "y"], "no such file"),
    (lambda t: ["--csv", _csv(t, "a,b\n1,0\n"), "--target", "y"],
     "has no column 'y'; its columns are a, b"),
    (lambda t: ["--csv", _csv(t, "a,y\n1,0\n2,1\nthree,0\n"), "--target", "y"],
     "line 4, column 'a': 'three' is not a number"),
    (lambda t: ["--csv", _csv(t, "a,y\n1,0\n2\n"), "--target", "y"],
     "line 3: 1 cells, but the header has 2 columns"),
    (lambda t: ["--csv", _csv(t, "a,y\n1,0\n2,2\n3,1\n"), "--target", "y"],
     "must hold the binary labels 0 and 1; it holds 0, 1, 2"),
    (lambda t: ["--csv", _csv(t, "a,y\n1,0\n2,1\n"), "--target", "y", "--test-size", "0.9"],
     "leaves an empty training or test set"),
    (lambda t: ["--optimizers", "adam,adamax"],
     "unknown optimizer 'adamax'; valid names: sgd, momentum, nesterov, adam, adagrad, "
     "rmsprop, adamw, amsgrad, rmsprop_centered, ftrl, lion, lamb, adadelta, nadam, nadam_torch, "
     "asgd"),
    (lambda t: ["--optimizers", ","], "--optimizers needs at least one name"),
    (lambda t: ["--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
    (lambda t: ["--epochs", "five"], "argument --epochs: expected an integer >= 1, got 'five'"),
    (lambda t: ["--batch-size", "2.5"], "argument --batch-size: expected an integer >= 1"),
    (lambda t: ["--seeds", "0"], "argument --seeds: expected an integer >= 1, got '0'"),
    (lambda t: ["--learning-rate", "-1"], "argument --learning-rate: expected a number >= 0"),
    (lambda t: ["--learning-rate", "nan"], "argument --learning-rate: expected a number"),
    (lambda t: ["--momentum", "1.5"], "argument --momentum: expected a number in [0.0, 1.0]"),
    (lambda t: ["--test-size", "1"], "argument --test-size: expected a number in (0.0, 1.0)"),
    (lambda t: ["--model", "mlp", "--hidden", "8,x"], "argument --hidden: expected layer sizes"),
    (lambda t: ["--hidden", "8"], "--hidden applies to --model mlp only"),
    (lambda t: ["--model", "cnn"], "argument --model: invalid choice: 'cnn'"),
    (lambda t: ["--convention", "jax"], "argument --convention: invalid choice: 'jax'"),
    (lambda t: ["--csv", "x.csv"], "--csv needs --target COLUMN"),
    (lambda t: ["--target", "class"], "--csv PATH and --target COLUMN go together"),
    (lambda t: ["--plot", str(t / "no" / "p.png")], "--plot"),
    (lambda t: ["--plot", "p.png", "--no-plot"], "argument --no-plot: not allowed with"),
    (lambda t: ["--json", str(t / "no" / "r.json")], "--json"),
    (lambda t: ["--json", "."], "--json '.' is a folder; give a file name"),
    (lambda t: ["--json", str(t)], "is a folder; give a file name"),
    (lambda t: ["--optimizers", "adam,sgd", "--momentum", "0.5"],
     "--momentum applies to the optimizers momentum and nesterov only, and --optimizers "
     "names neither"),
    (lambda t: ["--activation", "tanh"], "--activation applies to --model mlp only"),
    (lambda t: ["--state-dtype", "bfloat16", "--dtype", "float64"],
     "--state-dtype bfloat16 needs --dtype float32"),
    (lambda t: ["--csv", _csv(t, "a,y\n1,0\n2,1\n3,0\n4,1\n"), "--target", "y",
                "--batch-size", "1", "--momentum", "0.2", "--optimizers", "amsgrad"],
     "--momentum applies"),
    # --framework keras: the options of fastopt's own trainer are refused before Keras loads
    (lambda t: ["--framework", "jax"], "argument --framework: invalid choice: 'jax'"),
    (lambda t: ["--framework", "keras", "--backend", "numpy"],
     "--backend numpy applies to --framework fastopt only; fastopt.keras chooses"),
    (lambda t: ["--framework", "keras", "--convention", "torch"],
     "--convention torch applies to --framework fastopt only; Keras's optimizers and "
     "fastopt.keras follow Keras's formulas"),
    (lambda t: ["--framework", "keras", "--state-dtype", "bfloat16"],
     "--state-dtype applies to --framework fastopt only"),
    (lambda t: ["--framework", "keras", "--state-rounding", "stochastic"],
     "--state-rounding applies to --framework fastopt only"),
    (lambda t: ["--framework", "keras", "--optimizers", "adam,adamax"],
     "unknown optimizer 'adamax'"),
    (lambda t: ["--framework", "keras", "--hidden", "8"], "--hidden applies to --model mlp"),
]


@pytest.mark.parametrize(("argv", "message"), ERRORS,
                         ids=[m[:40] for _, m in ERRORS])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were, not in the repo
    assert _exit_code(["compare", *argv(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("fastopt compare: error: ")
    assert message in err and "Traceback" not in err


def _plot_missing():
    from fastopt.train import plot
    return plot.matplotlib_missing()


needs_matplotlib = pytest.mark.skipif(bool(_plot_missing()), reason="matplotlib missing")


@needs_matplotlib
@pytest.mark.parametrize(("argv", "message"), [
    (["--plot", "."], "--plot '.' is a folder; give a file name"),
    (["--plot", "r.png", "--json", "./r.png"], "--json './r.png' is also the plot's file"),
    (["--json", "compare.png"], "--json 'compare.png' is also the plot's file"),
])
def test_outputs_are_checked_before_training(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert _exit_code(["compare", "--epochs", "1", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []


@needs_matplotlib
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_an_unwritable_default_plot_is_refused_before_training(monkeypatch, capsys):
    monkeypatch.chdir("/proc")                 # no file can be created here, even by root
    assert _exit_code(["compare", "--epochs", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "the default plot: cannot write 'compare.png'" in err
    assert "(choose --plot PATH or --no-plot)" in err


def test_an_unavailable_backend_is_one_line_not_a_traceback(monkeypatch, capsys):
    from fastopt import backends
    monkeypatch.setitem(backends._errors, "cython", ImportError("not built"))
    monkeypatch.delitem(backends._loaded, "cython", raising=False)
    assert _exit_code(["compare", "--backend", "cython", "--no-plot"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "error: --backend: backend 'cython' is not available here" in err
    assert "pip install -e ." in err


def test_huge_finite_features_are_standardised_not_turned_into_nan(tmp_path, capsys):
    rows = ["a,b,y"] + [f"{(1e308, -1.7e308, 1.5e308)[i % 3]},{i % 7},{i % 2}"
                        for i in range(40)]
    code = main(["compare", "--csv", _csv(tmp_path, "\n".join(rows) + "\n"), "--target", "y",
                 "--optimizers", "sgd,adam", "--epochs", "1", "--no-plot"])
    out, err = capsys.readouterr()
    assert code == 0, err
    table = _table(out)
    assert [r[1] for r in table] == ["sgd", "adam"] or [r[1] for r in table] == ["adam", "sgd"]
    assert "nan" not in out and all(np.isfinite(r[2:]).all() for r in table)


def test_features_that_cannot_be_standardised_are_refused(tmp_path, capsys):
    # a held-out value 1e300 in a column whose training rows vary by 2**-52
    test_rows = set(train.train_test_split(np.arange(10), np.arange(10), 0.3, seed=0)[3])
    lines = ["a,y"] + [f"{1e300 if i in test_rows else 1.0 + (i % 2) * 2**-52!r},{i % 2}"
                       for i in range(10)]
    path = _csv(tmp_path, "\n".join(lines) + "\n")
    assert _exit_code(["compare", "--csv", path, "--target", "y", "--no-plot"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert f"{path}: the features cannot be standardised: Standardizer.transform: row" in err
    assert "standardises to a value beyond the float64 range" in err


def test_diverged_training_is_reported_and_exits_1(tmp_path, capsys):
    code = main(["compare", "--model", "mlp", "--learning-rate", "1e38", "--optimizers",
                 "sgd,adam", "--epochs", "1", "--no-plot"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "nan ± nan" in out                            # the table still shows what happened
    assert err.splitlines()[-1] == (
        "fastopt compare: training diverged (the loss is not a finite number): sgd seed 0 "
        "from epoch 1; adam seed 0 from epoch 1; try a smaller --learning-rate")
    assert "RuntimeWarning" not in err


def _command():
    exe = shutil.which("fastopt")
    return [exe] if exe else [sys.executable, "-m", "fastopt.cli"]


def test_command_end_to_end_in_a_subprocess(tmp_path):
    run = subprocess.run([*_command(), "compare", "--optimizers", "sgd,adam,rmsprop",
                          "--epochs", "2", "--plot", "p.png", "--json", "r.json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = _table(run.stdout)
    assert [r[1] for r in rows][-1] == "sgd" and len(rows) == 3
    _check_report(json.loads((tmp_path / "r.json").read_text()), ["sgd", "adam", "rmsprop"],
                  seeds=1, epochs=2)
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_SIGNATURE
    bad = subprocess.run([*_command(), "compare", "--optimizers", "adamax"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "fastopt compare: error: --optimizers: unknown optimizer 'adamax'; valid names: "
        + ", ".join(train.comparison.OPTIMIZERS)]
    assert "sgd, momentum, nesterov, adam, adagrad, rmsprop, adamw" in bad.stderr


# ---------------------------------------------------------------------------
# --framework keras: the experiment in Keras, keras.optimizers.X next to fastopt.keras.X

KERAS_ROW = re.compile(r"^\s*(\d+)\s+(\S+)\s+(keras|fastopt\.keras)\s+([\d.]+) ± ([\d.]+)"
                       r"\s+([\d.]+) ± ([\d.]+)\s+([\d.]+) ± ([\d.]+)$")
AGREEMENT_ROW = re.compile(r"^  (\S+)\s+(\d\.\de[+-]\d\d)\s+(\d\.\de[+-]\d\d)$")

#: The largest relative difference allowed between the loss curves of
#: keras.optimizers.X and fastopt.keras.X.  Measured on the built-in data, every
#: optimizer, logistic and MLP, 5 epochs, seeds 0 and 1: in float32 at most
#: 3.5e-6 (Adam, AdamW, AMSGrad: Keras computes the bias corrections in float32,
#: fastopt in float64; 1.5e-6 already after Adam's first epoch), 3.4e-7 for
#: SGD, Adagrad and RMSprop; in float64 the reported curves were identical
#: (Keras's fit reports its figures rounded to float32, even in float64: at most
#: one float32 rounding step, 2**-23 relative, could tell them apart).
KERAS_RTOL = {"float32": 1e-5, "float64": 2.0**-23}


@pytest.fixture
def keras():
    pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":  # pragma: no cover - conftest sets torch
        pytest.skip("--framework keras needs KERAS_BACKEND=torch")
    return keras


def _keras_table(out):
    """``[(rank, optimizer, implementation, loss mean, ...)]`` from the printed table."""
    return [(int(m[1]), m[2], m[3], *map(float, m.groups()[3:]))
            for m in map(KERAS_ROW.match, out.splitlines()) if m]


def _keras_runs(report, optimizers, seeds, epochs):
    """Check the JSON of a --framework keras run; ``{(optimizer, seed):
    {implementation: history}}``."""
    assert set(report) == {"config", "runs", "agreement"}
    config = report["config"]
    assert config["framework"] == "keras" and config["optimizers"] == optimizers
    assert config["keras"].startswith("3.") and config["torch"]
    runs = report["runs"]
    assert [(r["optimizer"], r["implementation"], r["seed"]) for r in runs] == \
        [(name, impl, s) for name in optimizers for s in range(seeds)
         for impl in ("keras", "fastopt.keras")]
    pairs = {}
    for r in runs:
        assert set(r) == {"optimizer", "implementation", "seed", "history"}
        assert list(r["history"]) == ["loss", "accuracy", "val_loss", "val_accuracy"]
        assert all(len(v) == epochs and all(isinstance(x, float) for x in v)
                   for v in r["history"].values())
        pairs.setdefault((r["optimizer"], r["seed"]), {})[r["implementation"]] = r["history"]
    return pairs


def _largest_differences(pairs, name):
    """(absolute, relative): fastopt.keras's loss curves against Keras's."""
    absolute = relative = 0.0
    for (optimizer, _), pair in pairs.items():
        if optimizer != name:
            continue
        for key in ("loss", "val_loss"):
            ours, theirs = np.array(pair["fastopt.keras"][key]), np.array(pair["keras"][key])
            absolute = max(absolute, np.max(np.abs(ours - theirs)))
            relative = max(relative, np.max(np.abs(ours - theirs) / np.abs(theirs)))
    return absolute, relative


def _float_type(keras):
    """Keras's float settings: floatx, and the global dtype policy (None until
    Keras first reads it; then fixed from floatx)."""
    from keras.src.backend.common import global_state
    return keras.config.floatx(), global_state.get_global_attribute("dtype_policy", None)


def test_keras_framework_trains_both_implementations_and_they_agree(keras, tmp_path, capsys):
    plot, js = tmp_path / "k.png", tmp_path / "k.json"
    before = _float_type(keras)
    assert main(["compare", "--framework", "keras", "--optimizers", "sgd,adam", "--epochs", "2",
                 "--plot", str(plot), "--json", str(js)]) == 0
    out, err = capsys.readouterr()
    assert f"Training logistic regression in Keras {keras.__version__} (model.fit" in out
    assert "each optimizer twice, as keras.optimizers.X and as fastopt.keras.X" in out
    assert len(err.splitlines()) == 4 and "adam (fastopt.keras) seed 0: loss" in err
    pairs = _keras_runs(json.loads(js.read_text()), ["sgd", "adam"], seeds=1, epochs=2)
    report = json.loads(js.read_text())
    rows = _keras_table(out)
    assert sorted(r[1:3] for r in rows) == [("adam", "fastopt.keras"), ("adam", "keras"),
                                            ("sgd", "fastopt.keras"), ("sgd", "keras")]
    for _, name, impl, loss, _, acc, _, val_acc, _ in rows:
        history = pairs[name, 0][impl]
        assert loss == round(history["loss"][-1], 4) and acc == round(history["accuracy"][-1], 4)
        assert val_acc == round(history["val_accuracy"][-1], 4)
    printed = {m[1]: (float(m[2]), float(m[3]))
               for m in map(AGREEMENT_ROW.match, out.splitlines()) if m}
    assert list(printed) == ["sgd", "adam"]
    for name in ("sgd", "adam"):
        absolute, relative = _largest_differences(pairs, name)
        assert relative < KERAS_RTOL["float32"], (name, relative)
        assert report["agreement"][name] == pytest.approx(
            {"absolute": absolute, "relative": relative}, rel=1e-12, abs=0)
        assert printed[name] == (float(f"{absolute:.1e}"), float(f"{relative:.1e}"))
    # the optimizers differ: the comparison measures something
    assert pairs["sgd", 0]["keras"]["loss"] != pairs["adam", 0]["keras"]["loss"]
    data = plot.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    assert _float_type(keras) == before


def test_keras_framework_in_float64_with_an_mlp_and_seeds(keras, tmp_path, capsys):
    js = tmp_path / "k.json"
    before = _float_type(keras)
    assert main(["compare", "--framework", "keras", "--model", "mlp", "--hidden", "4",
                 "--activation", "tanh", "--dtype", "float64", "--optimizers", "adam",
                 "--seeds", "2", "--epochs", "1", "--no-plot", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "an MLP (4 tanh units, sigmoid output) in Keras" in out and "float64" in out
    report = json.loads(js.read_text())
    assert (report["config"]["dtype"], report["config"]["hidden"]) == ("float64", [4])
    pairs = _keras_runs(report, ["adam"], seeds=2, epochs=1)
    assert _largest_differences(pairs, "adam")[1] <= KERAS_RTOL["float64"]
    assert pairs["adam", 0]["keras"] != pairs["adam", 1]["keras"]  # the seeds differ
    assert _float_type(keras) == before  # put back as found


def test_keras_models_take_the_dtype_asked_for(keras):
    """Keras fixes its global dtype policy from floatx when first read; the
    models set it and put it back, so a float64 model after a float32 one is
    float64, and Keras's settings are left as they were found."""
    from fastopt.train import keras_compare
    before = _float_type(keras)
    w32 = keras_compare.make_model(keras, "mlp", 3, 0, hidden=(2,)).get_weights()
    w64 = keras_compare.make_model(keras, "mlp", 3, 0, hidden=(2,),
                                   dtype="float64").get_weights()
    assert {w.dtype for w in w32} == {np.dtype("float32")}
    assert {w.dtype for w in w64} == {np.dtype("float64")}
    again = keras_compare.make_model(keras, "mlp", 3, 0, hidden=(2,)).get_weights()
    for a, b in zip(w32, again):
        np.testing.assert_array_equal(a, b)  # the seed fixes the weights
    assert _float_type(keras) == before


def test_keras_framework_reports_diverged_runs(keras, capsys):
    code = main(["compare", "--framework", "keras", "--model", "mlp", "--learning-rate",
                 "1e38", "--optimizers", "sgd", "--epochs", "1", "--no-plot"])
    out, err = capsys.readouterr()
    assert code == 1 and "nan ± nan" in out
    assert err.splitlines()[-1] == (
        "fastopt compare: training diverged (the loss is not a finite number): sgd (keras) "
        "seed 0 from epoch 1; sgd (fastopt.keras) seed 0 from epoch 1; try a smaller "
        "--learning-rate")


def _one_error_line(argv, capsys):
    assert _exit_code(["compare", "--framework", "keras", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_keras_framework_without_keras_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "keras", None)  # `import keras` now fails
    err = _one_error_line([], capsys)
    assert "error: --framework keras: Keras 3 with the torch backend is not installed" in err
    assert "pip install 'fastopt[keras]'" in err
    assert list(tmp_path.iterdir()) == []


def test_keras_framework_refuses_another_keras_backend(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "keras", raising=False)  # not imported yet
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    err = _one_error_line([], capsys)
    assert ("--framework keras: fastopt.keras runs on Keras's torch backend, but "
            "KERAS_BACKEND=jax here; unset KERAS_BACKEND or set KERAS_BACKEND=torch") in err


def test_keras_framework_refuses_keras_loaded_with_another_backend(keras, monkeypatch, capsys):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    err = _one_error_line(["--no-plot"], capsys)
    assert "but Keras was loaded with the 'jax' backend; set KERAS_BACKEND=torch" in err


def test_keras_framework_end_to_end_in_a_subprocess(keras, tmp_path):
    """The command sets KERAS_BACKEND=torch itself when it is not set."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    run = subprocess.run([*_command(), "compare", "--framework", "keras", "--optimizers", "sgd",
                          "--epochs", "1", "--no-plot"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert sorted(r[2] for r in _keras_table(run.stdout)) == ["fastopt.keras", "keras"]
    env["KERAS_BACKEND"] = "tensorflow"
    bad = subprocess.run([*_command(), "compare", "--framework", "keras"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "fastopt compare: error: --framework keras: fastopt.keras runs on Keras's torch "
        "backend, but KERAS_BACKEND=tensorflow here; unset KERAS_BACKEND or set "
        "KERAS_BACKEND=torch"]
    assert list(tmp_path.iterdir()) == []


def test_runs_with_an_implementation_are_ranked_reported_and_named_apart():
    from fastopt.train import comparison
    history = {"loss": [0.5, 0.4], "accuracy": [0.7, 0.8]}
    runs = [{"optimizer": "adam", "implementation": impl, "seed": 0,
             "history": {**history, "loss": [0.5, loss]}}
            for impl, loss in (("keras", 0.41), ("fastopt.keras", float("nan")))]
    rows = comparison.summarize(runs)
    assert [(r["rank"], r["implementation"]) for r in rows] == [(1, "keras"),
                                                                 (2, "fastopt.keras")]
    table = comparison.format_table(rows).splitlines()
    assert table[0].split()[:3] == ["rank", "optimizer", "implementation"]
    assert table[1].split()[:4] == ["1", "adam", "keras", "0.4100"]
    assert comparison.diverged(runs) == [("adam (fastopt.keras)", 0, 1)]
    report = comparison.json_report({}, runs)["runs"]
    assert [list(r) for r in report] == [["optimizer", "implementation", "seed", "history"]] * 2
    assert report[1]["history"]["loss"] == [0.5, None]
    plain = comparison.summarize([{"optimizer": "sgd", "seed": 0, "history": history}])
    assert plain[0]["implementation"] is None
    assert "implementation" not in comparison.format_table(plain)


def test_keras_framework_refuses_an_optimizer_keras_does_not_have(keras, capsys):
    err = _one_error_line(["--optimizers", "adam,radam", "--no-plot"], capsys)
    assert ("radam: RAdam is not a Keras optimizer (it exists in torch.optim only); "
            "--framework keras runs Keras's optimizers") in err
