"""The moving average (``use_ema``) and gradient accumulation around the
kernels: folded into the numba kernel's pass, or one in-place pass of its
own, bit for bit the NumPy expressions of the reference pipeline
(``fastopt.pipeline``), with no temporary of the parameters' size."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fastopt
from fastopt import buffers

SHAPES = [(40000,), (3, 5), (20000,)]  # the first two chunks' tensor: parallel driver too


def _grads(rng, dtype, none=()):
    return [None if k in none else rng.standard_normal(s).astype(dtype)
            for k, s in enumerate(SHAPES)]


def _expected_ema(ema, params, updates, momentum):
    """The reference pipeline's average, as NumPy computes it."""
    m = momentum if updates else 0.0
    for a, p in zip(ema, params):
        a[...] = m * a + (1.0 - m) * p


CASES = [
    ("numba", fastopt.Adam, {"learning_rate": 1e-2}),
    ("numba", fastopt.SGD, {"momentum": 0.9, "nesterov": True}),
    ("numba", fastopt.Adam, {"learning_rate": 1e-2, "clipnorm": 0.5}),  # two_phase
    ("numba", fastopt.Adam, {"learning_rate": 1e-2, "state_dtype": "bfloat16"}),
    ("numba", fastopt.Adam, {"learning_rate": 1e-2, "state_dtype": "int8"}),
    ("numba", fastopt.Lamb, {"learning_rate": 1e-2}),  # two_phase, its update scale
    ("numba", fastopt.Adafactor, {"learning_rate": 1e-2}),  # per_tensor
    ("cython", fastopt.Adam, {"learning_rate": 1e-2}),
    ("numpy", fastopt.RMSprop, {"learning_rate": 1e-2}),
]


# bfloat16 and 8-bit state take float32 parameters only
GRID = [(*case, dtype) for case in CASES for dtype in (np.float32, np.float64)
        if dtype == np.float32 or "state_dtype" not in case[2]]


@pytest.mark.parametrize("backend, cls, kw, dtype", GRID,
                         ids=[f"{b}-{c.__name__}-{'-'.join(k)}-{np.dtype(d).name}"
                              for b, c, k, d in GRID])
def test_the_average_is_the_reference_expression_bit_for_bit(backend, cls, kw, dtype):
    if backend not in fastopt.available_backends():
        pytest.skip(f"{backend} backend not available here")
    rng = np.random.default_rng(0)
    p = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    q = [a.copy() for a in p]
    momentum = 0.9
    opt = cls(p, use_ema=True, ema_momentum=momentum, backend=backend, **kw)
    plain = cls(q, backend=backend, **kw)  # the same parameters without the average
    fused = [g.ema_fused for g in opt._tensor_groups]
    # the numba float32/float64 plans fold it in; the others run a pass of its own
    assert fused == [backend == "numba" and cls is not fastopt.Adafactor
                     and kw.get("state_dtype") != "int8"]
    ema = [np.zeros_like(a) for a in q]
    for k in range(4):
        g = _grads(rng, dtype, none=(1,) if k == 2 else ())  # a None gradient at step 2
        opt.step(g)
        plain.step(g)
        _expected_ema(ema, q, k, momentum)
    for a, b in zip(p, q):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(opt.ema_params, ema):
        np.testing.assert_array_equal(a, b)


def test_a_parameter_without_gradient_is_still_averaged():
    p = [np.zeros(5, np.float32), np.ones(40000, np.float32)]
    opt = fastopt.SGD(p, learning_rate=0.1, use_ema=True, ema_momentum=0.5, backend="numba")
    assert opt._tensor_groups[0].ema_fused
    opt.step([np.ones(5, np.float32), None])  # the average starts as a copy
    np.testing.assert_array_equal(opt.ema_params[1], p[1])
    p[1][...] = 3.0  # changed outside the optimizer: the average follows
    opt.step([np.ones(5, np.float32), None])
    np.testing.assert_array_equal(opt.ema_params[1], np.full(40000, 2.0, np.float32))


