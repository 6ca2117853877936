"""The package's shape: what ``import fastopt`` loads, no import cycles among
fastopt's modules, and the optimizer protocol (:mod:`fastopt.protocol`)."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt.protocol import OPTIMIZER_MEMBERS, missing_members

ROOT = Path(fastopt.__file__).parent
HEAVY = ("fastopt.train", "fastopt.distributed", "fastopt.torch", "fastopt.keras", "torch",
         "mpi4py")


def _run(code):
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=str(ROOT.parent))
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_fastopt_loads_no_heavy_subpackage():
    loaded = _run("import fastopt, sys; "
                  f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert loaded.strip() == "[]"


def test_fastopt_compare_loads_keras_only_for_the_keras_framework():
    # fastopt.train.keras_compare imports Keras only when --framework keras runs
    out = _run("import sys\n"
               "import fastopt.train.keras_compare\n"
               "from fastopt.cli import main\n"
               "main(['compare', '--optimizers', 'sgd', '--epochs', '1', '--no-plot'])\n"
               f"print(sorted(m for m in {HEAVY!r} + ('keras',) if m in sys.modules))")
    assert out.splitlines()[-1] == "['fastopt.train']"


def test_heavy_subpackages_load_on_first_access():
    out = _run("import fastopt, sys\n"
               "assert 'fastopt.train' not in sys.modules\n"
               "print(fastopt.train.fit.__module__,"
               " fastopt.distributed.ShardedOptimizer.__name__)\n"
               "print('mpi4py' in sys.modules)\n"
               "try:\n"
               "    fastopt.no_such_thing\n"
               "except AttributeError as e:\n"
               "    print('AttributeError', e)\n")
    lines = out.splitlines()
    assert lines[0] == "fastopt.train.fit ShardedOptimizer"
    assert lines[1] == "False"  # using fastopt.distributed imports mpi4py, importing it not
    assert lines[2].startswith("AttributeError") and "no_such_thing" in lines[2]


def _module_name(path):
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _module_level_imports(path, modules):
    """The fastopt modules that ``path`` imports at module level (imports in
    functions and methods are lazy and do not count)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for a in node.names:  # ``from pkg import submodule`` imports the submodule
                    sub = f"{base}.{a.name}"
                    found.add(sub if sub in modules else base)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)
            else:
                visit(ast.iter_child_nodes(node))
    visit(tree.body)
    return {m for m in found if m in modules and m != name}


def _graph():
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: _module_level_imports(p, paths) for m, p in paths.items()}


