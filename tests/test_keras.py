"""fastopt.keras: Keras 3 optimizers whose apply() is one fastopt step.

Every test runs the same thing twice, with ``keras.optimizers.X`` and with
``fastopt.keras.X``, and compares: ``model.fit`` on the banknote data with a
hidden layer (float64 and float32), ``apply_gradients`` with every pipeline
option, save / load / resume, callbacks, schedules, LossScaleOptimizer.
Keras's own optimizer test files (shipped in its wheel) run against
fastopt's classes in ``test_keras_suite.py``.
"""
import os
import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
if keras.backend.backend() != "torch":  # pragma: no cover - conftest sets torch
    pytest.skip("fastopt.keras needs KERAS_BACKEND=torch", allow_module_level=True)

import fastopt.keras as fk  # noqa: E402
from fastopt.train.data import load_csv  # noqa: E402
from train_data import banknotes_path  # noqa: E402

#: (class name, constructor arguments): every class and its variants
CASES = [
    ("SGD", {}),
    ("SGD", {"momentum": 0.9}),
    ("SGD", {"momentum": 0.9, "nesterov": True}),
    ("Adagrad", {}),
    ("RMSprop", {}),
    ("RMSprop", {"momentum": 0.5, "centered": True}),
    ("Adam", {}),
    ("Adam", {"amsgrad": True}),
    ("AdamW", {}),
    ("Adamax", {}),
    ("Ftrl", {}),
    ("Ftrl", {"learning_rate_power": -0.3, "l1_regularization_strength": 1e-3,
              "l2_regularization_strength": 1e-3, "l2_shrinkage_regularization_strength": 1e-3,
              "beta": 0.5}),
    ("Lion", {}),
    ("Adadelta", {}),
    ("Adadelta", {"rho": 0.9, "epsilon": 1e-6}),
    ("Lion", {"beta_1": 0.5, "beta_2": 0.9}),
    ("Nadam", {}),
    ("Lamb", {}),
    ("Lamb", {"beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6}),
]
IDS = [name + "".join(f"-{k}" for k in kw) for name, kw in CASES]


def _set_floatx(dtype):
    # Keras fixes its global dtype policy the first time a layer asks for it,
    # and set_floatx alone does not change it afterwards: set both
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)


@pytest.fixture
def floatx():
    """Set Keras's float type (and dtype policy) for one test, and put it back."""
    before = keras.config.floatx()
    yield _set_floatx
    _set_floatx(before)


def _banknotes():
    X, y, _ = load_csv(banknotes_path(), target="class")
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return X, y.reshape(-1, 1)


def _model(seed, dtype):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,), dtype=dtype),
                              keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(1, activation="sigmoid")])
    return model


def _fit(opt, dtype, epochs=1, model=None):
    X, y = _banknotes()
    model = model or _model(0, dtype)
    start = [w.copy() for w in model.get_weights()]
    if getattr(model, "optimizer", None) is None:
        model.compile(optimizer=opt, loss="binary_crossentropy", metrics=["accuracy"])
    history = model.fit(X.astype(dtype), y.astype(dtype), batch_size=16, epochs=epochs,
                        shuffle=False, verbose=0)
    return model, start, history.history


