"""The trainer: models, data, fit, callbacks, checkpoints."""
import os
import re
from pathlib import Path

import numpy as np
import pytest
from train_data import banknotes_path

import fastopt
from fastopt import train
from fastopt.train import (
    MLP,
    Checkpoint,
    EarlyStopping,
    LogisticRegression,
    Standardizer,
    fit,
    load_csv,
    train_test_split,
)


def _split(X, y, seed=0):
    X_train, X_test, y_train, y_test = train_test_split(X, y, 0.3, seed=seed)
    scaler = Standardizer().fit(X_train)
    return scaler.transform(X_train), y_train, scaler.transform(X_test), y_test


@pytest.fixture(scope="module")
def builtin():
    X, y, _ = train.load_builtin()
    return _split(X, y)


@pytest.fixture
def small(builtin):
    """200 training and 100 validation rows of the built-in set."""
    X_train, y_train, X_test, y_test = builtin
    return X_train[:200], y_train[:200], X_test[:100], y_test[:100]


# -- models ---------------------------------------------------------------------------

def test_params_are_named_views_of_one_contiguous_buffer():
    model = MLP(4, hidden=(8, 3), seed=0)
    assert list(model.params) == ["dense_0/kernel", "dense_0/bias", "dense_1/kernel",
                                  "dense_1/bias", "dense_2/kernel", "dense_2/bias"]
    shapes = [(4, 8), (8,), (8, 3), (3,), (3, 1), (1,)]
    assert [p.shape for p in model.params.values()] == shapes
    assert [g.shape for g in model.grads.values()] == shapes
    assert model.n_params == sum(int(np.prod(s)) for s in shapes) == model.flat_params.size
    offset = 0
    for p, g in zip(model.params.values(), model.grads.values()):
        assert p.base is model.flat_params and g.base is model.flat_grads
        assert p.__array_interface__["data"][0] == model.flat_params.ctypes.data + 4 * offset
        assert p.flags.c_contiguous and p.dtype == np.float32
        offset += p.size
    opt = fastopt.Adam(model.params)
    assert opt.backends == {"float32": opt.backends["float32"]}  # one dtype group: one call


def test_glorot_uniform_kernels_zero_biases_and_the_seed_fixes_them():
    model = MLP(300, hidden=(200,), seed=5, dtype="float64")
    kernel = model.params["dense_0/kernel"]
    limit = np.sqrt(6 / (300 + 200))
    assert np.abs(kernel).max() <= limit
    assert kernel.std() == pytest.approx(limit / np.sqrt(3), rel=0.01)  # uniform's std
    assert not model.params["dense_0/bias"].any() and not model.params["dense_1/bias"].any()
    same, other = MLP(300, (200,), seed=5, dtype="float64"), MLP(300, (200,), seed=6,
                                                                   dtype="float64")
    assert np.array_equal(same.flat_params, model.flat_params)
    assert not np.array_equal(other.flat_params, model.flat_params)
    f32 = MLP(300, (200,), seed=5)
    np.testing.assert_array_equal(f32.flat_params, model.flat_params.astype(np.float32))


@pytest.mark.parametrize(("make", "message"), [
    (lambda: MLP(0), "n_features must be >= 1, got 0"),
    (lambda: MLP(4.0), "n_features must be an integer, got 4.0"),
    (lambda: MLP(4, hidden="16"), "hidden must be a sequence of layer sizes, got '16'"),
    (lambda: MLP(4, hidden=(8, 0)), "hidden[1] must be >= 1, got 0"),
    (lambda: MLP(4, activation="softmax"), "activation must be one of 'relu', 'tanh', "
                                           "'sigmoid', got 'softmax'"),
    (lambda: MLP(4, output="relu"), "output must be one of"),
    (lambda: MLP(4, output="softmax"), "a softmax output needs n_outputs >= 2, got 1"),
    (lambda: MLP(4, seed=-1), "seed must be >= 0, got -1"),
    (lambda: MLP(4, seed=None), "seed must be an integer, got None"),
    (lambda: MLP(4, dtype="int32"), "dtype must be float32 or float64, got 'int32'"),
    (lambda: LogisticRegression(4, n_classes=1), "n_classes must be >= 2, got 1"),
])
def test_model_arguments_are_checked(make, message):
    with pytest.raises((TypeError, ValueError)) as e:
        make()
    assert message in str(e.value)