def test_a_group_whose_gradients_are_all_none_is_averaged():
    """A group of several tensors without gradients skips its kernel call;
    its averages still follow the parameters (a pass of their own)."""
    p = [np.ones(3), np.full(4, 2.0), np.full(2, 2.0)]
    groups = [{"params": [p[0]]}, {"params": [p[1], p[2]], "learning_rate": 0.5}]
    opt = fastopt.SGD(groups, learning_rate=0.1, use_ema=True, ema_momentum=0.5,
                      backend="numba")
    ema = [np.zeros_like(a) for a in p]
    steps = [[[np.ones(3)], [np.ones(4), np.ones(2)]], [[np.ones(3)], [None, None]],
             [[np.ones(3)], [None, None]]]
    for k, g in enumerate(steps):
        if k == 2:
            p[1][...] = 6.0  # changed outside the optimizer: the average follows
        opt.step(g)
        _expected_ema(ema, p, k, 0.5)
    got = [a for group in opt.ema_params for a in group["params"]]
    for a, b in zip(got, ema):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got[1], np.full(4, 0.5 * 1.5 + 0.5 * 6.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_overwrite_frequency_copies_the_average_after_the_fused_pass(dtype):
    rng = np.random.default_rng(1)
    p = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    q = [a.copy() for a in p]
    opt = fastopt.Adam(p, use_ema=True, ema_overwrite_frequency=3, backend="numba")
    plain = fastopt.Adam(q, backend="numba")
    ema = [np.zeros_like(a) for a in q]
    for k in range(6):
        g = _grads(rng, dtype)
        opt.step(g)
        plain.step(g)
        _expected_ema(ema, q, k, 0.99)
        if (k + 1) % 3 == 0:
            for a, b in zip(q, ema):
                a[...] = b
        for a, b in zip(p, q):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_accumulation_with_a_loss_scale_is_the_reference_bit_for_bit(backend, dtype):
    """Each call ``acc += g*s`` (NumPy: a temporary), the last of a cycle
    ``acc /= steps``, the kernel on acc, ``acc = 0``: now one in-place pass
    per call, the same bits.  The average follows every call."""
    rng = np.random.default_rng(2)
    p = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    q = [a.copy() for a in p]
    steps, scale = 3, 7.0
    opt = fastopt.Adam(p, gradient_accumulation_steps=steps, loss_scale_factor=scale,
                       use_ema=True, ema_momentum=0.8, backend=backend)
    plain = fastopt.Adam(q, backend=backend)
    acc = [np.zeros_like(a) for a in q]
    ema = [np.zeros_like(a) for a in q]
    for k in range(7):
        g = _grads(rng, dtype)
        opt.step(g)
        for a, x in zip(acc, g):
            a += x * (1.0 / scale)
        if (k + 1) % steps == 0:
            for a in acc:
                a /= steps
            plain.step(acc)
            for a in acc:
                a[...] = 0.0
        _expected_ema(ema, q, k // steps, 0.8)
        for a, b in zip(p, q):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(opt.ema_params, ema):
        np.testing.assert_array_equal(a, b)
    live = opt.state_dict()["slots"]
    accs = [v for key, v in live.items() if key.startswith("gradient_accumulator/")]
    assert len(accs) == len(acc)
    for a, b in zip(accs, acc):
        np.testing.assert_array_equal(a, b)


def test_state_dict_round_trip_keeps_the_fused_average():
    rng = np.random.default_rng(3)
    p = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    q = [a.copy() for a in p]
    kw = dict(use_ema=True, ema_momentum=0.7, gradient_accumulation_steps=2,
              loss_scale_factor=2.0, backend="numba")
    a = fastopt.Adam(p, **kw)
    for _ in range(3):
        a.step(_grads(rng, np.float32))
    b = fastopt.Adam(q, **kw)
    b.load_state_dict(a.state_dict())  # copied into b's averages: its kernel sees them
    for x, y in zip(p, q):
        y[...] = x
    for _ in range(3):
        g = _grads(rng, np.float32)
        a.step(g)
        b.step(g)
    for x, y in zip(p, q):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.ema_params, b.ema_params):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_form_of_the_in_place_passes_rounds_the_same(monkeypatch, dtype):
    """HostArrays' passes: Numba's, Cython's where Numba is missing, NumPy
    in blocks where both are: the NumPy expressions' bits."""
    rng = np.random.default_rng(4)
    n = buffers.BLOCK * 2 + 17  # above the parallel thresholds
    y0, x = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    want = y0.copy()
    want[...] = 0.9 * want + (1.0 - 0.9) * x
    want += x * (1.0 / 3.0)
    want += x * 0.25
    want /= 3
    forms = [None] + [name for name in ("numba", "cython")
                      if name in fastopt.available_backends()]
    for form in forms:
        module = None if form is None else fastopt.backends.get_backend(form)
        monkeypatch.setattr(buffers, "_numba", [module])
        y = y0.copy()
        buffers.HostArrays.lerp(y, x, 0.9, 1.0 - 0.9)
        buffers.HostArrays.add_scaled(y, x, 1.0 / 3.0)
        buffers.HostArrays.add_mean(y, x, 0.25, 3)
        np.testing.assert_array_equal(y, want, err_msg=str(form))


def test_muon_averages_its_adamw_tensors_in_their_kernel():
    rng = np.random.default_rng(5)
    shapes = [(8, 6), (40,)]  # a matrix (Muon's rule) and a vector (AdamW's)
    p = [rng.standard_normal(s) for s in shapes]
    q = [a.copy() for a in p]
    opt = fastopt.Muon(p, use_ema=True, ema_momentum=0.6, backend="numba")
    plain = fastopt.Muon(q, backend="numba")
    assert any(g.ema_fused for g in opt._tensor_groups)
    ema = [np.zeros_like(a) for a in q]
    for k in range(3):
        g = [rng.standard_normal(s) for s in shapes]
        opt.step(g)
        plain.step(g)
        _expected_ema(ema, q, k, 0.6)
    fused = {i for grp in opt._tensor_groups if grp.ema_fused for i in grp.indices}
    assert fused == {1}
    for a, b in zip(opt.ema_params, ema):
        np.testing.assert_array_equal(a, b)


def test_the_benchmark_script_runs():
    """benchmarks/ema_bench.py's candidates, one round at a tiny size (a smoke
    test: nothing about speed)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ema_bench.py"
    spec = importlib.util.spec_from_file_location("ema_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.run([3000], repeats=1, backend="numba")
    assert {r["candidate"] for r in rows} == set(bench.BYTES)
    assert all(r["median_ms"] > 0 for r in rows)


@pytest.mark.parametrize("kw", [{"use_ema": True},
                                {"gradient_accumulation_steps": 2, "loss_scale_factor": 4.0,
                                 "use_ema": True}], ids=["ema", "accumulation"])
def test_no_array_of_the_parameters_size_is_allocated(kw):
    n = 1 << 20  # 4 MiB of float32
    p = np.zeros(n, np.float32)
    g = np.ones(n, np.float32)
    opt = fastopt.Adam(p, backend="numba", **kw)
    for _ in range(4):  # compiled, both kinds of call
        opt.step(g)
    tracemalloc.start()
    try:
        for _ in range(4):
            opt.step(g)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n  # NumPy reports its arrays' buffers to tracemalloc: none of 4 MiB


@pytest.mark.skipif(not {"numba", "cython"} <= set(fastopt.available_backends()),
                    reason="needs both compiled backends")
def test_auto_with_use_ema_picks_the_backend_that_fuses_the_average():
    # from EMA_NUMBA_FROM elements "auto" runs numba's fused pass instead of
    # the table's choice; below, and without use_ema, the table decides
    from fastopt.backends import EMA_NUMBA_FROM, resolve_backend
    from fastopt.rule import RULES
    for n in (1000, EMA_NUMBA_FROM - 1, EMA_NUMBA_FROM, 4 * EMA_NUMBA_FROM):
        table = resolve_backend("auto", np.float32, n, rule=RULES["adam"]).NAME
        for ema in (False, True):
            opt = fastopt.Adam([np.zeros(n, np.float32)], use_ema=ema)
            want = "numba" if ema and n >= EMA_NUMBA_FROM else table
            assert opt.backends == {"float32": want}, (n, ema)
            assert opt._tensor_groups[0].ema_fused == (ema and want == "numba")
    assert fastopt.Adam([np.zeros(10 ** 5, np.float32)], use_ema=True,
                        backend="cython").backends == {"float32": "cython"}
