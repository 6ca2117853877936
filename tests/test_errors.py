"""Bad input gets a clear error and changes nothing.

Every check runs before any array is touched: after a rejected call every
parameter, every slot and the iteration count are exactly what they were.
The messages name the argument (and the index or key, shapes and dtypes
involved), so each case matches on the message too.
"""
import math

import numpy as np
import pytest

import fastopt
from fastopt import schedules
from fastopt.rule import RULES
from optim_db import DB

BACKENDS = [b for b in ("numpy", "numba") if b in fastopt.available_backends()]

# four tensors of two dtypes, one 0-d: grads #0..#3
SHAPES = [(3, 4), (5,), (), (2, 3)]
DTYPES = [np.float64, np.float32, np.float64, np.float32]

# variants used for the step-time cases: with and without slots, clipping that
# needs the sums of squares before the update, and weight decay
STEP_VARIANTS = [
    ("sgd", fastopt.SGD, {}),
    ("sgd_nesterov_clipnorm", fastopt.SGD, {"momentum": 0.5, "nesterov": True, "clipnorm": 1.0}),
    ("rmsprop_centered_momentum", fastopt.RMSprop,
     {"centered": True, "momentum": 0.5, "global_clipnorm": 1.0}),
    ("adamw_amsgrad", fastopt.AdamW, {"amsgrad": True, "weight_decay": 0.1}),
]


def good_grads(seed=0, shapes=SHAPES, dtypes=DTYPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dt) for s, dt in zip(shapes, dtypes)]


def make_params():
    return good_grads(123)


def snapshot(opt):
    params = opt.params
    params = list(params.values()) if isinstance(params, dict) else (
        [params] if isinstance(params, np.ndarray) else list(params))
    return ([p.copy() for p in params], opt.state_dict()["slots"], opt.iterations)


def assert_unchanged(opt, before):
    params, slots, iterations = snapshot(opt)
    old_params, old_slots, old_iterations = before
    assert iterations == old_iterations
    assert len(params) == len(old_params)
    for a, b in zip(params, old_params):
        assert np.array_equal(a, b, equal_nan=True)
    assert set(slots) == set(old_slots)
    for k in slots:
        assert np.array_equal(slots[k], old_slots[k], equal_nan=True), k


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=STEP_VARIANTS, ids=[v[0] for v in STEP_VARIANTS])
def trained(request, backend):
    """An optimizer over four tensors that has taken two steps (non-zero slots)."""
    _, cls, kw = request.param
    opt = cls(make_params(), learning_rate=0.01, backend=backend, **kw)
    for seed in (1, 2):
        opt.step(good_grads(seed))
    return opt


def expect_step_error(opt, grads, exc, match):
    before = snapshot(opt)
    with pytest.raises(exc, match=match):
        opt.step(grads)
    assert_unchanged(opt, before)
    # and the optimizer still works afterwards
    opt.step(good_grads(9))
    assert opt.iterations == before[2] + 1


# ---------------------------------------------------------------------------
# Construction


def _nc():
    return np.zeros((3, 4))[:, ::2]


def _ro():
    a = np.zeros(3)
    a.flags.writeable = False
    return a


_shared = np.zeros(10)

CONSTRUCTOR_PARAM_CASES = {
    "int": ([np.ones(3), np.arange(3)], TypeError, r"params\[1\] has dtype int64.*float32"),
    "float16": ([np.ones(3, np.float16)], TypeError, r"params\[0\] has dtype float16"),
    "python_list": ([np.ones(3), [1.0, 2.0]], TypeError,
                    r"params\[1\] must be a numpy.ndarray, got list"),
    "object": ([np.array([1.0, None])], TypeError, r"params\[0\] has dtype object"),
    "complex": ([np.ones(2, np.complex128)], TypeError, r"params\[0\] has dtype complex128"),
    "big_endian": ([np.ones(2, ">f8")], TypeError, r"params\[0\] has dtype >f8"),
    "dict_int": ({"w": np.ones(2), "b": np.arange(2)}, TypeError,
                 r"params\['b'\] has dtype int64"),
    "not_a_container": (3.0, TypeError, "params must be an array"),
    "strided": ([np.ones(2), _nc()], ValueError, r"params\[1\] with shape \(3, 2\) is not C-contig"),
    "transposed": ([np.ones((3, 4)).T], ValueError,
                   r"params\[0\] with shape \(4, 3\) is not C-contiguous"),
    "read_only": ([np.ones(2), _ro()], ValueError, r"params\[1\] is read-only"),
    "same_array_twice": ([_shared, np.ones(2), _shared], ValueError,
                         r"params\[0\] and params\[2\] share memory"),
    "overlapping_views": ([_shared[:6], _shared[4:]], ValueError,
                          r"params\[0\] and params\[1\] share memory"),
    "overlapping_dict": ({"a": _shared[2:], "b": _shared[:3]}, ValueError,
                         r"params\['b'\] and params\['a'\] share memory"),
    "empty_list": ([], ValueError, "params is empty"),
    "empty_dict": ({}, ValueError, "params is empty"),
}