def test_logistic_regression_with_classes_uses_softmax():
    model = LogisticRegression(4, n_classes=3)
    assert (model.output, model.n_outputs, model.n_classes) == ("softmax", 3, 3)
    assert model.get_loss().name == "categorical_crossentropy"
    probs = model.predict(np.ones((2, 4)))
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)


# -- data -----------------------------------------------------------------------------

def test_builtin_data_is_deterministic_balanced_and_not_linearly_trivial(builtin):
    X, y, names = train.load_builtin()
    X2, y2, _ = train.load_builtin()
    assert X.shape == (1400, 4) and names == ["x0", "x1", "x2", "x3"]
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    assert set(np.unique(y)) == {0.0, 1.0} and 0.4 < y.mean() < 0.6
    X_train, y_train, X_test, y_test = builtin
    model = LogisticRegression(4, seed=0)
    hist = fit(model, X_train, y_train, fastopt.Adam(model.params, learning_rate=0.05),
               epochs=15, batch_size=32, verbose=0)
    assert 0.75 < hist.history["accuracy"][-1] < 0.9  # learnable, but no line separates it


def test_csv_loader_reads_header_numeric_columns_and_skips_blank_lines(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a, label ,b\n1,0,2.5\n\n-3e1,1,4\n")
    X, y, names = load_csv(path, "label")
    assert names == ["a", "b"]
    np.testing.assert_array_equal(X, [[1, 2.5], [-30, 4]])
    np.testing.assert_array_equal(y, [0, 1])


@pytest.mark.parametrize(("text", "target", "message"), [
    (None, "y", "no such file"),
    ("", "y", "is empty"),
    ("a,y\n", "y", "has a header but no data rows"),
    ("y\n1\n", "y", "has no feature columns besides the target 'y'"),
    ("a,b\n1,2\n", "y", "has no column 'y'; its columns are a, b"),
    ("a,y\n1,0\n2,x\n", "y", "line 3, column 'y': 'x' is not a number"),
    ("a,y\n1,0\n,1\n", "y", "line 3, column 'a': '' is not a number"),
    ("a,y\n1,0\nnan,1\n", "y", "line 3, column 'a': 'nan' is not a finite number"),
    ("a,y\n1,0\n2\n", "y", "line 3: 1 cells, but the header has 2 columns"),
])
def test_csv_loader_errors_say_what_and_where(tmp_path, text, target, message):
    path = tmp_path / "d.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(train.DataError) as e:
        load_csv(path, target)
    assert message in str(e.value)


def test_banknotes_csv_loads():
    X, y, names = load_csv(banknotes_path(), "class")
    assert X.shape == (1372, 4) and names == ["variace", "skewness", "curtosis", "entropy"]
    assert np.bincount(y.astype(int)).tolist() == [762, 610]


def test_split_is_seeded_disjoint_and_standardisation_uses_training_rows_only():
    X = np.arange(40.0).reshape(20, 2) ** 1.5
    y = np.arange(20.0)
    X_train, X_test, y_train, y_test = train_test_split(X, y, 0.3, seed=1)
    assert len(y_test) == 6 and len(y_train) == 14
    assert sorted(np.concatenate([y_train, y_test])) == list(y)
    again = train_test_split(X, y, 0.3, seed=1)
    assert np.array_equal(again[3], y_test)
    assert not np.array_equal(train_test_split(X, y, 0.3, seed=2)[3], y_test)
    scaler = Standardizer().fit(X_train)
    np.testing.assert_allclose(scaler.mean_, X_train.mean(axis=0))
    Z = scaler.transform(X_train)
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(Z.std(axis=0), 1)
    np.testing.assert_allclose(scaler.transform(X_test), (X_test - scaler.mean_) / scaler.scale_)
    with pytest.raises(ValueError, match="test_size must be a number in"):
        train_test_split(X, y, 1.0)


# -- fit ------------------------------------------------------------------------------

def test_epoch_loss_is_the_batch_size_weighted_mean_of_batch_losses():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((10, 3)), (rng.random(10) < 0.5).astype(float)
    model = LogisticRegression(3, seed=0, dtype="float64")
    opt = fastopt.SGD(model.params, learning_rate=0.0)  # the weights never move
    batches = []
    hist = fit(model, X, y, opt, epochs=1, batch_size=4, shuffle=False, verbose=0,
               callbacks=[_Recorder(batches)])
    assert len(batches) == 3  # 4 + 4 + 2 rows
    whole = train.evaluate(model, X, y)
    # with constant weights the weighted mean of the batch means is the mean over rows
    assert hist.history["loss"][0] == pytest.approx(whole["loss"], rel=1e-14)
    assert hist.history["accuracy"][0] == whole["accuracy"]
    per_batch = [train.evaluate(model, X[i:i + 4], y[i:i + 4])["loss"] for i in (0, 4, 8)]
    assert hist.history["loss"][0] != pytest.approx(np.mean(per_batch), rel=1e-6)


class _Recorder(train.Callback):
    """Records the running logs of every batch."""

    def __init__(self, out):
        self.out = out

    def on_batch_end(self, batch, logs):
        self.out.append(dict(logs))


class _SpyModel(LogisticRegression):
    """Records the inputs of every forward pass."""

    seen = None

    def forward(self, X):
        self.seen.append(np.array(X))
        return super().forward(X)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_the_seed_fixes_batch_order_whatever_the_optimizer(small, name):
    X, y = small[0][:50], small[1][:50]
    model = _SpyModel(4, seed=0)
    model.seen = []
    opt = train.make_optimizer(name, model.params)
    fit(model, X, y, opt, epochs=2, batch_size=16, seed=3, verbose=0)
    for epoch in (0, 1):
        order = train.epoch_order(50, 3, epoch)
        expected = [X[order[i:i + 16]] for i in range(0, 50, 16)]
        got = model.seen[4 * epoch:4 * epoch + 4]
        assert all(np.array_equal(a, b.astype(np.float32)) for a, b in zip(got, expected))
    assert not np.array_equal(train.epoch_order(50, 3, 0), train.epoch_order(50, 3, 1))
    assert not np.array_equal(train.epoch_order(50, 3, 0), train.epoch_order(50, 4, 0))


def test_same_seed_same_history_different_seed_different(small):
    X_train, y_train, X_test, y_test = small

    def run(seed):
        model = MLP(4, hidden=(6,), seed=seed)
        opt = fastopt.Adam(model.params, learning_rate=0.01)
        return fit(model, X_train, y_train, opt, epochs=3, batch_size=16, seed=seed,
                   validation_data=(X_test, y_test), verbose=0).history, model.flat_params

    (h1, p1), (h2, p2), (h3, _) = run(1), run(1), run(2)
    assert h1 == h2 and np.array_equal(p1, p2)
    assert h1 != h3
    assert set(h1) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 and all(isinstance(x, float) for x in v) for v in h1.values())