def _displacement_error(start, keras_w, fast_w):
    """max |fast - keras| / max |keras - start| over every weight."""
    moved = max(np.max(np.abs(k - s)) for k, s in zip(keras_w, start))
    return max(np.max(np.abs(f - k)) for f, k in zip(fast_w, keras_w)) / moved


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_fit_float64_matches_keras(name, kw, floatx):
    """model.fit in float64: the weights agree with Keras's to ~1e-9 of how
    far they moved (the per-step scalars are float64 on both sides)."""
    floatx("float64")
    km, start, kh = _fit(getattr(keras.optimizers, name)(learning_rate=0.01, **kw), "float64")
    fm, start2, fh = _fit(getattr(fk, name)(learning_rate=0.01, **kw), "float64")
    for a, b in zip(start, start2):
        np.testing.assert_array_equal(a, b)
    assert _displacement_error(start, km.get_weights(), fm.get_weights()) < 1e-9
    np.testing.assert_allclose(fh["loss"], kh["loss"], rtol=1e-9)
    for a, b in zip(km.optimizer.variables, fm.optimizer.variables):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-7, atol=1e-12)
    assert type(fm.optimizer) is getattr(fk, name)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_fit_float32_matches_keras(name, kw, floatx):
    """model.fit in float32: Keras computes some per-step scalars in float32
    (bias corrections, 1 - wd*lr) where fastopt rounds float64 ones once, so
    the trajectories differ in the last bits, and those differences grow a
    little over an epoch."""
    floatx("float32")
    km, start, kh = _fit(getattr(keras.optimizers, name)(learning_rate=0.01, **kw), "float32")
    fm, _, fh = _fit(getattr(fk, name)(learning_rate=0.01, **kw), "float32")
    assert all(w.dtype == np.float32 for w in fm.get_weights())
    assert _displacement_error(start, km.get_weights(), fm.get_weights()) < 5e-5
    np.testing.assert_allclose(fh["loss"], kh["loss"], rtol=1e-4)


PIPELINE = [
    {"weight_decay": 0.05},
    {"clipnorm": 0.05},
    {"global_clipnorm": 0.05},
    {"clipvalue": 0.01},
    {"loss_scale_factor": 128.0},
    {"use_ema": True, "ema_momentum": 0.9},
    {"use_ema": True, "ema_momentum": 0.8, "ema_overwrite_frequency": 3},
    {"gradient_accumulation_steps": 3},
    {"gradient_accumulation_steps": 2, "use_ema": True, "clipnorm": 0.1,
     "weight_decay": 0.01, "loss_scale_factor": 4.0},
]


def _apply_run(cls, kw, steps=7, dtype="float64", names=("kernel", "bias", "scale")):
    rng = np.random.default_rng(3)
    shapes = [(6, 4), (4,), ()]
    variables = [keras.Variable(rng.standard_normal(s).astype(dtype), name=n)
                 for s, n in zip(shapes, names)]
    opt = cls(learning_rate=0.05, **kw)
    for _ in range(steps):
        grads = [torch.from_numpy(rng.standard_normal(s).astype(dtype)) for s in shapes]
        opt.apply_gradients(zip(grads, variables))
    return ([v.numpy() for v in variables], [np.asarray(v) for v in opt.variables],
            int(opt.iterations))


#: Keras's clipping rounds one number to float32 even for float64 variables:
#: ``ops.maximum(l2norm, clipnorm)`` (and ``ops.minimum`` in the global norm's
#: factor) with a Python float operand returns float32 in Keras 3.15.1, so the
#: clip factor Keras applies differs from the float64 one by up to 2**-24
#: relative; fastopt's is the float64 one.
CLIP_RTOL = 1e-7


@pytest.mark.parametrize("kw", PIPELINE, ids=lambda kw: "-".join(kw))
@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_apply_pipeline_matches_keras(name, kw, floatx):
    """Every step of apply(): loss scale, accumulation, clipping, decay, EMA
    and the counter, against Keras's, in float64 (floatx too: Keras keeps the
    learning rate in a floatx variable and computes 1 - wd * lr with it)."""
    floatx("float64")
    extra = {"momentum": 0.9} if name == "SGD" else {}
    kv, ks, ki = _apply_run(getattr(keras.optimizers, name), {**kw, **extra})
    fv, fs, fi = _apply_run(getattr(fk, name), {**kw, **extra})
    assert fi == ki
    tol = CLIP_RTOL if "clipnorm" in kw or "global_clipnorm" in kw else 1e-12
    for a, b in zip(kv + ks, fv + fs):  # slots: relative to their scale (cancellations)
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * np.max(np.abs(a)))


