"""The cuda backend, on Numba's CUDA simulator in CI or on a GPU.

``tests/conftest.py`` sets ``NUMBA_ENABLE_CUDASIM=1`` unless the environment
says otherwise, so ``NUMBA_ENABLE_CUDASIM=0 python -m pytest tests/test_cuda.py``
runs the same tests on a GPU.  The simulator runs every CUDA thread as a
Python thread, so arrays stay small here (at most a few hundred elements) and
the launch geometry is made small too (``geometry`` below): chunks of 64
elements, at most 3 blocks per launch and, on the simulator, 4 threads per
block, so every tensor above 64 elements spans several chunks and several
chunks share a block (the grid-stride loops run).

What is compared, and how closely:

* **kernels**: every rule of ``fastopt.rule.RULES`` x float32/float64
  against its float64 reference, step by step, with the bound of
  ``tests/test_kernels.py`` (``assert_close``), and a 40-step float64
  trajectory within ``1e-12`` of it; the step kernels are generated from the
  rules' element functions, so a rule that uses every call of the element
  language (``test_cuda_ptx.EVERY_CALL``) is also run against the Numba CPU
  loop generated from it, NaN, infinities and zeros included;
* **optimizers**: every optimizer and variant (``tests/optim_db.py``) under
  both conventions, with clipping, weight decay, parameter groups, ``None``
  gradients, EMA, accumulation and loss scaling, over tensors of mixed shapes (including 0-d
  and empty) and dtypes, against the same optimizer on the numba backend fed
  the same gradients.  On the simulator the element formulas run in NumPy
  scalars of the tensor's dtype, the same IEEE operations in the same order
  as the Numba loops, so the results must be **bit-identical**, except that
  norm clipping sums squares in another order (the clip factors agree to
  float64 rounding; bound below).  On a GPU, NVVM fuses multiply-adds, so
  there the bound is that of ``tests/test_optimizers.py``: ``1e-10`` (float64)
  or ``2e-4`` (float32) of the largest displacement, plus 8 ulps;
* **golden trajectories** recorded from PyTorch and Keras
  (``tests/test_golden.py``'s replay), with their own tolerances.
"""
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt.rule import RULES

from cases import gradient
from cuda_helpers import SIMULATOR, Foreign, cb, cuda, dev, host, needs_cuda, step_launches
from test_cuda_ptx import EVERY_CALL
from test_golden import NAMES as GOLDEN_NAMES, load, replay
from optim_db import DB, TENSOR_DB, scalars_at, step_inputs, with_conventions
from test_kernels import assert_close, initial_state, kappa

pytestmark = needs_cuda

DTYPES = [np.float32, np.float64]
SHAPES = [(3, 4), (130,), (), (2, 1, 3), (0,), (5,)]
ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture(autouse=True)
def geometry(monkeypatch):
    monkeypatch.setattr(cb, "CHUNK", 64)
    monkeypatch.setattr(cb, "MAX_BLOCKS", 3)
    if SIMULATOR:
        monkeypatch.setattr(cb, "THREADS_PER_BLOCK", 4)
        # The simulator's block manager polls its Python threads while holding
        # the GIL; a short switch interval hands the GIL over at once (each
        # syncthreads otherwise waits up to 5 ms per thread).
        interval = sys.getswitchinterval()
        sys.setswitchinterval(5e-6)
        yield
        sys.setswitchinterval(interval)
    else:
        yield


# ---------------------------------------------------------------------------
# Public kernels against the reference

@pytest.mark.parametrize("size", [1, 63, 130])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("rule_name", list(RULES))
def test_kernel_matches_reference_every_step(rule_name, dtype, size):
    rule = RULES[rule_name]
    kernel = getattr(cb, rule_name)
    ref_kernel = getattr(fastopt.get_backend("numpy"), rule_name)
    rng = np.random.default_rng([size, len(rule_name), np.dtype(dtype).itemsize])
    param, slots = initial_state(rng, rule, size, dtype)
    d_param, d_slots = dev(param), [dev(s) for s in slots]
    for step in range(6):
        scalars, g, extras = step_inputs(rng, rule, size, dtype, step)
        old = [host(d_param)] + [host(s) for s in d_slots]
        ref = [a.copy() for a in old]
        ref_kernel(ref[0], g, *ref[1:], *scalars, **extras)
        kernel(d_param, dev(g), *d_slots, *scalars, **extras)
        k = kappa(rule_name, ref)
        for name, d, r, o in zip(("param",) + rule.slots, [d_param] + d_slots, ref, old):
            assert_close(f"cuda.{rule_name} step {step} {name}", host(d), r, o, dtype,
                         k if name == "param" else 1.0)
        if dtype == np.float32:  # the same inputs for both on the next step
            for d, r in zip([d_param] + d_slots, ref):
                d.copy_to_device(r)


@pytest.mark.parametrize("rule_name", list(RULES))
def test_float64_trajectory_matches_reference(rule_name):
    """40 steps with no resynchronisation: float64 agrees to rounding."""
    rule = RULES[rule_name]
    kernel = getattr(cb, rule_name)
    ref_kernel = getattr(fastopt.get_backend("numpy"), rule_name)
    rng = np.random.default_rng(7)
    param, slots = initial_state(rng, rule, 130, np.float64)
    p0 = param.copy()
    d_param, d_slots = dev(param), [dev(s) for s in slots]
    for step in range(40):
        g = gradient(rng, (130,), np.float64, step % 10)
        kernel(d_param, dev(g), *d_slots, *scalars_at(rule, step))
        ref_kernel(param, g, *slots, *scalars_at(rule, step))
    displacement = np.max(np.abs(param - p0))
    assert displacement > 1e-3
    np.testing.assert_allclose(host(d_param), param, rtol=1e-12, atol=1e-12 * displacement)


SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.5, -3e-3, 1e30]


def test_helpers_follow_numpy_nan_semantics():
    """The element language's max/min are np.maximum/np.minimum (a NaN wins,
    a tie gives the first argument); sign is -1, 1, or the argument itself
    (zeros and NaN), as Numba's np.sign."""
    k = cb._k
    for dt in (np.float32, np.float64):
        for a in map(dt, SPECIAL):
            for b in map(dt, SPECIAL):
                for got, want in ((k._fmax(a, b), np.maximum(a, b)),
                                  (k._fmin(a, b), np.minimum(a, b))):
                    assert np.array_equal(got, want, equal_nan=True), (a, b, got, want)
                    if a == b:  # a tie (0 and -0 too): the first argument
                        assert np.signbit(got) == np.signbit(a), (a, b)
            s = k._sign(a)
            assert np.array_equal(s, a if a == 0 or a != a else np.sign(a), equal_nan=True)
            assert a != 0 or np.signbit(s) == np.signbit(a)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator's NumPy scalars warn
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_every_call_of_the_element_language_matches_the_numba_loop(dtype):
    """A rule that uses every call, literal and branch of the element language
    (test_cuda_ptx.EVERY_CALL), generated for both backends: the CUDA kernel
    gives the Numba CPU loop's results, for every pair of special gradient and
    state values (NaN, infinities, signed zeros ...), with and without the
    gradient transform and weight decay."""
    from fastopt.backends import numba_backend
    loop = numba_backend.compiled(EVERY_CALL).loop
    g = np.array([a for a in SPECIAL for _ in SPECIAL], dtype)
    state = np.array([b for _ in SPECIAL for b in SPECIAL], dtype)
    param = np.random.default_rng(3).standard_normal(g.size).astype(dtype) * 2
    cpu = [param.copy(), state.copy()]
    d_param, d_state = dev(param), dev(state)
    plan = cb.Plan(EVERY_CALL, [d_param], [[d_state]])
    for scalars, clipvalue, pt in [((0.1, 1.5), math.inf, (1.0, 1.0, 0.0)),
                                   ((0.3, 0.5), 2.0, (0.7, 0.999, 0.01))]:
        hp = np.array(EVERY_CALL.pack(scalars, clipvalue))
        loop(cpu[0], g, cpu[1], hp, *pt)
        plan.step([dev(g)], np.array(pt, dtype=np.float64).reshape(3, 1), scalars, clipvalue)
        for name, got, want in (("param", host(d_param), cpu[0]),
                                ("state", host(d_state), cpu[1])):
            assert np.array_equal(np.isnan(got), np.isnan(want)), name
            if SIMULATOR:  # the same NumPy operations: the same bits
                assert np.array_equal(got, want, equal_nan=True), (name, got, want)
                ok = np.isnan(want) | (np.signbit(got) == np.signbit(want))
                assert ok.all(), (name, got[~ok], want[~ok])
            else:
                np.testing.assert_allclose(got, want, rtol=64 * np.finfo(dtype).eps)
    # the specials reach the end, and most elements stay finite
    assert np.isnan(cpu[1]).any() and np.isfinite(cpu[0]).mean() > 0.25


def test_kernels_take_foreign_device_arrays_without_copies():
    """Objects that only export __cuda_array_interface__ (CuPy, PyTorch) are
    updated in place, through a view of their memory."""
    p, g, m, v = (np.linspace(-1, 1, 9, dtype=np.float32) for _ in range(4))
    m[:] = 0
    v[:] = 0
    d = [dev(a) for a in (p, g, m, v)]
    cb.adam(*[Foreign(x) for x in d], 0.1, 0.9, 0.999, 1e-7)
    ref = [p.copy(), m.copy(), v.copy()]
    fastopt.get_backend("numba").adam(ref[0], g, ref[1], ref[2], 0.1, 0.9, 0.999, 1e-7)
    for x, r in zip((d[0], d[2], d[3]), ref):
        assert np.array_equal(host(x), r) if SIMULATOR else np.allclose(host(x), r, rtol=1e-6)
    assert not np.array_equal(host(d[0]), p)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator's NumPy scalars warn
@pytest.mark.parametrize("rule_name", list(RULES))
def test_nan_and_inf_land_where_the_reference_puts_them(rule_name):
    # as tests/test_kernels.py for the CPU backends: NaN and +-inf gradients,
    # and the NaN they make later (inf - inf, a max of a NaN), in the same
    # elements as in the reference; float32 (the GPU's usual type)
    rule = RULES[rule_name]
    kernel = getattr(cb, rule_name)
    ref_kernel = getattr(fastopt.get_backend("numpy"), rule_name)
    rng = np.random.default_rng(len(rule_name))
    n = 12
    param, slots = initial_state(rng, rule, n, np.float32)
    d_param, d_slots = dev(param), [dev(s) for s in slots]
    special = np.array([np.nan, np.inf, -np.inf, 0.0, np.nan, np.inf], np.float32)
    for step in range(3):
        g = rng.standard_normal(n).astype(np.float32)
        g[::2] = np.roll(special, step)
        old = [host(d_param)] + [host(s) for s in d_slots]
        ref = [a.copy() for a in old]
        ref_kernel(ref[0], g, *ref[1:], *scalars_at(rule, step))
        kernel(d_param, dev(g), *d_slots, *scalars_at(rule, step))
        for name, d, r in zip(("param",) + rule.slots, [d_param] + d_slots, ref):
            f = host(d)
            for test in (np.isnan, np.isposinf, np.isneginf):
                np.testing.assert_array_equal(test(f), test(r), err_msg=f"{rule_name} {name}")
        for d, r in zip([d_param] + d_slots, ref):
            d.copy_to_device(r)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator's NumPy scalars warn
