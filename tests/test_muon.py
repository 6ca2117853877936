"""Muon (``fastopt/algorithms/muon.py``): what the golden recordings do not
cover on their own.

The recordings (``tests/golden/*muon*``, replayed by tests/test_golden.py on
every host backend) pin both conventions to Keras 3.15.1 and torch 2.13.0.
Here: the Newton–Schulz iteration against its plain whole-array form; whole
runs on every backend and dtype against the float64 references, with the
pipeline around the rule (weight decay and its exclusions, clipping,
``maximize``, ``None`` gradients, parameter groups); Keras's routing of
parameters to AdamW by shape and name; the refusals (bad hyperparameters,
non-2-D parameters under torch, ``state_dtype``, ``ShardedOptimizer``);
state round trips; the BLAS thread count.
"""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import blas
from fastopt.algorithms import muon as M
from fastopt.rule import TENSOR_RULES, get_rule

from cases import HOST_BACKENDS

GOLDEN = Path(__file__).parent / "golden"
COEF = M.NS_COEFFICIENTS


# ---------------------------------------------------------------------------
# Newton–Schulz

@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4), (1, 6), (6, 1), (2, 9)])
@pytest.mark.parametrize("clamp", [False, True])
def test_newton_schulz_matches_the_plain_iteration(shape, clamp):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * 3.0
    before = x.copy()
    eps = 1e-3
    got = M.newton_schulz(x, 5, *COEF, eps=eps, clamp=clamp)
    norm = (lambda n: max(n, eps)) if clamp else (lambda n: n + eps)
    want = M._orthogonalise(x, 5, COEF, norm)
    assert got.shape == shape and np.array_equal(x, before)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
    # float32 in, float32 out, computed in float32
    got32 = M.newton_schulz(x.astype(np.float32), 5, *COEF, eps=eps, clamp=clamp)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, rtol=2e-5, atol=2e-5)


def test_newton_schulz_reuses_its_scratch_and_orthogonalises():
    rng = np.random.default_rng(0)
    work = {}
    for shape in [(8, 20), (20, 8), (16, 16)]:
        x = rng.standard_normal(shape)
        o = M.newton_schulz(x, 5, *COEF, work=work).copy()  # scratch: valid until the next call
        s = np.linalg.svd(o, compute_uv=False)
        # Keller Jordan's coefficients: singular values near 1 (not exactly: ~U(0.5, 1.5))
        assert 0.5 < s.min() and s.max() < 1.3, (shape, s)
        again = M.newton_schulz(x, 5, *COEF, work=work)
        assert np.array_equal(o, again)
    assert len(work) == 2  # (8, 20) and its transpose share buffers
    # zero in, zero out (the norm floor, not a division by zero)
    assert not M.newton_schulz(np.zeros((3, 4)), 5, *COEF, clamp=True).any()
    assert not M.newton_schulz(np.zeros((3, 4)), 5, *COEF).any()
    # zero steps: the normalised input
    x = rng.standard_normal((3, 4))
    np.testing.assert_allclose(M.newton_schulz(x, 0, *COEF), x / (np.linalg.norm(x) + 1e-7))


def test_learning_rate_factors():
    # Keras: float32(sqrt(max(rows, cols))) * rms_rate; torch: the two adjustments
    assert M.keras_update_scale((6, 4), 0.2) == float(np.float32(np.sqrt(6.0))) * 0.2
    assert M.keras_update_scale((6, 4), 0.2) != np.sqrt(6.0) * 0.2
    assert M.keras_update_scale((6, 4), None) == 1.0
    assert M.torch_lr_ratio((6, 4), None) == M.torch_lr_ratio((6, 4), "original") \
        == np.sqrt(1.5)
    assert M.torch_lr_ratio((4, 6), None) == 1.0
    assert M.torch_lr_ratio((4, 6), "match_rms_adamw") == 0.2 * np.sqrt(6.0)


# ---------------------------------------------------------------------------
# Whole runs against the float64 references

SHAPES = {"hidden": (6, 4), "wide": (3, 7), "bias": (5,), "token_embedding": (4, 3),
          "head_out": (2, 5)}


def make_params(dtype=np.float64, names=SHAPES):
    rng = np.random.default_rng(7)
    every = {n: rng.standard_normal(s).astype(dtype) for n, s in SHAPES.items()}
    return {n: every[n] for n in names}