def test_exclude_from_weight_decay_matches_keras(floatx):
    floatx("float64")
    for how in ({"var_names": ["bias", "sca"]}, {"var_names": ["ker"]}):
        results = []
        for cls in (keras.optimizers.AdamW, fk.AdamW):
            rng = np.random.default_rng(0)
            variables = [keras.Variable(rng.standard_normal((3, 2)), name="kernel"),
                         keras.Variable(rng.standard_normal(2), name="bias")]
            opt = cls(learning_rate=0.1, weight_decay=0.5)
            opt.exclude_from_weight_decay(**how)
            for _ in range(3):
                opt.apply_gradients(zip([torch.ones(3, 2, dtype=torch.float64),
                                         torch.ones(2, dtype=torch.float64)], variables))
            results.append([v.numpy() for v in variables])
        for a, b in zip(*results):
            np.testing.assert_allclose(b, a, rtol=1e-12)


def test_hyperparameters_changed_between_steps_take_effect(floatx):
    """Keras reads its attributes at every apply; so does fastopt.keras."""
    floatx("float64")
    results = []
    for cls in (keras.optimizers.Adam, fk.Adam):
        rng = np.random.default_rng(1)
        v = keras.Variable(rng.standard_normal(5))
        opt = cls(learning_rate=0.1)
        for step in range(6):
            if step == 2:
                opt.learning_rate = 0.01
                opt.beta_1 = 0.5
            if step == 4:
                opt.clipnorm = 0.01
            opt.apply_gradients([(torch.from_numpy(rng.standard_normal(5)), v)])
        results.append(v.numpy())
    np.testing.assert_allclose(results[1], results[0], rtol=CLIP_RTOL)
    assert not np.allclose(results[1], _no_change_run(), rtol=1e-3)


def _no_change_run():
    rng = np.random.default_rng(1)
    v = keras.Variable(rng.standard_normal(5))
    opt = fk.Adam(learning_rate=0.1)
    for _ in range(6):
        opt.apply_gradients([(torch.from_numpy(rng.standard_normal(5)), v)])
    return v.numpy()


def test_schedule_sees_keras_call_counter(floatx):
    """A LearningRateSchedule is called with the call counter, also under
    gradient accumulation (Keras's rule)."""
    floatx("float64")
    results = []
    for cls in (keras.optimizers.SGD, fk.SGD):
        sched = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1,
                                                            decay_rate=0.5)
        v = keras.Variable(np.ones(3))
        opt = cls(learning_rate=sched, gradient_accumulation_steps=2)
        for _ in range(6):
            opt.apply_gradients([(torch.ones(3, dtype=torch.float64), v)])
        results.append(v.numpy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-12)


def test_the_update_is_in_place_on_the_keras_variables():
    """Zero-copy: the variables, the slots and the counter keep their memory."""
    v = keras.Variable(np.ones((4, 3), dtype="float32"))
    opt = fk.Adam(learning_rate=0.1)
    opt.build([v])
    before = [x.value.data_ptr() for x in [v, *opt.variables]]
    engine_params = None
    for _ in range(2):
        opt.apply_gradients([(torch.ones(4, 3), v)])
        core = opt._fastopt_engine_cache.core
        engine_params = engine_params or core.params
        assert core.params is not None
    assert [x.value.data_ptr() for x in [v, *opt.variables]] == before
    assert np.shares_memory(opt._fastopt_engine_cache.params[0], v.numpy()) or \
        opt._fastopt_engine_cache.params[0].ctypes.data == v.value.data_ptr()
    assert int(opt.iterations) == 2


