"""``fastopt compare``: table, JSON, plot, and every error case."""
import json
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
     "rmsprop, adamw, amsgrad, rmsprop_centered"),
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
        "fastopt compare: error: --optimizers: unknown optimizer 'adamax'; valid names: sgd, "
        "momentum, nesterov, adam, adagrad, rmsprop, adamw, amsgrad, rmsprop_centered, radam, "
        "rprop"]