def grads_at(t, dtype=np.float64, names=SHAPES):
    rng = np.random.default_rng(100 + t)
    every = {n: rng.standard_normal(s).astype(dtype) for n, s in SHAPES.items()}
    if t == 2:
        every = {n: np.zeros_like(a) for n, a in every.items()}
    return {n: every[n] for n in names}


def reference_run(steps, convention, lr=0.02, wd=None, adam_wd=None, excluded=(),
                  transform=lambda g: g, names=SHAPES, skip=lambda t, n: False, **kw):
    """Float64 trajectory from the references, with decoupled decay and a
    gradient transform (clipping, maximize) applied as the pipeline does."""
    w = {n: a.astype(np.float64) for n, a in make_params(names=names).items()}
    m = {n: np.zeros(SHAPES[n]) for n in names}
    v = {n: np.zeros(SHAPES[n]) for n in names}
    torch = convention == "torch"
    d = dict(M.Muon._TORCH_DEFAULTS if torch else M.Muon._DEFAULTS)
    d.update(kw)
    wd = d["weight_decay"] if wd is None else wd
    adam_wd = d.get("adam_weight_decay") if adam_wd is None else adam_wd
    updates = {n: 0 for n in names}
    for t in range(steps):
        grads = {n: g.astype(np.float64) for n, g in grads_at(t, names=names).items()}
        grads = transform(grads)
        for n in names:
            if skip(t, n):
                continue
            g = grads[n]
            adamw = not torch and M.uses_adamw(SHAPES[n], n, d["exclude_layers"],
                                               d["exclude_embeddings"])
            decay = 0.0 if n in excluded else (adam_wd if adamw else wd)
            w[n] = w[n] * (1.0 - decay * lr)
            if torch:
                w[n], m[n] = M.muon_torch(
                    w[n], g, m[n], learning_rate=lr, momentum=d["momentum"],
                    muon_a=d["muon_a"], muon_b=d["muon_b"], muon_c=d["muon_c"],
                    ns_steps=d["ns_steps"], nesterov=d["nesterov"], epsilon=d["epsilon"],
                    adjust_lr_fn=d["adjust_lr_fn"])
            elif adamw:
                updates[n] += 1
                w[n], m[n], v[n] = M.muon_adamw(
                    w[n], g, m[n], v[n], learning_rate=lr, adam_lr_ratio=d["adam_lr_ratio"],
                    adam_beta_1=d["adam_beta_1"], adam_beta_2=d["adam_beta_2"],
                    epsilon=d["epsilon"], step=t + 1)
            else:
                w[n], m[n] = M.muon(
                    w[n], g, m[n], learning_rate=lr, momentum=d["momentum"],
                    muon_a=d["muon_a"], muon_b=d["muon_b"], muon_c=d["muon_c"],
                    ns_steps=d["ns_steps"], nesterov=d["nesterov"], rms_rate=d["rms_rate"])
    return w, m, v


def assert_run(params, want, dtype):
    tol = 1e-11 if dtype == np.float64 else 3e-4
    for n, a in params.items():
        np.testing.assert_allclose(a, want[n], rtol=tol, atol=tol, err_msg=n)


KERAS_CASES = {
    "defaults": {},
    "options": dict(nesterov=False, rms_rate=None, adam_lr_ratio=0.1, momentum=0.8,
                    ns_steps=3, exclude_layers=["_out$"], exclude_embeddings=False,
                    adam_beta_1=0.8, epsilon=1e-6, weight_decay=0.1, adam_weight_decay=0.05),
}
TORCH_CASES = {
    "defaults": {},
    "options": dict(nesterov=False, adjust_lr_fn="match_rms_adamw", momentum=0.3,
                    ns_steps=2, epsilon=1e-3, muon_a=3.0, muon_b=-3.2, muon_c=1.2,
                    weight_decay=0.01),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(KERAS_CASES))
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_keras_convention_matches_the_references(backend, case, dtype):
    kw = KERAS_CASES[case]
    params = make_params(dtype)
    opt = fastopt.Muon(params, learning_rate=0.02, backend=backend, **kw)
    for t in range(5):
        opt.step(grads_at(t, dtype))
    w, m, v = reference_run(5, "keras", **kw)
    assert_run(params, w, dtype)
    slots = opt.state_dict()["slots"]
    for n in SHAPES:
        np.testing.assert_allclose(slots[f"momentum/{n}"], m[n], rtol=1e-4, atol=1e-5)
    # velocity exactly for the parameters AdamW takes
    assert {k for k in slots if k.startswith("velocity/")} == \
        {f"velocity/{n}" for n, adamw in zip(SHAPES, opt.uses_adamw()) if adamw}