def test_nan_and_inf_gradients_propagate():
    p, m, v = dev(np.ones(4)), dev(np.zeros(4)), dev(np.zeros(4))
    cb.adam(p, dev(np.array([np.nan, np.inf, -np.inf, 1.0])), m, v, 0.1, 0.9, 0.999, 1e-7)
    p, m = host(p), host(m)
    assert np.isnan(p[:3]).all() and np.isfinite(p[3])
    assert np.isnan(m[0]) and math.isinf(m[1])


def test_public_kernels_reject_bad_arrays_and_change_nothing():
    p = dev(np.ones(8, np.float32))
    g = dev(np.ones(8, np.float32))
    m, v = dev(np.zeros(8, np.float32)), dev(np.zeros(8, np.float32))
    cases = [
        ((np.ones(8, np.float32), g, m, v), TypeError,
         "adam: param must be a CUDA device array.*got ndarray"),
        ((p, dev(np.ones(8)), m, v), TypeError, "grad has dtype float64 but param has float32"),
        ((p, g, m, dev(np.zeros(7, np.float32))), ValueError,
         r"velocity has shape \(7,\) but param has \(8,\)"),
        ((p, g, dev(np.zeros((2, 4), np.float32)), v), ValueError,
         r"momentum must be a contiguous 1-D array, got shape \(2, 4\)"),
        ((p, g, Foreign(m, readonly=True), v), ValueError, "momentum is read-only"),
        ((p, g, dev(np.zeros(8, np.float16)), v), TypeError, "dtype float16"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            cb.adam(*args, 0.1, 0.9, 0.999, 1e-7)
    assert (host(p) == 1).all() and (host(m) == 0).all() and (host(v) == 0).all()


# ---------------------------------------------------------------------------
# Optimizers against the numba backend

def mixed_params(rng, dtype):
    dtypes = [dtype] * len(SHAPES) if dtype is not None else \
        [np.float32, np.float64, np.float64, np.float32, np.float64, np.float32]
    return [rng.standard_normal(s).astype(dt) for s, dt in zip(SHAPES, dtypes)]


def run_twins(cls, kwargs, dtype, steps=8, groups=None, none_at=None, seed=0):
    """The same optimizer on the cuda and the numba backend, fed the same
    gradients; returns both and the initial parameters."""
    rng = np.random.default_rng(seed)
    params = mixed_params(rng, dtype)
    p0 = [p.astype(np.float64) for p in params]
    cpu = [p.copy() for p in params]
    gpu = [dev(p) for p in params]

    def structure(ps):
        return ps if groups is None else [{**g, "params": [ps[i] for i in g["params"]]}
                                          for g in groups]

    def shape_grads(gs):
        return gs if groups is None else [[gs[i] for i in g["params"]] for g in groups]

    opt_cpu = cls(structure(cpu), backend="numba", **kwargs)
    opt_gpu = cls(structure(gpu), **kwargs)  # auto: device arrays pick cuda
    assert set(opt_gpu.backends.values()) == {"cuda"}
    for step in range(steps):
        grads = [gradient(rng, p.shape, p.dtype, step % 10) for p in params]
        if none_at is not None and step % 3 == 1:
            grads[none_at] = None
        opt_cpu.step(shape_grads(grads))
        opt_gpu.step(shape_grads([None if g is None else dev(g) for g in grads]))
    return opt_cpu, opt_gpu, cpu, gpu, p0


def assert_twins(opt_cpu, opt_gpu, cpu, gpu, p0, exact):
    disp = max(float(np.max(np.abs(c - p), initial=0.0)) for c, p in zip(cpu, p0))
    assert disp > 1e-4, "the trajectory did not move"
    got = [host(d) for d in gpu]
    for i, (g, c) in enumerate(zip(got, cpu)):
        assert g.dtype == c.dtype and g.shape == c.shape
        if exact:
            assert np.array_equal(g, c, equal_nan=True), f"param {i}: {g} != {c}"
        else:
            ulp = np.spacing(np.abs(c)).astype(np.float64)
            rel = 1e-10 if c.dtype == np.float64 else 2e-4
            err = np.abs(g.astype(np.float64) - c)
            assert np.all(err <= rel * disp + 8 * ulp), (
                f"param {i}: max error {err.max():.3g}, displacement {disp:.3g}")
    slots_cpu, slots_gpu = opt_cpu.state_dict()["slots"], opt_gpu.state_dict()["slots"]
    assert slots_cpu.keys() == slots_gpu.keys()
    for key, c in slots_cpu.items():
        g = slots_gpu[key]
        assert isinstance(g, np.ndarray) and g.dtype == c.dtype and g.shape == c.shape
        if exact:
            assert np.array_equal(g, c, equal_nan=True), key
        else:
            scale = float(np.max(np.abs(c), initial=0.0)) + 1e-30
            rel = 1e-10 if c.dtype == np.float64 else 2e-4
            assert np.max(np.abs(g - c), initial=0.0) <= rel * scale, key
    assert opt_cpu.iterations == opt_gpu.iterations


@pytest.mark.parametrize("dtype", DTYPES + [None], ids=["f32", "f64", "mixed"])
@pytest.mark.parametrize("row,convention", with_conventions())
def test_optimizer_matches_numba_backend(row, convention, dtype):
    if convention not in row.conventions:
        pytest.skip(f"{row.id} has no {convention} convention")
    kwargs = {"learning_rate": row.learning_rate, **row.kwargs, "convention": convention}
    twins = run_twins(row.cls, kwargs, dtype)
    # a two_phase rule's per-tensor sums are added in another order on the device
    assert_twins(*twins, exact=SIMULATOR and not row.tensor_wise)
    assert twins[1].rule == row.rules[convention]
    expected = RULES[twins[1].rule]
    assert expected.convention == convention or expected.name == "sgd"


FEATURES = {
    "clipvalue": (fastopt.SGD, dict(learning_rate=0.05, momentum=0.3, clipvalue=0.1)),
    "clipnorm": (fastopt.Adam, dict(learning_rate=0.01, clipnorm=0.5)),
    "global_clipnorm": (fastopt.RMSprop, dict(learning_rate=0.01, global_clipnorm=0.5)),
    "global_clipnorm_torch": (fastopt.Adam, dict(learning_rate=0.01, global_clipnorm=0.5,
                                                 convention="torch")),
    "weight_decay": (fastopt.SGD, dict(learning_rate=0.05, momentum=0.5, weight_decay=0.1)),
    "l2_torch": (fastopt.Adagrad, dict(learning_rate=0.05, weight_decay=0.1,
                                       lr_decay=0.01, convention="torch")),
    "exclude_and_maximize": (fastopt.AdamW, dict(learning_rate=0.01, weight_decay=0.1,
                                                 exclude_from_weight_decay=[1],
                                                 maximize=True)),
    "ema": (fastopt.Adam, dict(learning_rate=0.01, use_ema=True, ema_momentum=0.9,
                               ema_overwrite_frequency=3)),
    "accumulation_loss_scale": (fastopt.SGD, dict(learning_rate=0.05, momentum=0.5,
                                                  gradient_accumulation_steps=2,
                                                  loss_scale_factor=8.0)),
    "schedule": (fastopt.Adam, dict(learning_rate=fastopt.schedules.ExponentialDecay(
        0.05, 3, 0.5))),
}


@pytest.mark.parametrize("dtype", DTYPES + [None], ids=["f32", "f64", "mixed"])
@pytest.mark.parametrize("feature", list(FEATURES))
def test_features_match_numba_backend(feature, dtype):
    cls, kwargs = FEATURES[feature]
    twins = run_twins(cls, kwargs, dtype)
    # norm clipping sums squares in another order on the device
    assert_twins(*twins, exact=SIMULATOR and "clipnorm" not in feature)
    if "ema" in feature:
        ema_cpu, ema_gpu = twins[0].ema_params, twins[1].ema_params
        for c, g in zip(ema_cpu, ema_gpu):
            assert cuda.is_cuda_array(g) if not SIMULATOR else hasattr(g, "copy_to_host")
            np.testing.assert_allclose(host(g), c, rtol=0 if SIMULATOR else 1e-6)
        twins[0].finalize_variable_values()
        twins[1].finalize_variable_values()
        assert_twins(*twins, exact=SIMULATOR)


def test_param_groups_and_none_gradients_match_numba_backend():
    groups = [{"params": [0, 1, 5]},
              {"params": [2, 3, 4], "learning_rate": 0.05, "momentum": 0.0,
               "weight_decay": 0.0}]
    twins = run_twins(fastopt.SGD, dict(learning_rate=0.02, momentum=0.9, weight_decay=1e-2,
                                        convention="torch"),
                      None, groups=groups, none_at=1)
    assert_twins(*twins, exact=SIMULATOR)
    assert twins[1].rule == ("sgd_momentum_torch", "sgd")


def test_clipping_really_clips_on_the_device():
    """Norm clipping changes the trajectory, and the device's norms equal
    the float64 norms of the gradients to rounding."""
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal(s) * 10 for s in [(130,), (7,), (0,), (3, 3)]]
    params = [dev(np.zeros_like(g)) for g in grads]
    plan = cb.Plan(RULES["sgd"], [p.reshape(-1) for p in params], [])
    d_grads = [dev(g).reshape(-1) for g in grads]
    norms = plan.sumsq(d_grads)
    np.testing.assert_allclose(norms, [np.sum(g ** 2) for g in grads], rtol=1e-13)
    assert norms[2] == 0.0
    for _ in range(5):  # a fixed order: the same bits every time
        assert np.array_equal(plan.sumsq(d_grads), norms)
    norms = plan.sumsq([None, dev(grads[1]).reshape(-1), None, None])
    assert norms[0] == 0.0 and norms[1] == pytest.approx(np.sum(grads[1] ** 2), rel=1e-13)
    finals = {}
    for clip in ("clipnorm", "global_clipnorm", None):
        ps = [dev(np.ones(3)), dev(np.ones(4))]
        opt = fastopt.SGD(ps, learning_rate=0.1, **({clip: 0.5} if clip else {}))
        opt.step([dev(np.full(3, 10.0)), dev(np.full(4, 10.0))])
        finals[clip] = np.concatenate([host(p) for p in ps])
    np.testing.assert_allclose(finals[None], 0.0)
    np.testing.assert_allclose(finals["clipnorm"][:3], 1 - 0.1 * 0.5 / math.sqrt(3))
    np.testing.assert_allclose(finals["global_clipnorm"], 1 - 0.1 * 0.5 / math.sqrt(7))


def test_results_do_not_depend_on_the_launch_geometry(monkeypatch):
    """Steps are element-wise: any threads per block, chunk size and grid
    give the same bits."""
    results = []
    for tpb, chunk, blocks in [(4, 64, 3), (8, 32, 1), (2, 1024, 65535)]:
        monkeypatch.setattr(cb, "THREADS_PER_BLOCK", tpb if SIMULATOR else 32 * tpb)
        monkeypatch.setattr(cb, "CHUNK", chunk)
        monkeypatch.setattr(cb, "MAX_BLOCKS", blocks)
        _, _, _, gpu, _ = run_twins(fastopt.Adam, dict(learning_rate=0.01, amsgrad=True),
                                    np.float32, steps=3)
        results.append(np.concatenate([host(d).ravel() for d in gpu]))
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])