def _final_losses(X, y, names):
    runs = train.compare(X, y, optimizers=names)  # lr 0.01, batch 16, 5 epochs, logistic
    return {r["optimizer"]: r["history"]["loss"][-1] for r in runs}


def test_adam_and_rmsprop_beat_sgd_on_builtin_data(builtin):
    loss = _final_losses(builtin[0], builtin[1], ["sgd", "adam", "rmsprop"])
    assert loss["adam"] < loss["sgd"] and loss["rmsprop"] < loss["sgd"]


def test_adam_and_rmsprop_beat_sgd_on_banknotes():
    X, y, _ = load_csv(banknotes_path(), "class")
    X_train, y_train, _, _ = _split(X, y)
    loss = _final_losses(X_train, y_train, ["sgd", "adam", "rmsprop"])
    assert loss["adam"] < loss["sgd"] and loss["rmsprop"] < loss["sgd"]


def test_softmax_model_trains_on_one_hot_targets():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 2))
    labels = np.digitize(X[:, 0] + 0.5 * X[:, 1], [-0.5, 0.5])  # three bands
    model = LogisticRegression(2, n_classes=3, seed=0)
    hist = fit(model, X, np.eye(3)[labels], fastopt.Adam(model.params, learning_rate=0.05),
               epochs=10, batch_size=16, verbose=0)
    assert hist.history["accuracy"][-1] > 0.85
    assert hist.history["loss"][-1] < hist.history["loss"][0]


