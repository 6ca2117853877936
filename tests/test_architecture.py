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