def test_threads_per_block_must_be_a_power_of_two(monkeypatch):
    opt = fastopt.SGD(dev(np.ones(3)), learning_rate=0.1)
    monkeypatch.setattr(cb, "THREADS_PER_BLOCK", 6)
    with pytest.raises(ValueError, match="THREADS_PER_BLOCK must be a power of two"):
        opt.step(dev(np.ones(3)))


# ---------------------------------------------------------------------------
# Multi-tensor apply: launches do not grow with the tensor count

@pytest.mark.parametrize("clip", [None, "clipnorm"])
def test_one_launch_per_step_for_any_number_of_tensors(monkeypatch, clip):
    """A step is one launch of the rule's kernel (three with norm clipping:
    two more for the sums of squares), for 1 or 50 tensors; with the same
    gradient buffers, nothing is uploaded after the first step."""
    launches = step_launches(monkeypatch)
    expected = [cb._k.step_kernel(RULES["adam"])]
    if clip:
        expected = [cb._k.sumsq_chunks, cb._k.sumsq_tensors] + expected
    for n in (1, 50):
        rng = np.random.default_rng(n)
        params = [dev(rng.standard_normal(k % 7 + 1)) for k in range(n)]
        grads = [dev(rng.standard_normal(p.shape)) for p in params]
        opt = fastopt.Adam(params, learning_rate=0.01, **({clip: 1.0} if clip else {}))
        opt.step(grads)  # the first step uploads the gradients' pointers
        plan = opt._groups[0].plan
        uploads = []
        for name in ("_gptrs", "_pt"):
            monkeypatch.setattr(getattr(plan, name), "copy_to_device",
                                lambda *a, _n=name, **k: uploads.append(_n), raising=False)
        launches.clear()
        opt.step(grads)
        assert launches == expected, (n, launches)
        assert uploads == [], (n, uploads)