def test_optimizer_over_a_list_or_groups_of_the_params_works_too(small):
    X, y = small[0], small[1]
    a, b, c = (MLP(4, hidden=(3,), seed=0) for _ in range(3))
    fit(a, X, y, fastopt.Adam(a.params), epochs=1, verbose=0)
    fit(b, X, y, fastopt.Adam(list(b.params.values())), epochs=1, verbose=0)
    assert np.array_equal(a.flat_params, b.flat_params)
    kernels = {k: v for k, v in c.params.items() if k.endswith("kernel")}
    biases = [v for k, v in c.params.items() if k.endswith("bias")]
    fit(c, X, y, fastopt.Adam([{"params": kernels}, {"params": biases, "learning_rate": 0.0}]),
        epochs=1, verbose=0)
    assert not any(b.any() for b in biases)  # the frozen group stayed at zero
    assert not np.array_equal(c.params["dense_0/kernel"],
                              MLP(4, hidden=(3,), seed=0).params["dense_0/kernel"])  # trained


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"epochs": 0}, "fit: epochs must be >= 1, got 0"),
    ({"epochs": 2.0}, "fit: epochs must be an integer, got 2.0"),
    ({"batch_size": 0}, "fit: batch_size must be >= 1, got 0"),
    ({"shuffle": 1}, "fit: shuffle must be True or False, got 1"),
    ({"seed": -2}, "fit: seed must be >= 0, got -2"),
    ({"verbose": 3}, "fit: verbose must be 0, 1 or 2, got 3"),
    ({"callbacks": [print]}, "fit: callbacks[0] must be a fastopt.train.Callback"),
    ({"loss": "categorical_crossentropy"}, "loss 'categorical_crossentropy' needs a softmax "
                                           "output layer, but the model's output activation "
                                           "is 'sigmoid'"),
    ({"loss": "hinge"}, "loss must be a Loss or one of"),
    ({"X": np.ones((5, 3))}, "X must have shape (n, 4), got (5, 3)"),
    ({"y": np.ones(7)}, "y must have shape (5, 1) or (5,), got (7,)"),
    ({"validation_data": np.ones(3)}, "validation_data must be a tuple (X_val, y_val)"),
    ({"optimizer": "other"}, "the optimizer must be built on model.params"),
    ({"resume": 3}, "resume must be a path, got 3"),
])
def test_fit_checks_its_arguments_before_touching_anything(kwargs, message):
    model = LogisticRegression(4, seed=0)
    opt = fastopt.Adam(model.params)
    args = {"X": np.ones((5, 4)), "y": np.ones(5), "optimizer": opt, "verbose": 0}
    args.update(kwargs)
    if args["optimizer"] == "other":
        args["optimizer"] = fastopt.Adam(LogisticRegression(4).params)
    before = model.flat_params.copy()
    with pytest.raises((TypeError, ValueError)) as e:
        fit(model, **args)
    assert message in str(e.value)
    assert np.array_equal(model.flat_params, before) and opt.iterations == 0
    assert not model.flat_grads.any()



def _bad(shape, index, value, dtype=np.float64):
    a = np.ones(shape, dtype)
    a[index] = value
    return a