@pytest.mark.parametrize("case", sorted(CONSTRUCTOR_PARAM_CASES))
@pytest.mark.parametrize("cls", [fastopt.SGD, fastopt.Adam])
def test_bad_params_are_rejected(cls, case):
    params, exc, match = CONSTRUCTOR_PARAM_CASES[case]
    arrays = (list(params.values()) if isinstance(params, dict) else
              list(params) if isinstance(params, list) else [])
    before = [np.array(a, copy=True) for a in arrays]
    with pytest.raises(exc, match=f"{cls.__name__}: {match}"):
        cls(params)
    for a, b in zip(arrays, before):
        assert np.array_equal(np.asarray(a), b)


def test_disjoint_views_of_one_buffer_are_fine():
    buf = np.zeros(10)
    opt = fastopt.SGD([buf[:5], buf[5:]], learning_rate=1.0)
    opt.step([np.ones(5), 2 * np.ones(5)])
    assert np.array_equal(buf, np.r_[-np.ones(5), -2 * np.ones(5)])


P = [np.ones(4)]
NAN, INF = float("nan"), float("inf")

# (class, kwargs, exception, message): the options every optimizer has, then
# each class's own hyperparameters (tests/optim_db.py, ``error_inputs``)
HYPER_CASES = [
    (fastopt.Adam, {"clipnorm": 1.0, "clipvalue": 1.0}, ValueError,
     "at most one of clipnorm, clipvalue and global_clipnorm.*clipnorm and clipvalue"),
    (fastopt.SGD, {"clipnorm": 1.0, "global_clipnorm": 1.0}, ValueError,
     "clipnorm and global_clipnorm"),
    (fastopt.Adam, {"lr": 0.1}, ValueError, r"'lr' \(did you mean learning_rate\?\)"),
    (fastopt.SGD, {"maximize": 1}, TypeError, "maximize must be True or False"),
    (fastopt.Adam, {"use_ema": "yes"}, TypeError, "use_ema must be True or False"),
    (fastopt.Adam, {"ema_momentum": 1.5}, ValueError, "ema_momentum must be <= 1"),
    (fastopt.Adam, {"ema_overwrite_frequency": 0}, ValueError, "ema_overwrite_frequency must be >= 1"),
    (fastopt.Adam, {"gradient_accumulation_steps": 1}, ValueError,
     "gradient_accumulation_steps must be >= 2"),
    (fastopt.Adam, {"gradient_accumulation_steps": 2.0}, TypeError,
     "gradient_accumulation_steps must be an integer"),
    (fastopt.Adam, {"loss_scale_factor": 0.0}, ValueError, "loss_scale_factor must be > 0"),
    (fastopt.Adam, {"exclude_from_weight_decay": [4]}, ValueError,
     "exclude_from_weight_decay index 4 is out of range for 1 parameters"),
    (fastopt.Adam, {"exclude_from_weight_decay": ["w"]}, ValueError,
     "exclude_from_weight_decay names 'w', which is not a parameter name"),
    (fastopt.Adam, {"exclude_from_weight_decay": 0}, TypeError,
     "exclude_from_weight_decay must be a list"),
    (fastopt.Adam, {"learning_rate": -0.1}, ValueError, "learning_rate must be >= 0"),
    (fastopt.SGD, {"weight_decay": -0.01}, ValueError, "weight_decay must be >= 0"),
    (fastopt.SGD, {"clipnorm": 0}, ValueError, "clipnorm must be > 0"),
    (fastopt.SGD, {"clipvalue": -1.0}, ValueError, "clipvalue must be > 0"),
    (fastopt.SGD, {"global_clipnorm": 0.0}, ValueError, "global_clipnorm must be > 0"),
    (fastopt.SGD, {"learning_rate": NAN}, ValueError, "learning_rate must be finite, got nan"),
    (fastopt.SGD, {"learning_rate": INF}, ValueError, "learning_rate must be finite, got inf"),
    (fastopt.SGD, {"clipvalue": INF}, ValueError, "clipvalue must be finite"),
    (fastopt.SGD, {"learning_rate": "0.1"}, TypeError, "learning_rate must be a real number.*str"),
    (fastopt.Adam, {"backend": "opencl"}, ValueError,
     "backend must be one of.*'numba'.*'cuda'.*got 'opencl'"),
    (fastopt.Adam, {"backend": None}, ValueError, "backend must be one of"),
    (fastopt.SGD, {"convention": "pytorch"}, ValueError,
     "convention must be one of.*'keras'.*'torch'.*'pytorch'"),
] + [(row.cls, kw, exc, match) for row in DB for kw, exc, match in row.error_inputs]