def test_use_ema_is_the_step_launch_and_averages_tensors_without_gradient(monkeypatch):
    """With use_ema the step is still one launch (the rule's step_ema
    kernel: each average moved as its parameter is stored), and a tensor
    whose gradient is None has its average moved too; the numba backend's
    averages, bit for bit on the simulator."""
    launches = step_launches(monkeypatch)
    rng = np.random.default_rng(7)
    init = [rng.standard_normal(5), rng.standard_normal(3)]
    kw = dict(learning_rate=0.01, use_ema=True, ema_momentum=0.5)
    gpu = fastopt.Adam([dev(p) for p in init], **kw)
    cpu = fastopt.Adam([p.copy() for p in init], backend="numba", **kw)
    assert gpu._groups[0].ema_fused and cpu._groups[0].ema_fused
    for k in range(3):
        g = [rng.standard_normal(5), None if k == 1 else rng.standard_normal(3)]
        launches.clear()
        gpu.step([None if x is None else dev(x) for x in g])
        assert launches == [cb._k.step_kernel(RULES["adam"], ema=True)]
        cpu.step(g)
    for a, b in zip(gpu.ema_params, cpu.ema_params):
        np.testing.assert_allclose(host(a), b, rtol=0 if SIMULATOR else 1e-6)


def test_new_gradient_buffers_are_uploaded_once_per_change():
    params = [dev(np.ones(5)), dev(np.ones(3))]
    opt = fastopt.SGD(params, learning_rate=0.5)
    g1 = [dev(np.ones(5)), dev(np.ones(3))]
    g2 = [dev(np.full(5, 2.0)), dev(np.full(3, 2.0))]
    opt.step(g1)
    opt.step(g2)                      # other buffers: other pointers
    opt.step([g1[0], None])           # a skipped tensor
    np.testing.assert_allclose(host(params[0]), 1 - 0.5 - 1.0 - 0.5)
    np.testing.assert_allclose(host(params[1]), 1 - 0.5 - 1.0)


# ---------------------------------------------------------------------------
# Device arrays in the optimizer: kinds, auto, state, errors

def test_auto_picks_cuda_for_device_arrays_only():
    host_opt = fastopt.Adam([np.ones(3, np.float32), np.ones(2)])
    assert "cuda" not in host_opt.backends.values()
    dev_opt = fastopt.Adam([dev(np.ones(3, np.float32)), dev(np.ones(2))])
    assert dev_opt.backends == {"float32": "cuda", "float64": "cuda"}
    assert fastopt.Adam(dev(np.ones(3)), backend="cuda").backends == {"float64": "cuda"}