@pytest.mark.parametrize(("model", "kwargs", "error", "message"), [
    ("logistic", {"X": _bad((5, 4), (2, 1), np.nan)}, ValueError,
     "fit: X must hold finite numbers; X[2, 1] is nan"),
    ("logistic", {"X": _bad((5, 4), (0, 3), -np.inf)}, ValueError, "X[0, 3] is -inf"),
    ("logistic", {"X": _bad((5, 4), (4, 0), 1e300)}, ValueError,
     "X[4, 0] is 1e+300, which is inf as float32"),
    ("logistic", {"X": np.ones((5, 4)) * (1 + 2j)}, TypeError,
     "fit: X must hold real numbers, got complex128 values"),
    ("logistic", {"y": np.array([0, 1, 0, 1, 1]) + 0j}, TypeError,
     "fit: y must hold real numbers"),
    ("logistic", {"y": np.array([0.0, 1, np.nan, 1, 0])}, ValueError,
     "fit: y must hold finite numbers; y[2] is nan"),
    ("logistic", {"y": np.array([0.0, 2, 0, 2, 0])}, ValueError,
     "fit: binary_crossentropy needs the labels 0 and 1 (or probabilities between them); "
     "y[1] is 2"),
    ("logistic", {"y": np.array([0.0, 1, -1, 1, 0])}, ValueError, "y[2] is -1"),
    ("softmax", {"y": np.eye(3)[[0, 1, 2, 0, 1]] * 2}, ValueError,
     "fit: categorical_crossentropy needs one-hot rows (or class probabilities summing to 1);"
     " y[0, 0] is 2"),
    ("softmax", {"y": np.eye(3)[[0, 1, 2, 0, 1]] * 0.5}, ValueError,
     "row 0 of y sums to 0.5"),
    ("softmax", {"y": np.array([0, 1, 2, 0, 1])}, ValueError,
     "y has one value per row, but categorical cross-entropy needs one-hot rows of 3 values; "
     "for class indices give np.eye(3)[y]"),
    ("logistic", {"validation_data": (_bad((3, 4), (1, 1), np.inf), np.zeros(3))}, ValueError,
     "fit: validation_data X must hold finite numbers; validation_data X[1, 1] is inf"),
    ("logistic", {"validation_data": (np.ones((3, 4)), np.array([0.0, 3, 1]))}, ValueError,
     "validation_data y[1] is 3"),
])
def test_fit_refuses_data_it_cannot_train_on(model, kwargs, error, message):
    model = (LogisticRegression(4, seed=0) if model == "logistic"
             else LogisticRegression(4, n_classes=3, seed=0))
    opt = fastopt.Adam(model.params)
    y = np.zeros(5) if model.n_outputs == 1 else np.eye(3)[[0, 1, 2, 0, 1]]
    args = {"X": np.ones((5, 4)), "y": y, "optimizer": opt, "verbose": 0, **kwargs}
    before = model.flat_params.copy()
    with pytest.raises(error) as e:
        fit(model, **args)
    assert message in str(e.value)
    assert np.array_equal(model.flat_params, before) and opt.iterations == 0


def test_targets_the_loss_takes_are_accepted():
    # soft labels in [0, 1] for binary cross-entropy, any finite target for MSE
    model = LogisticRegression(2, seed=0)
    fit(model, np.ones((4, 2)), [0.0, 0.1, 0.9, 1.0], fastopt.SGD(model.params), verbose=0)
    model = MLP(2, hidden=(), output="linear", seed=0)
    fit(model, np.ones((4, 2)), [-5.0, 2.0, 0.0, 7.5], fastopt.SGD(model.params), verbose=0)
    model = LogisticRegression(2, n_classes=3, seed=0)
    fit(model, np.ones((2, 2)), [[0.1, 0.8, 0.1], [0, 0, 1]], fastopt.SGD(model.params),
        verbose=0)


def test_evaluate_refuses_what_fit_refuses():
    model = LogisticRegression(2, seed=0)
    with pytest.raises(ValueError, match=r"evaluate: X must hold finite numbers; X\[0, 1\]"):
        train.evaluate(model, [[0.0, np.nan]], [1.0])
    with pytest.raises(ValueError, match="evaluate: binary_crossentropy needs the labels 0"):
        train.evaluate(model, [[0.0, 1.0]], [2.0])


def test_standardisation_does_not_overflow_on_huge_finite_columns():
    X = np.array([[1e308, 1.0], [1.5e308, 2.0], [-1.7e308, 3.0], [1.2e308, 4.0]])
    scaler = Standardizer().fit(X)
    Z = scaler.transform(X)
    assert np.isfinite(Z).all() and np.isfinite(scaler.mean_).all()
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(Z.std(axis=0), 1)
    np.testing.assert_allclose(scaler.mean_[0], np.mean(X[:, 0] / 4) * 4)