@pytest.mark.parametrize("cls,kw,exc,match", HYPER_CASES,
                         ids=[f"{c.__name__}-{'-'.join(k)}-{i}"
                              for i, (c, k, _, _) in enumerate(HYPER_CASES)])
def test_bad_hyperparameters_are_rejected(cls, kw, exc, match):
    w = np.ones(4)
    with pytest.raises(exc, match=f"{cls.__name__}: .*{match}"):
        cls([w], **kw)
    assert np.array_equal(w, np.ones(4))


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'opencl'.*numpy"):
        fastopt.get_backend("opencl")


@pytest.mark.parametrize("value,exc,match", [
    (-0.5, ValueError, "learning_rate must be >= 0"),
    (NAN, ValueError, "learning_rate must be finite"),
    ("fast", TypeError, "learning_rate must be a real number"),
])
def test_bad_learning_rate_assignment_changes_nothing(value, exc, match):
    opt = fastopt.Adam([np.ones(3)], learning_rate=0.01)
    with pytest.raises(exc, match=match):
        opt.learning_rate = value
    assert opt.learning_rate == 0.01


# ---------------------------------------------------------------------------
# Step time: gradients


def _with(i, value):
    grads = good_grads(5)
    grads[i] = value
    return grads


STEP_CASES = {
    # grads #0 (3,4) f64, #1 (5,) f32, #2 () f64, #3 (2,3) f32
    "float64_grad_for_float32": (lambda: _with(1, np.ones(5)), TypeError,
                                 r"grads\[1\] has dtype float64 but params\[1\] has dtype "
                                 r"float32.*never casts"),
    "float32_grad_for_float64": (lambda: _with(0, np.ones((3, 4), np.float32)), TypeError,
                                 r"grads\[0\] has dtype float32 but params\[0\] has dtype float64"),
    "float16_grad": (lambda: _with(3, np.ones((2, 3), np.float16)), TypeError,
                     r"grads\[3\] has dtype float16"),
    "int_grad": (lambda: _with(1, np.ones(5, np.int32)), TypeError, r"grads\[1\] has dtype int32"),
    "object_grad": (lambda: _with(1, np.ones(5, object)), TypeError, r"grads\[1\] has dtype object"),
    "list_grad": (lambda: _with(1, [1.0] * 5), TypeError,
                  r"grads\[1\] must be a numpy.ndarray or None, got list"),
    "python_float_grad": (lambda: _with(2, 1.0), TypeError,
                          r"grads\[2\] must be a numpy.ndarray or None, got float"),
    "numpy_scalar_grad": (lambda: _with(2, np.float64(1.0)), TypeError,
                          r"grads\[2\] must be a numpy.ndarray or None, got float64"),
    "too_few": (lambda: good_grads(5)[:3], ValueError,
                r"expected 4 gradient\(s\), one per parameter, got 3"),
    "too_many": (lambda: good_grads(5) + [np.ones(2)], ValueError,
                 r"expected 4 gradient\(s\), one per parameter, got 5"),
    "shape": (lambda: _with(3, np.ones((3, 2), np.float32)), ValueError,
              r"grads\[3\] has shape \(3, 2\) but params\[3\] has shape \(2, 3\)"),
    "shape_0d": (lambda: _with(2, np.ones(1)), ValueError,
                 r"grads\[2\] has shape \(1,\) but params\[2\] has shape \(\)"),
    "shape_flattened": (lambda: _with(0, np.ones(12)), ValueError,
                        r"grads\[0\] has shape \(12,\) but params\[0\] has shape \(3, 4\)"),
    "all_none": (lambda: [None] * 4, ValueError, "every gradient is None"),
    "not_a_list": (lambda: np.ones((3, 4)), TypeError, "grads must be a list or tuple of 4"),
    "dict_for_list": (lambda: dict(enumerate(good_grads(5))), TypeError,
                      "grads must be a list or tuple of 4 arrays, got dict"),
    "generator": (lambda: (g for g in good_grads(5)), TypeError,
                  "grads must be a list or tuple of 4 arrays, got generator"),
}