def test_foreign_device_arrays_are_updated_in_place_and_given_back():
    """CuPy arrays and PyTorch CUDA tensors are used through their memory:
    the optimizer updates what the caller holds; opt.params returns them."""
    d = {"w": dev(np.ones((2, 3), np.float32)), "b": dev(np.zeros(3, np.float32))}
    params = {k: Foreign(v) for k, v in d.items()}
    opt = fastopt.SGD(params, learning_rate=0.5)
    assert opt.params["w"] is params["w"] and opt.params["b"] is params["b"]
    opt.step({"w": Foreign(dev(np.ones((2, 3), np.float32))),
              "b": dev(np.ones(3, np.float32))})
    np.testing.assert_allclose(host(d["w"]), 0.5)
    np.testing.assert_allclose(host(d["b"]), -0.5)


def test_state_round_trip_through_host_arrays_and_files(tmp_path):
    """state_dict() gives host NumPy arrays; load_state_dict and load_state
    copy them back to the device; resuming is bit-identical."""
    rng = np.random.default_rng(11)
    init = mixed_params(rng, None)
    grads = [[gradient(rng, p.shape, p.dtype, s) for p in init] for s in range(6)]

    def make(start):
        return fastopt.Adam([dev(p) for p in start], learning_rate=0.01, amsgrad=True,
                            use_ema=True, convention="torch")

    straight = make(init)
    for g in grads:
        straight.step([dev(x) for x in g])
    first = make(init)
    for g in grads[:3]:
        first.step([dev(x) for x in g])
    state = first.state_dict()
    assert all(isinstance(a, np.ndarray) for a in state["slots"].values())
    fastopt.save_state(first, tmp_path / "opt.npz")
    resumed = [make([host(p) for p in first._params]) for _ in range(2)]
    resumed[0].load_state_dict(state)
    fastopt.load_state(resumed[1], tmp_path / "opt.npz")
    for opt in resumed:
        assert opt.iterations == 3 and opt.backends == straight.backends
        for g in grads[3:]:
            opt.step([dev(x) for x in g])
        for a, b in zip(opt._params, straight._params):
            assert np.array_equal(host(a), host(b))
        want = straight.state_dict()["slots"]
        for key, a in opt.state_dict()["slots"].items():
            assert np.array_equal(a, want[key]), key


def snapshot(opt):
    return ([host(p) for p in opt._params], opt.state_dict()["slots"], opt.iterations)


def assert_unchanged(before, after):
    for a, b in zip(before[0], after[0]):
        assert np.array_equal(a, b)
    assert before[1].keys() == after[1].keys()
    for k in before[1]:
        assert np.array_equal(before[1][k], after[1][k])
    assert before[2] == after[2]


def test_bad_params_are_rejected():
    d = dev(np.ones(3))
    with pytest.raises(TypeError, match=r"params\[1\] is a CUDA device array but params\[0\] "
                                        r"is a ndarray; all parameters must be on the GPU"):
        fastopt.Adam([np.ones(3), d])
    with pytest.raises(ValueError, match="params are CUDA device arrays, which backend "
                                         "'numba' cannot update"):
        fastopt.Adam([d], backend="numba")
    with pytest.raises(ValueError, match="backend 'cuda' updates CUDA device arrays, but the "
                                         "params are host NumPy arrays"):
        fastopt.Adam([np.ones(3)], backend="cuda")
    with pytest.raises(TypeError, match=r"params\[0\] has dtype int64"):
        fastopt.Adam([dev(np.ones(3, np.int64))])
    with pytest.raises(ValueError, match=r"params\['w'\] with shape \(2, 2\) is not "
                                         "C-contiguous"):
        fastopt.Adam({"w": Foreign(dev(np.ones(4)).reshape(2, 2), strides=(8, 16))})
    with pytest.raises(ValueError, match=r"params\[0\] is read-only"):
        fastopt.Adam([Foreign(d, readonly=True)])
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
        fastopt.Adam([d, Foreign(d)])

    class GradTensor:  # what PyTorch does for a tensor that requires grad
        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that "
                               "requires grad")

    with pytest.raises(TypeError, match=r"GradTensor refused __cuda_array_interface__.*"
                                        r"tensor.detach\(\)"):
        fastopt.Adam([GradTensor()])


@pytest.mark.parametrize("make_grads,exc,match", [
    (lambda g: [g[0], g[1].copy_to_host()], TypeError,
     r"grads\[1\] must be a CUDA device array or None, got ndarray; the params are on the GPU"),
    (lambda g: [g[0], dev(np.ones(3, np.float32))], TypeError,
     r"grads\[1\] has dtype float32 but params\[1\] has dtype float64"),
    (lambda g: [g[0], dev(np.ones(4))], ValueError,
     r"grads\[1\] has shape \(4,\) but params\[1\] has shape \(3,\)"),
    (lambda g: [Foreign(g[0], strides=(8, 32)), g[1]], ValueError,
     r"grads\[0\] with shape \(2, 2\) is not C-contiguous"),
    (lambda g: [g[0]], ValueError, r"expected 2 gradient\(s\)"),
])
def test_bad_gradients_change_nothing(make_grads, exc, match):
    params = [dev(np.ones((2, 2))), dev(np.ones(3))]
    opt = fastopt.Adam(params, learning_rate=0.1, use_ema=True)
    good = [dev(np.full((2, 2), 0.5)), dev(np.full(3, 0.5))]
    opt.step(good)
    before = snapshot(opt)
    with pytest.raises(exc, match=match):
        opt.step(make_grads(good))
    assert_unchanged(before, snapshot(opt))


def test_sharded_optimizer_refuses_device_arrays():
    pytest.importorskip("mpi4py")
    from fastopt.distributed import ShardedOptimizer
    with pytest.raises(TypeError, match="params are CUDA device arrays; the sharded optimizer "
                                        "exchanges host NumPy arrays"):
        ShardedOptimizer(fastopt.Adam, [dev(np.ones(3))])