def test_save_load_resume(tmp_path):
    """model.save / keras.saving.load_model restore the class and its state;
    training resumes exactly where an uninterrupted run goes."""
    X, y = _banknotes()
    X, y = X[:320].astype("float32"), y[:320].astype("float32")

    def compiled():
        model = _model(5, "float32")
        model.compile(optimizer=fk.Adam(learning_rate=0.01, clipnorm=1.0, use_ema=True),
                      loss="binary_crossentropy")
        return model

    straight = compiled()
    straight.fit(X, y, batch_size=16, epochs=2, shuffle=False, verbose=0)

    first = compiled()
    first.fit(X, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    # fit() finalises the EMA at the end of each fit call: do the same to the
    # straight run's reference by comparing against a run with two fit calls
    path = tmp_path / "model.keras"
    first.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is fk.Adam
    assert loaded.optimizer.get_config() == first.optimizer.get_config()
    for a, b in zip(first.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    loaded.fit(X, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    first.fit(X, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(first.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(b, a)
    for a, b in zip(first.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    assert int(loaded.optimizer.iterations) == 2 * 20


def test_loss_scale_optimizer_and_callbacks_match_keras():
    X, y = _banknotes()
    X, y = X[:400].astype("float32"), y[:400].astype("float32")
    results = []
    for cls in (keras.optimizers.Adam, fk.Adam):
        model = _model(2, "float32")
        opt = keras.optimizers.LossScaleOptimizer(cls(learning_rate=0.05))
        model.compile(optimizer=opt, loss="binary_crossentropy")
        cb = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0,
                                               min_delta=10.0)
        hist = model.fit(X, y, batch_size=32, epochs=3, shuffle=False, verbose=0,
                         callbacks=[cb])
        results.append((model.get_weights(), hist.history["loss"],
                        float(opt.inner_optimizer.learning_rate)))
    (kw, kl, klr), (fw, fl, flr) = results
    assert flr == klr == pytest.approx(0.05 / 4)  # reduced after epochs 2 and 3
    np.testing.assert_allclose(fl, kl, rtol=1e-4)
    for a, b in zip(kw, fw):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


def test_constraints_applied_after_the_update(floatx):
    floatx("float64")
    results = []
    for cls in (keras.optimizers.SGD, fk.SGD):
        v = keras.Variable(np.full(3, 0.5))
        v.constraint = keras.constraints.NonNeg()
        opt = cls(learning_rate=1.0)
        opt.apply_gradients([(torch.tensor([1.0, -1.0, 0.2], dtype=torch.float64), v)])
        results.append(v.numpy())
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_allclose(results[1], [0.0, 1.5, 0.3], rtol=1e-7)


def test_missing_gradient_skips_the_variable_as_keras_does():
    results = []
    for cls in (keras.optimizers.Adam, fk.Adam):
        a, b = keras.Variable(np.ones(2)), keras.Variable(np.ones(3))
        opt = cls(learning_rate=0.1)
        opt.build([a, b])
        with pytest.warns(UserWarning, match="Gradients do not exist"):
            opt.apply_gradients([(torch.ones(2, dtype=torch.float64), a), (None, b)])
        opt.apply_gradients([(torch.ones(2, dtype=torch.float64), a),
                             (torch.ones(3, dtype=torch.float64), b)])
        results.append([a.numpy(), b.numpy(), *map(np.asarray, opt.variables)])
    for x, y in zip(*results):
        np.testing.assert_allclose(y, x, rtol=1e-12)


# -- what is not supported: clear errors, nothing changed ------------------------------
def test_float16_variable_refused_unchanged():
    v = keras.Variable(np.ones(3), dtype="float16")
    opt = fk.SGD(learning_rate=0.1)
    with pytest.raises(TypeError, match="float16.*float32 and float64"):
        opt.apply_gradients([(torch.ones(3, dtype=torch.float16), v)])
    np.testing.assert_array_equal(v.numpy(), np.ones(3))


def test_stateless_apply_refused():
    v = keras.Variable(np.ones(3))
    opt = fk.Adam()
    opt.build([v])
    with pytest.raises(RuntimeError, match="in place.*stateless"):
        opt.stateless_apply([np.asarray(x) for x in opt.variables], [np.ones(3)], [np.ones(3)])
    with keras.StatelessScope():
        with pytest.raises(RuntimeError, match="StatelessScope"):
            opt.apply([torch.ones(3, dtype=torch.float64)], [v])
    np.testing.assert_array_equal(v.numpy(), np.ones(3))


@pytest.mark.parametrize("backend,why", [("jax", "JAX arrays are immutable"),
                                          ("tensorflow", "do not expose their memory")])
def test_other_backends_get_a_clear_error(monkeypatch, backend, why):
    """Under another Keras backend the classes refuse to be made, saying
    what is supported.  (Keras picks its backend once per process, and
    neither JAX nor TensorFlow is installed here: the backend name Keras
    reports is what the check reads, so that is what is replaced.)"""
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    with pytest.raises(RuntimeError, match=r"only under the torch backend \(KERAS_BACKEND=torch\)"
                       rf".*'{backend}' backend.*{why}.*keras.optimizers.Adam"):
        fk.Adam()


def test_overwrite_with_gradient_variables_as_keras(floatx):
    """Variables marked overwrite_with_gradient (Keras's float8 scales) take
    their gradient as their value; the others get the fused update."""
    floatx("float64")
    results = []
    for cls in (keras.optimizers.Adam, fk.Adam):
        a, b = keras.Variable(np.ones(2)), keras.Variable(np.zeros(3))
        b.overwrite_with_gradient = True
        opt = cls(learning_rate=0.1)
        for step in range(2):
            opt.apply_gradients([(torch.full((2,), 0.5, dtype=torch.float64), a),
                                 (torch.full((3,), step + 2.0, dtype=torch.float64), b)])
        results.append([a.numpy(), b.numpy(), *map(np.asarray, opt.variables)])
    assert len(results[0]) == len(results[1])
    for x, y in zip(*results):
        np.testing.assert_allclose(y, x, rtol=1e-12)
    np.testing.assert_array_equal(results[1][1], [3.0, 3.0, 3.0])


def _snapshot(opt, variables):
    return [np.asarray(v).copy() for v in [*variables, *opt.variables]]


def test_bad_gradients_refused_before_anything_changes():
    a, b = keras.Variable(np.ones(2)), keras.Variable(np.ones(3))
    opt = fk.Adam(learning_rate=0.1, gradient_accumulation_steps=2)
    opt.apply_gradients([(torch.ones(2, dtype=torch.float64), a),
                         (torch.ones(3, dtype=torch.float64), b)])
    before = _snapshot(opt, [a, b])
    with pytest.raises(ValueError, match="gradient of .* has shape \\(4,\\)"):
        opt.apply_gradients([(torch.ones(2, dtype=torch.float64), a),
                             (torch.ones(4, dtype=torch.float64), b)])
    with pytest.raises(ValueError, match="every variable needs a gradient at every call"):
        with pytest.warns(UserWarning):
            opt.apply_gradients([(torch.ones(2, dtype=torch.float64), a), (None, b)])
    for x, y in zip(before, _snapshot(opt, [a, b])):
        np.testing.assert_array_equal(y, x)
    assert int(opt._iterations) == 1


def test_variable_outside_cpu_memory_refused():
    """GPU variables are refused with what is supported (a meta-device
    tensor stands in for a GPU one on this CPU-only test machine)."""
    v = keras.Variable(np.ones(3, dtype="float32"))
    opt = fk.SGD(learning_rate=0.1)
    opt.build([v])
    v._value = torch.nn.Parameter(torch.empty(3, device="meta"))
    with pytest.raises(RuntimeError, match="on meta; fastopt.keras runs on variables in CPU "
                                           "memory.*keras.optimizers.SGD"):
        opt.apply_gradients([(torch.ones(3), v)])
    assert int(opt.iterations) == 0