@pytest.mark.parametrize("case", sorted(STEP_CASES))
def test_bad_gradients_are_rejected_and_change_nothing(trained, case):
    make, exc, match = STEP_CASES[case]
    expect_step_error(trained, make(), exc, f"{type(trained).__name__}.step: {match}")


@pytest.mark.parametrize("bad", ["dtype", "shape", "type"])
def test_bad_last_gradient_leaves_earlier_params_untouched(trained, bad):
    """Grad #3 of 4 is bad: grads #0-#2 are fine, yet their params are not
    updated either (everything is validated before the first kernel runs)."""
    grads = good_grads(5)
    grads[3] = {"dtype": np.ones((2, 3), np.float64), "shape": np.ones(6, np.float32),
                "type": [[1.0] * 3] * 2}[bad]
    exc = ValueError if bad == "shape" else TypeError
    expect_step_error(trained, grads, exc, r"grads\[3\]")


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("case", ["missing", "extra", "both", "shape", "list"])
def test_dict_grads_must_match_keys(backend_name, case):
    params = {"w": np.ones((2, 2)), "b": np.zeros(2, np.float32)}
    opt = fastopt.Adam(params, backend=backend_name)
    opt.step({"w": np.ones((2, 2)), "b": np.ones(2, np.float32)})
    grads = {"w": np.ones((2, 2)), "b": np.ones(2, np.float32)}
    if case == "missing":
        del grads["b"]
        exc, match = ValueError, r"keys differ.*missing \['b'\], unexpected \[\]"
    elif case == "extra":
        grads["bias"] = np.ones(2)
        exc, match = ValueError, r"keys differ.*missing \[\], unexpected \['bias'\]"
    elif case == "both":
        grads["W"] = grads.pop("w")
        exc, match = ValueError, r"missing \['w'\], unexpected \['W'\]"
    elif case == "shape":
        grads["b"] = np.ones(3, np.float32)
        exc, match = ValueError, r"grads\['b'\] has shape \(3,\) but params\['b'\] has shape \(2,\)"
    else:
        grads = list(grads.values())
        exc, match = TypeError, "params were given as a dict, so grads must be a dict"
    before = snapshot(opt)
    with pytest.raises(exc, match=match):
        opt.step(grads)
    assert_unchanged(opt, before)


@pytest.mark.parametrize("bad_lr,exc,match", [
    (-1e-3, ValueError, "schedule returned -0.001 at iteration 2; expected a finite value >= 0"),
    (NAN, ValueError, "schedule returned nan at iteration 2"),
    (INF, ValueError, "schedule returned inf at iteration 2"),
    ("0.1", TypeError, "schedule returned '0.1' at iteration 2; expected a float"),
    (True, TypeError, "schedule returned True at iteration 2; expected a float"),
    (None, TypeError, "schedule returned None at iteration 2; expected a float"),
])
def test_schedule_returning_a_bad_value_changes_nothing(backend, bad_lr, exc, match):
    opt = fastopt.Adam(make_params(), backend=backend,
                       learning_rate=lambda t: 0.01 if t < 2 else bad_lr)
    for seed in (1, 2):
        opt.step(good_grads(seed))
    expect_step_error_once(opt, good_grads(3), exc, match)


def expect_step_error_once(opt, grads, exc, match):
    before = snapshot(opt)
    with pytest.raises(exc, match=match):
        opt.step(grads)
    assert_unchanged(opt, before)


def test_schedule_that_grows_negative_changes_nothing(backend):
    # a custom schedule that goes negative at its third step (0.007, 0.002,
    # -0.0005): its value is checked at the step that would use it
    base = schedules.ExponentialDecay(0.01, decay_steps=1, decay_rate=0.5)
    opt = fastopt.SGD(make_params(), backend=backend, momentum=0.5,
                      learning_rate=lambda t: base(t) - 0.003)
    opt.step(good_grads(1))  # 0.007
    opt.step(good_grads(2))  # 0.002
    expect_step_error_once(opt, good_grads(3), ValueError,
                           r"SGD: the learning-rate schedule returned -0\.000(5|49999)\d* at iteration 2")