def test_bfloat16_state_is_refused_for_device_arrays_and_int8_is_kept():
    d = dev(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="state_dtype='bfloat16' is offered by the numba "
                                         "backend only.*params are CUDA device arrays"
                                         r".*\('int8',\)"):
        fastopt.Adam([d], state_dtype="bfloat16")
    assert np.array_equal(host(d), np.ones(3, np.float32))
    # 8-bit state on the device: tests/test_cuda_int8.py
    opt = fastopt.Adam([d], state_dtype="int8")
    assert opt.backends == {"float32": "cuda"}
    assert isinstance(opt._groups[0].plan, cb.Int8Plan)
    opt.step([dev(np.ones(3, np.float32))])
    assert host(d).max() < 1.0


def test_device_gradients_for_host_params_are_rejected():
    w = np.ones(3)
    opt = fastopt.SGD([w], learning_rate=0.1)
    with pytest.raises(TypeError, match=r"grads\[0\] must be a numpy.ndarray or None, got "
                                        r".*; the params are host NumPy arrays"):
        opt.step([dev(np.ones(3))])
    assert np.array_equal(w, np.ones(3)) and opt.iterations == 0


def test_load_state_dict_checks_before_copying():
    opt = fastopt.Adam([dev(np.ones(3)), dev(np.ones(2))], learning_rate=0.1)
    opt.step([dev(np.ones(3)), dev(np.ones(2))])
    state = opt.state_dict()
    before = snapshot(opt)
    bad = {**state, "slots": {**state["slots"], "velocity/1": np.zeros(3)}}
    with pytest.raises(ValueError, match="slot 'velocity/1' has shape"):
        opt.load_state_dict(bad)
    assert_unchanged(before, snapshot(opt))


# ---------------------------------------------------------------------------
# Golden trajectories from PyTorch and Keras

#: every recording, those of the per_tensor optimizers (Adafactor, Muon: host
#: staging) included
DEVICE_GOLDEN = list(GOLDEN_NAMES)


@pytest.mark.parametrize("name", DEVICE_GOLDEN)
def test_golden_trajectory(name, monkeypatch):
    monkeypatch.setattr(cb, "MAX_BLOCKS", 1)  # one block walks every chunk: fewer threads
    replay(name, "cuda", place=dev, fetch=host)


# ---------------------------------------------------------------------------
# The optimizers of per_tensor rules (Adafactor, Muon): host staging
#
# Their slots live on the device; each step copies a tensor's parameter,
# gradient and slots to the host, runs the rule's host_step with the numpy
# backend, and copies the parameter and slots back
# (fastopt.per_tensor.StagedPlan).  The same host code runs, so the staged
# tensors match the numpy backend bit for bit, on the simulator and on a GPU;
# Muon's AdamW tensors (Keras convention) run the compiled adam rule on the
# device, as every cuda optimizer does.

TENSOR_SHAPES = {"keras": [(3, 4), (5,), (), (2, 1, 3), (0,), (6, 2)],
                 "torch": [(3, 4), (6, 2), (1, 5)]}  # torch's Muon: matrices only
TENSOR_VARIANTS = {"decay_clipvalue_none": dict(weight_decay=0.05, clipvalue=0.5),
                   "global_clipnorm": dict(global_clipnorm=0.5)}


def tensor_twins(row, convention, dtype, kwargs, steps=6, seed=3):
    """``row``'s optimizer on device arrays and on host copies with the numpy
    backend, fed the same gradients (tensor 1's is None at step 2)."""
    rng = np.random.default_rng(seed)
    shapes = TENSOR_SHAPES["torch" if row.id == "muon" and convention == "torch" else "keras"]
    dtypes = [dtype] * len(shapes) if dtype is not None else \
        [[np.float32, np.float64][k % 2] for k in range(len(shapes))]
    params = [rng.standard_normal(s).astype(dt) for s, dt in zip(shapes, dtypes)]
    p0 = [p.astype(np.float64) for p in params]
    cpu = [p.copy() for p in params]
    gpu = [dev(p) for p in params]
    kwargs = {"learning_rate": 0.02, **kwargs, "convention": convention}
    opt_cpu = row.cls(cpu, backend="numpy", **kwargs)
    opt_gpu = row.cls(gpu, **kwargs)
    assert set(opt_gpu.backends.values()) == {"cuda"}
    for step in range(steps):
        grads = [gradient(rng, p.shape, p.dtype, step) for p in params]
        if step == 2:
            grads[1] = None
        opt_cpu.step(grads)
        opt_gpu.step([None if g is None else dev(g) for g in grads])
    return opt_cpu, opt_gpu, cpu, gpu, p0