TORCH_NAMES = ("hidden", "wide", "token_embedding", "head_out")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(TORCH_CASES))
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_torch_convention_matches_the_references(backend, case, dtype):
    kw = TORCH_CASES[case]
    params = make_params(dtype, TORCH_NAMES)
    opt = fastopt.Muon(params, learning_rate=0.02, backend=backend, convention="torch", **kw)
    for t in range(5):
        opt.step(grads_at(t, dtype, TORCH_NAMES))
    w, _, _ = reference_run(5, "torch", names=TORCH_NAMES, **kw)
    assert_run(params, w, dtype)
    assert opt.rule == "muon_torch"


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_the_pipeline_around_the_rule(backend):
    """Weight-decay exclusions, clipping by value, maximize and a None
    gradient, and per-group hyperparameters, as the references see them."""
    params = make_params()
    opt = fastopt.Muon(params, learning_rate=0.02, backend=backend, weight_decay=0.3,
                       adam_weight_decay=0.2, clipvalue=0.5, maximize=True,
                       exclude_from_weight_decay=["wide", "bias"])
    for t in range(4):
        g = grads_at(t)
        if t == 1:
            g["hidden"] = None
            g["bias"] = None
        opt.step(g)
    w, _, _ = reference_run(4, "keras", wd=0.3, adam_wd=0.2, excluded=("wide", "bias"),
                            transform=lambda g: {n: -np.clip(a, -0.5, 0.5)
                                                 for n, a in g.items()},
                            skip=lambda t, n: t == 1 and n in ("hidden", "bias"))
    assert_run(params, w, np.float64)

    # global clipping by norm, over the Muon and the AdamW tensors together
    params = make_params()
    opt = fastopt.Muon(params, learning_rate=0.02, backend=backend, global_clipnorm=1.0)
    opt.step(grads_at(0))
    norm = np.sqrt(sum(np.sum(a * a) for a in grads_at(0).values()))
    w, _, _ = reference_run(1, "keras", transform=lambda g: {n: a / norm
                                                            for n, a in g.items()})
    assert_run(params, w, np.float64)

    # parameter groups: their own learning rate and Muon options
    params = make_params()
    groups = [{"params": {n: params[n] for n in ("hidden", "bias")}},
              {"params": {n: params[n] for n in ("wide", "token_embedding", "head_out")},
               "learning_rate": 0.05, "ns_steps": 2}]
    opt = fastopt.Muon(groups, learning_rate=0.02, backend=backend)
    opt.step([{n: grads_at(0)[n] for n in ("hidden", "bias")},
              {n: grads_at(0)[n] for n in ("wide", "token_embedding", "head_out")}])
    first, _, _ = reference_run(1, "keras", names=("hidden", "bias"))
    second, _, _ = reference_run(1, "keras", names=("wide", "token_embedding", "head_out"),
                                 lr=0.05, ns_steps=2)
    assert_run(params, {**first, **second}, np.float64)


def test_a_zero_first_gradient_moves_nothing_but_the_decay():
    # the Newton–Schulz input is exactly zero: norm floor (torch) or + 1e-7
    # (Keras), no NaN
    for convention in ("keras", "torch"):
        params = make_params(names=("hidden",))
        start = params["hidden"].copy()
        opt = fastopt.Muon(params, convention=convention, weight_decay=0.5,
                           learning_rate=0.1)
        opt.step({"hidden": np.zeros((6, 4))})
        np.testing.assert_array_equal(params["hidden"], start * (1 - 0.5 * 0.1))


# ---------------------------------------------------------------------------
# Keras's routing to AdamW

def test_keras_routes_by_shape_and_name():
    cases = [((3, 4), "dense/kernel", (), True, False),
             ((3,), "dense/bias", (), True, True),
             ((3, 4, 5), "conv/kernel", (), True, True),
             ((3, 4), "Token_Embedding", (), True, True),   # lower-cased
             ((3, 4), "Token_Embedding", (), False, False),
             ((3, 4), "head/out", ("out$",), True, True),
             ((3, 4), "outer/kernel", ("out$",), True, False),
             ((3, 4), None, ("out",), True, False)]          # list params: no name
    for shape, name, layers, embeddings, want in cases:
        assert M.uses_adamw(shape, name, layers, embeddings) is want, (shape, name, layers)
    # list params: 2-D -> Muon, anything else -> AdamW
    opt = fastopt.Muon([np.zeros((2, 3)), np.zeros(3), np.zeros((1, 2, 3))],
                       exclude_layers=["."])
    assert opt.uses_adamw() == [False, True, True]
    # under torch no parameter goes to AdamW
    assert fastopt.Muon([np.zeros((2, 3))], convention="torch").uses_adamw() == [False]