# ---------------------------------------------------------------------------
# Step time: what is accepted


@pytest.mark.parametrize("row", DB, ids=str)
def test_non_contiguous_gradients_are_copied_and_give_the_same_result(backend, row):
    rng = np.random.default_rng(0)
    big = [rng.standard_normal((3, 8)), rng.standard_normal((4, 5)).astype(np.float32),
           rng.standard_normal(10)]
    views = [big[0][:, ::2], big[1].T, big[2][::-2]]        # strided, transposed, reversed
    assert not any(v.flags.c_contiguous for v in views)
    copies = [np.ascontiguousarray(v) for v in views]
    shapes = [v.shape for v in views]
    p1 = [np.ones(s, v.dtype) for s, v in zip(shapes, views)]
    p2 = [p.copy() for p in p1]
    o1 = row.make(p1, backend=backend)
    o2 = row.make(p2, backend=backend)
    for _ in range(2):
        o1.step(views)
        o2.step(copies)
    for a, b in zip(p1, p2):
        assert np.array_equal(a, b)
        assert not np.array_equal(a, np.ones_like(a))
    s1, s2 = o1.state_dict()["slots"], o2.state_dict()["slots"]
    assert all(np.array_equal(s1[k], s2[k]) for k in s1)
    # the views themselves were not written to
    assert all(np.array_equal(v, c) for v, c in zip(views, copies))


@pytest.mark.parametrize("row", DB, ids=str)
def test_none_gradient_skips_its_parameter(backend, row):
    opt = row.make(make_params(), backend=backend)
    opt.step(good_grads(1))
    params_before, slots_before, it = snapshot(opt)
    grads = good_grads(2)
    grads[1] = None
    opt.step(grads)
    params_after, slots_after, it_after = snapshot(opt)
    assert it_after == it + 1
    assert np.array_equal(params_after[1], params_before[1])
    for k in slots_before:
        if k.endswith("/1"):
            assert np.array_equal(slots_after[k], slots_before[k]), k
    for i in (0, 2, 3):
        assert not np.array_equal(params_after[i], params_before[i]), i
    # the others got exactly what a run without the skipped tensor gives
    others = [make_params()[i] for i in (0, 2, 3)]
    ref = row.make(others, backend=backend)
    ref.step([good_grads(1)[i] for i in (0, 2, 3)])
    ref.step([good_grads(2)[i] for i in (0, 2, 3)])
    for j, i in enumerate((0, 2, 3)):
        assert np.array_equal(params_after[i], others[j])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("row", DB, ids=str)
def test_non_finite_gradients_propagate_into_params(backend, row, bad):
    """NaN and Inf in a gradient are not checked for and do not raise: as in
    Keras, they propagate into the parameter (and its slots) element by
    element.  Checking every element would cost a pass over memory per step;
    users who want a guard check the loss or the gradients themselves.  The
    other elements are updated exactly as if the bad entry were zero."""
    shapes, dtypes = [(4, 3), (5,)], [np.float32, np.float64]
    grads = good_grads(1, shapes, dtypes)
    clean = [g.copy() for g in grads]
    grads[0][1, 2] = bad
    clean[0][1, 2] = 0.0
    p = good_grads(7, shapes, dtypes)
    q = [a.copy() for a in p]
    opt = row.make(p, backend=backend)
    ref = row.make(q, backend=backend)
    opt.step(grads)  # no exception
    ref.step(clean)
    assert opt.iterations == 1
    if row.sign_only:  # torch's sign: NaN as 0, +-inf as any gradient of its sign
        moved = 0.0 if bad != bad else -np.sign(bad) * row.learning_rate  # the first step
        assert p[0][1, 2] == q[0][1, 2] + np.float32(moved)
        p[0][1, 2] = q[0][1, 2]
        assert all(np.array_equal(a, b) for a, b in zip(p, q))
        return
    if row.bounded_update and bad == bad:  # Lion: w moves by lr * sign(inf) = lr
        assert np.isfinite(p[0][1, 2]) and p[0][1, 2] != q[0][1, 2]
        slots = opt.state_dict()["slots"]
        assert any(not np.isfinite(slots[f"{s}/0"][1, 2]) for s in RULES[opt.rule].slots)
    else:
        assert not np.isfinite(p[0][1, 2])
    if bad != bad:  # NaN stays NaN
        assert np.isnan(p[0][1, 2])
    mask = np.ones(p[0].shape, bool)
    mask[1, 2] = False
    assert np.all(np.isfinite(p[0][mask]))
    if row.tensor_wise:  # the tensor's ratio falls back to 1: its other elements move too
        assert not np.array_equal(p[0][mask], q[0][mask])
    else:
        assert np.array_equal(p[0][mask], q[0][mask])
    assert np.array_equal(p[1], q[1])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_non_finite_gradient_with_clipnorm_spreads_over_its_tensor(backend):
    """With clipnorm the norm of a tensor with a NaN is NaN, so the whole
    tensor becomes NaN (Keras behaviour); the other tensor is unaffected."""
    p = [np.ones(4), np.ones(3)]
    opt = fastopt.SGD(p, learning_rate=0.1, clipnorm=1.0, backend=backend)
    opt.step([np.array([0.0, 1.0, np.nan, 0.0]), np.ones(3)])
    assert np.all(np.isnan(p[0]))
    assert np.all(np.isfinite(p[1])) and not np.array_equal(p[1], np.ones(3))