def _cycle(graph):
    """One import cycle of ``graph`` as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        state[m] = "done"
        stack.pop()
        return None
    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_among_fastopt_modules():
    graph = _graph()
    assert "fastopt.optimizer" in graph and "fastopt.params" in graph["fastopt.optimizer"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_every_module_imports():
    optional = {"fastopt.torch": "torch", "fastopt.backends.cuda_backend": "numba.cuda",
                "fastopt.backends._cuda_kernels": "numba.cuda"}
    for info in pkgutil.walk_packages([str(ROOT)], "fastopt."):
        need = next((v for k, v in optional.items() if info.name.startswith(k)), None)
        if need and importlib.util.find_spec(need.split(".")[0]) is None:
            continue
        try:
            importlib.import_module(info.name)
        except ImportError as e:  # an optional dependency that is absent here
            if need is None:
                raise
            pytest.skip(f"{info.name}: {e}")


def test_optimizers_follow_the_protocol():
    opt = fastopt.Adam([np.zeros(3)], learning_rate=0.1)
    assert missing_members(opt) == []
    assert missing_members("adam") == list(OPTIMIZER_MEMBERS)


def test_fit_refuses_what_is_not_optimizer_like():
    from fastopt import train
    model = train.LogisticRegression(2, seed=0)
    X, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(TypeError, match="optimizer must be a fastopt optimizer"):
        train.fit(model, X, y, object(), epochs=1)


@pytest.mark.parametrize("convention", ["keras", "torch"])
def test_clipping_by_global_norm_goes_through_the_reductions_hook(convention):
    rng = np.random.default_rng(0)
    w0 = [rng.standard_normal(5), rng.standard_normal((2, 3)).astype(np.float32)]
    grads = [rng.standard_normal(5), rng.standard_normal((2, 3)).astype(np.float32)]
    seen = []

    def four_shards(partial_sums):
        # as if four shards each held these per-tensor sums of squares
        seen.append([s.shape for s in partial_sums])
        return [4 * s for s in partial_sums]
    hooked = fastopt.SGD([w.copy() for w in w0], learning_rate=0.1, global_clipnorm=0.5,
                         convention=convention)
    hooked.reduce_tensor_sums = four_shards
    # norm twice as large: the same clip factor as half the clip norm
    plain = fastopt.SGD([w.copy() for w in w0], learning_rate=0.1, global_clipnorm=0.25,
                        convention=convention)
    hooked.step(grads)
    plain.step(grads)
    assert seen == [[(1,), (1,)]]  # one call: one array per tensor group, one entry per tensor
    if convention == "keras":  # torch's eps makes the two factors differ in rounding
        for a, b in zip(hooked.params, plain.params):
            np.testing.assert_array_equal(a, b)
    untouched = fastopt.SGD([w.copy() for w in w0], learning_rate=0.1, global_clipnorm=0.5,
                            convention=convention)
    untouched.step(grads)
    assert not np.array_equal(untouched.params[0], hooked.params[0])


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="needs mpi4py")
def test_sharded_optimizer_follows_the_protocol_and_sums_any_shape():
    from mpi4py import MPI

    from fastopt.distributed import ShardedOptimizer
    opt = ShardedOptimizer(fastopt.Adam, [np.zeros(3), np.zeros(2)], comm=MPI.COMM_SELF)
    assert missing_members(opt) == []
    hook = opt.shard_optimizer.reduce_tensor_sums  # installed by the wrapper
    partial = [np.arange(6.0).reshape(2, 3), np.array([7.0])]  # e.g. Lamb: weights, updates
    total = hook(partial)
    assert [t.shape for t in total] == [(2, 3), (1,)]
    for t, p in zip(total, partial):
        np.testing.assert_array_equal(t, p)  # one rank: the sum is the part
    with pytest.raises(TypeError, match="optimizer_cls must be a fastopt optimizer class"):
        ShardedOptimizer(ShardedOptimizer, [np.zeros(3)], comm=MPI.COMM_SELF)


# ---------------------------------------------------------------------------
# One place per optimizer: the rules, the element language, the generated code.

from fastopt import _codegen  # noqa: E402
from fastopt.rule import RULES  # noqa: E402

PACKAGE = Path(fastopt.__file__).parent


def test_every_rule_is_written_in_the_element_language():
    for rule in RULES.values():
        prepared = _codegen.check_prepare(rule.prepare_ast)
        _codegen.check_element(rule.element_ast, rule.slots, prepared)
        assert rule.kind in fastopt.rule.KINDS
        if rule.two_phase:  # its decision too, in prepare's language
            assert _codegen.check_prepare(rule.decide_ast) == ("update_scale",)
            assert set(rule.reductions) <= set(_codegen.ELEMENT_REDUCTIONS)
        assert rule.family and rule.reference.__module__ == f"fastopt.algorithms.{rule.family}"


def test_the_build_reads_the_same_rules_as_the_registry():
    # setup.py parses the family modules without importing them; it must see
    # exactly the rules (and the code) the registry holds at run time
    from types import SimpleNamespace
    parsed = _codegen.read_families(str(PACKAGE))
    assert [r.name for r in parsed] == list(RULES)
    for p in parsed:
        r = RULES[p.name]
        assert (p.slots, p.scalars, p.convention, p.prepared) == \
            (r.slots, r.scalars, r.convention, r.prepared)
        assert p.bf16 == (r.bf16_refusal is None)
        assert (p.kind, p.reductions) == (r.kind, r.reductions)
        live = SimpleNamespace(name=r.name, slots=r.slots, scalars=r.scalars,
                               prepare=r.prepare_ast, element=r.element_ast,
                               reductions=r.reductions,
                               decide=r.decide_ast if r.two_phase else None)
        assert _codegen.fingerprint(p) == _codegen.fingerprint(live)


def test_the_cython_build_holds_the_current_rules():
    if "cython" not in fastopt.available_backends():
        pytest.skip("the Cython extension is not built")
    cb = fastopt.get_backend("cython")
    assert [name for name, _ in cb._ext.RULES] == list(RULES)


@pytest.mark.parametrize("source, message", [
    ("def e(g, w, m, a):\n    for i in range(3):\n        m = m + a\n    return w, m",
     "For statements"),
    ("def e(g, w, m, a):\n    m = np.exp(a)\n    return w, m", "call of 'np.exp'"),
    ("def e(g, w, m, a):\n    m = b * a\n    return w, m", "'b' is read before"),
    ("def e(g, w, m, a):\n    m = a\n    return m, w", "must return w, m"),
    ("def e(g, w, m, a):\n    m = a\n", "last statement must return"),
    ("def e(w, g, m, a):\n    return w, m", "arguments"),
    ("def e(g, w, m, a):\n    m = max(a)\n    return w, m", r"max\(\) takes 2"),
    ("def e(g, w, m, a):\n    m = 'x'\n    return w, m", "constant 'x'"),
    ("def e(g, w, m, a):\n    m = a if g > 0 else w\n    return w, m", "IfExp"),
    ("def e(g, w, m, a):\n    if g > 0:\n        q = a\n    m = q\n    return w, m",
     "'q' is read before"),
])
def test_the_element_language_refuses_what_it_cannot_render(source, message):
    fn = _codegen.parse_function(source)
    with pytest.raises(_codegen.LanguageError, match=message):
        _codegen.check_element(fn, ("m",), ("a",))


@pytest.mark.parametrize("source, message", [
    ("def p(lr, step):\n    if step <= 1:\n        return {'a': lr}\n    return {'b': lr}",
     "returns keys"),
    ("def p(lr):\n    return lr", "dict literal"),
    ("def p(lr):\n    x = lr\n", "every path must return"),
])
def test_prepare_must_return_the_same_named_scalars_on_every_path(source, message):
    with pytest.raises(_codegen.LanguageError, match=message):
        _codegen.check_prepare(_codegen.parse_function(source))


@pytest.mark.parametrize("backend", [b for b in fastopt.available_backends()
                                     if b != "cuda"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_lets_a_nan_win_on_every_backend(backend, dtype):
    # AMSGrad's vhat = max(vhat, v): a NaN in v (or in vhat) wins, as
    # np.maximum does; otherwise the larger value, the first one on a tie
    be = fastopt.get_backend(backend)
    vh = np.array([np.nan, 1.0, 2.0, 5.0, np.nan, 0.5], dtype)
    v = np.array([1.0, np.nan, 2.0, 3.0, np.nan, 0.7], dtype)
    p = np.zeros(6, dtype)
    g = np.zeros(6, dtype)
    m = np.zeros(6, dtype)
    # with g = 0 and beta_2 = 0, v becomes 0 * ... except where it is NaN;
    # so use beta_2 = 1 (1 - beta_2 = 0): v stays as it is
    be.adam_amsgrad(p, g, m, v, vh, 1e-3, 0.9, 1.0, 1e-7)
    expected = np.maximum(np.array([np.nan, 1.0, 2.0, 5.0, np.nan, 0.5]),
                          np.array([1.0, np.nan, 2.0, 3.0, np.nan, 0.7]))
    np.testing.assert_array_equal(vh, expected.astype(dtype))


def test_state_in_the_callers_arrays():
    """Optimizer._over_state (what fastopt.keras builds on): the slots, EMA
    and accumulators are the caller's arrays, used in place; a wrong array is
    refused before anything is built."""
    import fastopt
    rng = np.random.default_rng(0)
    w = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    state = {"momentum": [np.zeros_like(p) for p in w],
             "velocity": [np.zeros_like(p) for p in w],
             "ema": [np.zeros_like(p) for p in w]}
    opt = fastopt.Adam._over_state(w, state, learning_rate=0.1, use_ema=True)
    twin_w = [p.copy() for p in w]
    twin = fastopt.Adam(twin_w, learning_rate=0.1, use_ema=True)
    for _ in range(3):
        g = [rng.standard_normal(p.shape) for p in w]
        opt.step(g)
        twin.step([x.copy() for x in g])
    slots = twin.state_dict()["slots"]
    for k in range(2):
        np.testing.assert_array_equal(w[k], twin_w[k])
        np.testing.assert_array_equal(state["momentum"][k], slots[f"momentum/{k}"])
        np.testing.assert_array_equal(state["velocity"][k], slots[f"velocity/{k}"])
        np.testing.assert_array_equal(state["ema"][k], twin.ema_params[k])
    bad = dict(state, velocity=[np.zeros((2, 3)), np.zeros(4)])
    with pytest.raises(ValueError, match="velocity array of parameter 0 must be"):
        fastopt.Adam._over_state(w, bad)
    with pytest.raises(ValueError, match="no 'velocity' arrays given"):
        fastopt.Adam._over_state(w, {"momentum": state["momentum"]})
    with pytest.raises(ValueError, match="1 momentum arrays for 2 parameters"):
        fastopt.Adam._over_state(w, dict(state, momentum=state["momentum"][:1]))