@pytest.mark.parametrize("name", ["keras_muon", "keras_muon_options"])
def test_routing_matches_what_keras_chose(name):
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    spec = meta["fastopt"]
    params = {n: np.zeros(s) for n, s in zip(spec["names"], meta["shapes"])}
    opt = fastopt.Muon(params, **spec["kwargs"])
    assert opt.uses_adamw() == meta["keras_uses_adamw"]


# ---------------------------------------------------------------------------
# Refusals

BAD = [
    ({"momentum": -0.1}, ValueError, "momentum must be >= 0"),
    ({"ns_steps": 2.0}, TypeError, "ns_steps must be an int"),
    ({"ns_steps": -1}, ValueError, "ns_steps must be >= 0"),
    ({"ns_steps": 100, "convention": "torch"}, ValueError, r"< 100 \(torch.optim.Muon"),
    ({"muon_a": float("nan")}, ValueError, "muon_a must be finite"),
    ({"adam_beta_1": 1.0}, ValueError, "adam_beta_1 must be < 1"),
    ({"epsilon": -1.0}, ValueError, "epsilon must be >= 0"),
    ({"rms_rate": -0.2}, ValueError, "rms_rate must be >= 0"),
    ({"adam_lr_ratio": "1"}, TypeError, "adam_lr_ratio must be a real number"),
    ({"nesterov": 1}, TypeError, "nesterov must be True or False"),
    ({"exclude_embeddings": None, "exclude_layers": "dense"}, TypeError,
     "exclude_layers must be a list of strings"),
    ({"exclude_layers": ["(unclosed"]}, ValueError, "not a regular expression"),
    ({"adjust_lr_fn": "original"}, ValueError, "adjust_lr_fn is a PyTorch option"),
    ({"adjust_lr_fn": "sqrt", "convention": "torch"}, ValueError,
     "adjust_lr_fn must be None, 'original' or 'match_rms_adamw'"),
    ({"rms_rate": 0.3, "convention": "torch"}, ValueError, "rms_rate is a Keras option"),
    ({"exclude_layers": ["x"], "convention": "torch"}, ValueError,
     "exclude_layers is a Keras option"),
    ({"ns_coefficients": (3.0, -3.0, 1.0)}, ValueError,
     r"'ns_coefficients' \(did you mean muon_a, muon_b and muon_c\?\)"),
    ({"state_dtype": "bfloat16"}, ValueError, "state_dtype='bfloat16' is not offered"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD)
def test_bad_hyperparameters_are_refused(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fastopt.Muon([np.zeros((3, 4), np.float32)], **kwargs)


def test_torch_takes_two_dimensional_parameters_only():
    with pytest.raises(ValueError, match=r"2-D parameters only; params\['b'\] has shape "
                                         r"\(4,\)"):
        fastopt.Muon({"w": np.zeros((3, 4)), "b": np.zeros(4)}, convention="torch")


def test_sharded_optimizer_refuses_muon_with_the_reason():
    pytest.importorskip("mpi4py")
    from fastopt.distributed import ShardedOptimizer
    with pytest.raises(ValueError, match="cannot be sharded.*whole momentum matrix"):
        ShardedOptimizer(fastopt.Muon, [np.zeros((4, 4))])


def test_rules_are_declared_as_per_tensor():
    assert set(TENSOR_RULES) >= {"muon", "muon_torch"}
    for name in ("muon", "muon_torch"):
        rule = get_rule(name)
        assert rule.kind == "per_tensor" and not rule.shardable
        assert rule.slot_shapes((3, 4)) == {"momentum": (3, 4)}
    assert get_rule("muon_torch").torch_state == ("momentum_buffer",)


# ---------------------------------------------------------------------------
# State

def test_state_round_trips_and_resumes_bit_identically(tmp_path):
    kw = dict(learning_rate=0.02, exclude_layers=["_out$"])
    ref = make_params()
    a = fastopt.Muon(ref, **kw)
    for t in range(6):
        a.step(grads_at(t))
    params = make_params()
    b = fastopt.Muon(params, **kw)
    for t in range(3):
        b.step(grads_at(t))
    state = b.state_dict()
    assert set(state["slots"]) == {f"momentum/{n}" for n in SHAPES} | \
        {"velocity/bias", "velocity/token_embedding", "velocity/head_out"}
    fastopt.save_state(b, tmp_path / "s.npz")
    for how in ("dict", "file", "pickle"):
        p2 = {n: a.copy() for n, a in params.items()}
        c = fastopt.Muon(p2, **kw)
        if how == "dict":
            c.load_state_dict(state)
        elif how == "file":
            fastopt.load_state(c, tmp_path / "s.npz")
        else:
            c = pickle.loads(pickle.dumps(b))
            p2 = c.params
        for t in range(3, 6):
            c.step(grads_at(t))
        for n in SHAPES:
            assert np.array_equal(p2[n], ref[n]), (how, n)


def test_config_round_trip():
    params = make_params()
    opt = fastopt.Muon(params, rms_rate=None, exclude_layers=["out"], nesterov=False,
                       ns_steps=3)
    config = opt.get_config()
    assert config["rms_rate"] is None and config["exclude_layers"] == ["out"]
    twin = fastopt.Muon.from_config(make_params(), json.loads(json.dumps(config)))
    assert twin.get_config() == config
    for t in range(2):
        opt.step(grads_at(t))
        twin.step(grads_at(t))
    for n in SHAPES:
        assert np.array_equal(twin.params[n], opt.params[n])
    torch_config = fastopt.Muon([np.zeros((2, 3))], convention="torch",
                                adjust_lr_fn="match_rms_adamw").get_config()
    assert torch_config["adjust_lr_fn"] == "match_rms_adamw"
    assert torch_config["weight_decay"] == 0.1 and torch_config["rms_rate"] is None


# ---------------------------------------------------------------------------
# The BLAS thread pool

@pytest.mark.skipif(not blas.available(), reason="no way to set NumPy's BLAS threads here")
def test_blas_threads_follow_fastopts_count_during_the_step_only(monkeypatch):
    import fastopt.backends as backends
    seen = []
    real = M.newton_schulz

    def spy(*args, **kwargs):
        seen.append(blas.get_num_threads())
        return real(*args, **kwargs)
    monkeypatch.setattr(M, "newton_schulz", spy)
    before = blas.get_num_threads()
    params = make_params(names=("hidden",))
    opt = fastopt.Muon(params)
    opt.step(grads_at(0, names=("hidden",)))  # not set: BLAS as it is
    monkeypatch.setattr(backends, "_num_threads", 1)
    opt.step(grads_at(1, names=("hidden",)))
    assert seen == [before, 1]
    assert blas.get_num_threads() == before
    with blas.limit(1):
        assert blas.get_num_threads() == 1
    assert blas.get_num_threads() == before


# ---------------------------------------------------------------------------
# fastopt.torch.Muon against torch.optim.Muon

def _torch_pair(float64_ns, **kw):
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft
    import torch.optim._muon as tm

    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s) for s in [(6, 4), (3, 7), (5, 5)]]
    grads = [[rng.standard_normal(a.shape) for a in init] for _ in range(8)]
    grads[2] = [np.zeros_like(a) for a in init]

    def run(cls, patch):
        params = [torch.tensor(a.copy(), requires_grad=True) for a in init]
        opt = cls(params, lr=0.02, **kw)
        saved = tm._zeropower_via_newtonschulz
        if patch:  # torch's iteration with the same operations in float64
            def ns(grad, coefficients, steps, eps):
                a, b, c = coefficients
                x = grad.T if grad.size(0) > grad.size(1) else grad
                x = x / x.norm().clamp(min=eps)
                for _ in range(steps):
                    gram = x @ x.T
                    x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x,
                                    beta=a)
                return x.T if grad.size(0) > grad.size(1) else x
            tm._zeropower_via_newtonschulz = ns
        try:
            for g in grads:
                for p, gk in zip(params, g):
                    p.grad = torch.tensor(gk)
                opt.step()
        finally:
            tm._zeropower_via_newtonschulz = saved
        return params, opt
    return run(torch.optim.Muon, float64_ns), run(ft.Muon, False), init