def test_standardisation_of_ordinary_data_is_the_plain_formula_bit_for_bit():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 4)) * [2.0, 1e-3, 5.0, 1.0] + [1.0, -3.0, 1e4, 0.0]
    X[:, 3] = 7.0                                    # a constant column: only centred
    T = rng.standard_normal((50, 4)) * 3
    scaler = Standardizer().fit(X)
    std = X.std(axis=0)
    scale = np.where(std > 0, std, 1.0)
    assert np.array_equal(scaler.mean_, X.mean(axis=0)) and np.array_equal(scaler.scale_, scale)
    assert np.array_equal(scaler.transform(T), (T - X.mean(axis=0)) / scale)


def test_standardisation_refuses_what_it_cannot_represent():
    with pytest.raises(ValueError, match=r"Standardizer.fit: X holds values that are not finite"
                                         r" numbers, the first at row 1, column 0: inf"):
        Standardizer().fit([[1.0], [np.inf]])
    scaler = Standardizer().fit([[1.0], [1.0 + 2**-52]])     # std about 1e-16
    with pytest.raises(ValueError, match=r"row 0, column 0: 1e\+300 standardises to a value "
                                         "beyond the float64 range"):
        scaler.transform([[1e300]])
    with pytest.raises(ValueError, match="Standardizer.transform: X holds values that are not"):
        scaler.transform([[np.nan]])


# -- callbacks ------------------------------------------------------------------------

def test_verbose_prints_a_plain_progress_line_per_epoch_to_stderr(small, capsys):
    X, y, Xv, yv = small
    for verbose in (1, 2):
        model = LogisticRegression(4)
        fit(model, X, y, fastopt.SGD(model.params), epochs=2, batch_size=50,
            validation_data=(Xv, yv), verbose=verbose)
        out, err = capsys.readouterr()
        lines = err.splitlines()
        assert out == "" and len(lines) == 2
        assert lines[0].startswith("Epoch 1/2 4/4 [==============================]")
        assert "loss: " in lines[1] and "val_accuracy: " in lines[1]
    model = LogisticRegression(4)
    fit(model, X, y, fastopt.SGD(model.params), epochs=1, verbose=0)
    assert capsys.readouterr() == ("", "")


class _Snapshots(train.Callback):
    """Keeps the parameters at the end of every epoch."""

    def __init__(self):
        self.snapshots = []

    def on_epoch_end(self, epoch, logs):
        self.snapshots.append(self.model.flat_params.copy())


def _drive(stopper, values):
    """Feed ``values`` to ``stopper`` as the monitored figure; returns epochs run."""
    stopper.model = LogisticRegression(2)
    stopper.history = train.History(["loss", "accuracy", "val_loss", "val_accuracy"])
    stopper.on_train_begin()
    for epoch, v in enumerate(values):
        if stopper.on_epoch_end(epoch, {stopper.monitor: v}):
            return epoch + 1
    return len(values)


def test_early_stopping_follows_keras_patience_min_delta_and_mode():
    assert _drive(EarlyStopping(patience=2), [1.0, 0.9, 0.95, 0.92, 0.5]) == 4
    assert _drive(EarlyStopping(patience=0), [1.0, 0.9, 0.95, 0.5]) == 3
    assert _drive(EarlyStopping(patience=1), [1.0, 0.9, 0.95, 0.5]) == 3
    stopper = EarlyStopping(patience=2, min_delta=0.05)
    assert _drive(stopper, [1.0, 0.96, 0.9, 0.88, 0.86, 0.1]) == 5
    assert stopper.best_epoch == 2 and stopper.stopped_epoch == 4 and stopper.best == 0.9
    assert _drive(EarlyStopping("val_accuracy", patience=1), [0.5, 0.6, 0.55, 0.7]) == 3
    assert _drive(EarlyStopping("val_loss", mode="max", patience=1), [0.5, 0.6, 0.55]) == 3


def test_early_stopping_restores_the_best_weights(small):
    X, y, Xv, yv = small
    model = LogisticRegression(4, seed=0)
    snaps = _Snapshots()
    stopper = EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    # validation labels flipped: val_loss gets worse as training fits the training labels
    hist = fit(model, X, y, fastopt.Adam(model.params, learning_rate=0.05), epochs=20,
               batch_size=16, validation_data=(Xv, 1 - yv), callbacks=[snaps, stopper],
               verbose=0)
    val = hist.history["val_loss"]
    assert len(val) == stopper.stopped_epoch + 1 < 20
    assert stopper.best_epoch == int(np.argmin(val))
    assert np.array_equal(model.flat_params, snaps.snapshots[stopper.best_epoch])