# ---------------------------------------------------------------------------
# The public single-tensor kernels


def kernel_arrays(dtype=np.float64, n=6):
    """param, grad, m, v (v >= 0, as a velocity is)."""
    rng = np.random.default_rng(0)
    a = [rng.standard_normal(n).astype(dtype) for _ in range(4)]
    a[3] = np.abs(a[3])
    return a


KERNEL_CASES = {
    "grad_dtype": (lambda a: (a[0], a[1].astype(np.float32), a[2], a[3]), TypeError,
                   "adam: grad has dtype float32 but param has float64"),
    "slot_dtype": (lambda a: (a[0], a[1], a[2], a[3].astype(np.float32)), TypeError,
                   "adam: velocity has dtype float32 but param has float64"),
    "int": (lambda a: tuple(x.astype(np.int64) for x in a), TypeError,
            "adam: param has dtype int64; kernels take float32 or float64"),
    "two_d": (lambda a: tuple(x.reshape(2, 3) for x in a), ValueError,
              r"adam: param must be a contiguous 1-D array, got shape \(2, 3\)"),
    "strided": (lambda a: (a[0], a[1], np.zeros(12)[::2], a[3]), ValueError,
                r"adam: momentum must be a contiguous 1-D array.*contiguous=False"),
    "length": (lambda a: (a[0], a[1][:5], a[2], a[3]), ValueError,
               r"adam: grad has shape \(5,\) but param has \(6,\)"),
    "slot_length": (lambda a: (a[0], a[1], a[2], np.zeros(7)), ValueError,
                    r"adam: velocity has shape \(7,\) but param has \(6,\)"),
    "read_only_slot": (lambda a: (a[0], a[1], a[2], _readonly(a[3])), ValueError,
                       "adam: velocity is read-only"),
    "read_only_param": (lambda a: (_readonly(a[0]), a[1], a[2], a[3]), ValueError,
                        "adam: param is read-only"),
    "list": (lambda a: (a[0], list(a[1]), a[2], a[3]), TypeError,
             "adam: grad must be a numpy.ndarray, got list"),
}


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("case", sorted(KERNEL_CASES))
def test_kernel_errors_leave_arrays_unchanged(backend, case):
    adam = fastopt.get_backend(backend).adam
    build, exc, match = KERNEL_CASES[case]
    arrays = build(kernel_arrays())
    before = [np.array(x, copy=True) for x in arrays]
    with pytest.raises(exc, match=match):
        adam(*arrays, 0.01, 0.9, 0.999, 1e-7)
    for x, b in zip(arrays, before):
        assert np.array_equal(np.asarray(x), b)


def test_kernel_argument_count(backend):
    adam = fastopt.get_backend(backend).adam
    a = kernel_arrays()
    with pytest.raises(TypeError, match=r"adam\(\) takes 8 positional arguments.*got 7"):
        adam(*a[:3], 0.01, 0.9, 0.999, 1e-7)
    assert all(np.array_equal(x, y) for x, y in zip(a, kernel_arrays()))


def test_kernel_accepts_good_input_and_updates_in_place(backend):
    """Counterpart of the error cases: the same call with good arrays works."""
    a = kernel_arrays(np.float32)
    before = [x.copy() for x in a]
    fastopt.get_backend(backend).adam(*a, 0.01, 0.9, 0.999, 1e-7)
    assert not np.array_equal(a[0], before[0])
    assert np.array_equal(a[1], before[1])  # the gradient is read only
    assert math.isfinite(float(a[0].sum()))