@pytest.mark.parametrize("kw", [{}, {"nesterov": False, "adjust_lr_fn": "match_rms_adamw",
                                     "momentum": 0.3, "ns_steps": 3, "weight_decay": 0.0}])
def test_torch_adapter_matches_torch_with_its_iteration_in_float64(kw):
    (tp, topt), (fp, fopt), init = _torch_pair(True, **kw)
    for t, f, a in zip(tp, fp, init):
        moved = np.max(np.abs(t.detach().numpy() - a))
        np.testing.assert_allclose(f.detach().numpy(), t.detach().numpy(), rtol=0,
                                   atol=1e-12 * moved)
    ts, fs = topt.state_dict(), fopt.state_dict()
    assert ts["param_groups"] == fs["param_groups"]
    for k in ts["state"]:
        assert set(ts["state"][k]) == set(fs["state"][k]) == {"momentum_buffer"}
        np.testing.assert_allclose(fs["state"][k]["momentum_buffer"].numpy(),
                                   ts["state"][k]["momentum_buffer"].numpy(), rtol=1e-13)


def test_torch_adapter_against_torchs_bfloat16_iteration_and_refusals():
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft
    (tp, _), (fp, fopt), init = _torch_pair(False)
    # torch's bfloat16 Newton–Schulz: ~1e-2 of the displacement after 8 steps
    for t, f, a in zip(tp, fp, init):
        moved = np.max(np.abs(t.detach().numpy() - a))
        err = np.max(np.abs(f.detach().numpy() - t.detach().numpy()))
        assert 1e-5 * moved < err < 5e-2 * moved
    with pytest.raises(ValueError, match="2D parameters"):
        ft.Muon([torch.zeros(3)])
    with pytest.raises(ValueError, match=r"ns_steps must be an int in \[0, 100\)"):
        ft.Muon([torch.zeros(3, 2)], ns_steps=100)
    with pytest.raises(ValueError, match="backend must be"):
        ft.Muon([torch.zeros(3, 2)], backend="cuda")
    p = torch.zeros(3, 2, dtype=torch.float16, requires_grad=True)
    p.grad = torch.ones(3, 2, dtype=torch.float16)
    opt = ft.Muon([p])
    with pytest.raises(TypeError, match="CPU float32 or float64"):
        opt.step()
    assert not p.any() and not opt.state  # nothing changed