def test_early_stopping_rejects_a_figure_the_run_does_not_compute(small):
    model = LogisticRegression(4)
    with pytest.raises(ValueError, match="monitor 'val_loss' is not computed in this run; "
                                         "available: loss, accuracy"):
        fit(model, small[0], small[1], fastopt.SGD(model.params), verbose=0,
            callbacks=[EarlyStopping()])


@pytest.mark.parametrize("name", ["adam", "nesterov", "rmsprop"])
def test_checkpoint_resume_is_bit_identical(small, tmp_path, name):
    X, y, Xv, yv = small
    path = tmp_path / "ckpt.npz"

    def setup(seed=0):
        model = MLP(4, hidden=(5,), seed=seed)
        return model, train.make_optimizer(name, model.params)

    straight, opt_s = setup()
    h_straight = fit(straight, X, y, opt_s, epochs=4, batch_size=16, seed=7,
                     validation_data=(Xv, yv), verbose=0)
    first, opt_f = setup()
    fit(first, X, y, opt_f, epochs=2, batch_size=16, seed=7, validation_data=(Xv, yv),
        callbacks=[Checkpoint(path)], verbose=0)
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temporary files left behind
    resumed, opt_r = setup(seed=99)  # other initial weights: the checkpoint must win
    h_resumed = fit(resumed, X, y, opt_r, epochs=4, batch_size=16, seed=7,
                    validation_data=(Xv, yv), verbose=0, resume=path)
    assert h_resumed.history == h_straight.history
    assert h_resumed.epoch == [0, 1, 2, 3]
    assert np.array_equal(resumed.flat_params, straight.flat_params)
    s, r = opt_s.state_dict(), opt_r.state_dict()
    assert s["iterations"] == r["iterations"] == 4 * 13
    assert all(np.array_equal(s["slots"][k], r["slots"][k]) for k in s["slots"])


def test_checkpoint_is_written_atomically(small, tmp_path, monkeypatch):
    X, y = small[0], small[1]
    path = tmp_path / "ckpt.npz"
    model = LogisticRegression(4)
    opt = fastopt.Adam(model.params)
    fit(model, X, y, opt, epochs=1, callbacks=[Checkpoint(path)], verbose=0)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        fit(model, X, y, opt, epochs=1, callbacks=[Checkpoint(path)], verbose=0)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.npz"]


def test_checkpoint_of_another_model_or_optimizer_changes_nothing(small, tmp_path):
    X, y = small[0], small[1]
    path = tmp_path / "ckpt.npz"
    model = LogisticRegression(4)
    fit(model, X, y, fastopt.Adam(model.params), epochs=1, callbacks=[Checkpoint(path)],
        verbose=0)
    other = MLP(4, hidden=(3,))
    before = other.flat_params.copy()
    with pytest.raises(ValueError, match="is for the model"):
        train.load_checkpoint(path, other, fastopt.Adam(other.params))
    assert np.array_equal(other.flat_params, before)
    same = LogisticRegression(4, seed=3)
    before = same.flat_params.copy()
    with pytest.raises(ValueError, match="the state is for 'Adam', not SGD"):
        train.load_checkpoint(path, same, fastopt.SGD(same.params))
    assert np.array_equal(same.flat_params, before)
    with pytest.raises(ValueError, match="has history keys"):
        fit(same, X, y, fastopt.Adam(same.params), epochs=2, verbose=0, resume=path,
            validation_data=small[2:])


def test_readme_training_example_runs(tmp_path, monkeypatch, capsys):
    # the example lives on the documentation's training page (it left the README)
    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    code = re.search(r"# Training and `fastopt compare`.*?```python\n(.*?)```", text,
                     re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README training example", "exec"), scope)
    history = scope["history"].history
    assert len(history["val_accuracy"]) == 5 and history["val_accuracy"][-1] > 0.75
    assert capsys.readouterr().out.startswith("[")
    epoch, saved = train.load_checkpoint("run.npz", scope["model"], scope["opt"])
    assert epoch == 5 and saved == history