@pytest.mark.parametrize("variant", list(TENSOR_VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES + [None], ids=["f32", "f64", "mixed"])
@pytest.mark.parametrize("row,convention", with_conventions(TENSOR_DB))
def test_per_tensor_optimizers_run_on_device_arrays(row, convention, dtype, variant):
    from fastopt.per_tensor import StagedPlan
    twins = tensor_twins(row, convention, dtype, TENSOR_VARIANTS[variant])
    groups = twins[1]._tensor_groups
    assert any(isinstance(g.plan, StagedPlan) for g in groups)
    staged_only = all(isinstance(g.plan, StagedPlan) for g in groups)
    # the slots are device arrays, in their own shapes
    for key, a in twins[1].state_arrays().items():
        assert hasattr(a, "copy_to_host") and a.shape == twins[0].state_arrays()[key].shape
    # Muon's AdamW tensors run the compiled adam rule on the device, the
    # numba loop's arithmetic, not the numpy backend's: within the bound of
    # assert_twins; the staged tensors bit for bit (unless norm clipping
    # summed the AdamW gradients' squares in another order on the device)
    assert_twins(*twins, exact=staged_only)
    if not staged_only and variant != "global_clipnorm":
        for g in groups:
            if isinstance(g.plan, StagedPlan):
                for i in g.indices:
                    assert np.array_equal(host(twins[3][i]), twins[2][i]), i
    assert twins[1].rule == row.rules[convention]


@pytest.mark.parametrize("row,convention", with_conventions(TENSOR_DB))
def test_per_tensor_state_round_trip_on_the_device(row, convention, tmp_path):
    """state_dict() gives host arrays in the slots' own shapes; load_state_dict
    and load_state copy them back onto the device; resuming is bit-identical."""
    rng = np.random.default_rng(5)
    shapes = TENSOR_SHAPES["torch" if row.id == "muon" and convention == "torch" else "keras"]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[gradient(rng, p.shape, p.dtype, s) for p in init] for s in range(6)]

    def make(start):
        return row.cls([dev(p) for p in start], learning_rate=0.02, convention=convention)

    straight = make(init)
    for g in grads:
        straight.step([dev(x) for x in g])
    first = make(init)
    for g in grads[:3]:
        first.step([dev(x) for x in g])
    state = first.state_dict()
    live = first.state_arrays()
    assert state["slots"].keys() == live.keys()
    for key, a in state["slots"].items():
        assert isinstance(a, np.ndarray) and a.shape == live[key].shape, key
    fastopt.save_state(first, tmp_path / "opt.npz")
    resumed = [make([host(p) for p in first._params]) for _ in range(2)]
    resumed[0].load_state_dict(state)
    fastopt.load_state(resumed[1], tmp_path / "opt.npz")
    for opt in resumed:
        assert opt.iterations == 3
        for g in grads[3:]:
            opt.step([dev(x) for x in g])
        for a, b in zip(opt._params, straight._params):
            assert np.array_equal(host(a), host(b))
        want = straight.state_dict()["slots"]
        for key, a in opt.state_dict()["slots"].items():
            assert np.array_equal(a, want[key]), key


def test_per_tensor_bad_gradients_and_state_change_nothing_on_the_device():
    opt = fastopt.Adafactor([dev(np.ones((3, 4))), dev(np.ones(5))], learning_rate=0.1)
    opt.step([dev(np.full((3, 4), 0.5)), dev(np.full(5, 0.5))])
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \(4,\)"):
        opt.step([dev(np.full((3, 4), 0.5)), dev(np.ones(4))])
    assert_unchanged(before, snapshot(opt))
    state = opt.state_dict()
    bad = {**state, "slots": {**state["slots"], "r/0": np.zeros(4)}}  # the row moment is (3,)
    with pytest.raises(ValueError, match="slot 'r/0' has shape"):
        opt.load_state_dict(bad)
    assert_unchanged(before, snapshot(opt))


# ---------------------------------------------------------------------------
# Import behaviour, and the GPU benchmark's code path

def run_python(code, **env):
    import os
    full_env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env=full_env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_fastopt_does_not_import_numba_cuda():
    out = run_python("""
        import sys, fastopt
        import numpy as np
        fastopt.Adam(np.ones(3)).step(np.ones(3))
        print(sorted(m for m in sys.modules if m.startswith(("numba.cuda", "numba_cuda"))))
    """)
    assert out.strip() == "[]"


def test_without_numba_cuda_the_backend_is_absent_and_says_how_to_get_it():
    out = run_python("""
        import sys
        sys.modules["numba_cuda"] = None        # as if numba-cuda were not installed
        import numpy as np, fastopt
        assert "cuda" not in fastopt.available_backends(), fastopt.available_backends()
        try:
            fastopt.get_backend("cuda")
        except ImportError as e:
            print(e)
    """)
    assert "pip install 'fastopt[cuda]'" in out and "numba-cuda is not installed" in out


def test_listed_only_with_a_gpu_or_the_simulator():
    out = run_python("""
        import fastopt
        from numba import cuda
        print("cuda" in fastopt.available_backends(), cuda.is_available())
    """, NUMBA_ENABLE_CUDASIM="0")
    listed, gpu = out.split()
    assert listed == gpu


def test_gpu_bench_smoke_run_on_this_device(tmp_path):
    """benchmarks/gpu_bench.py --smoke runs its whole code path at a tiny size
    (here, on the simulator, whose timings mean nothing and are marked so)."""
    out_file = tmp_path / "bench.json"
    args = ["--smoke", "--out", str(out_file)] + (["--no-torch"] if SIMULATOR else [])
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), *args],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out_file.read_text())
    assert result["simulator"] is SIMULATOR
    assert result["device"] == cb.device_name()
    optimizers = {r["optimizer"] for r in result["results"]}
    assert optimizers == {"adam", "adam_int8", "sgd_momentum", "rmsprop", "adagrad"}
    int8 = next(r for r in result["results"] if r["optimizer"] == "adam_int8")
    assert int8["state_dtype"] == "int8" and int8["float32_state_over_this"] > 0
    assert all(r["ms"] > 0 and r["gb_s"] > 0 for r in result["results"])
    assert result["copy"]["gb_s"] > 0
    if SIMULATOR:
        assert "simulator" in proc.stdout.lower()