# ---------------------------------------------------------------------------
# fastopt.keras.Muon against the Keras recordings

@pytest.mark.parametrize("name", ["keras_muon", "keras_muon_options"])
def test_keras_adapter_replays_the_keras_recordings(name):
    keras = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    if keras.backend.backend() != "torch":
        pytest.skip("fastopt.keras needs KERAS_BACKEND=torch")
    import fastopt.keras as fk
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    with np.load(GOLDEN / f"{name}.npz") as data:
        arrays = dict(data)
    spec, n = meta["fastopt"], len(meta["shapes"])
    keras.config.set_floatx("float64")
    try:
        variables = [keras.Variable(arrays[f"init_{k}"].copy(), dtype="float64", name=nm)
                     for k, nm in enumerate(spec["names"])]
        opt = fk.Muon(**spec["kwargs"])
        moved = [0.0] * n
        for t in range(meta["steps"]):
            opt.apply([torch.tensor(arrays[f"grads_{k}"][t]) for k in range(n)], variables)
            for k, v in enumerate(variables):
                want = arrays[f"params_{k}"][t]
                moved[k] = max(moved[k], float(np.max(np.abs(want - arrays[f"init_{k}"]))))
                err = float(np.max(np.abs(v.numpy() - want)))
                assert err <= meta["tolerance"] * moved[k], (t, k, err / moved[k])
        assert [opt._should_use_adamw(v) for v in variables] == meta["keras_uses_adamw"]
    finally:
        keras.config.set_floatx("float32")


def test_gradient_accumulation():
    # every second call applies the mean of two gradients: the same as plain
    # steps on the means (AdamW's bias correction counts the updates)
    a, b = make_params(), make_params()
    acc = fastopt.Muon(a, learning_rate=0.02, gradient_accumulation_steps=2)
    plain = fastopt.Muon(b, learning_rate=0.02)
    for t in range(0, 4, 2):
        acc.step(grads_at(t))
        acc.step(grads_at(t + 1))
        plain.step({n: (grads_at(t)[n] + grads_at(t + 1)[n]) / 2 for n in SHAPES})
    assert acc.iterations == plain.iterations == 2
    for n in SHAPES:
        np.testing.assert_allclose(a[n], b[n], rtol=1e-12, atol=1e-14)
        assert not np.array_equal(a[n], make_params()[n])
