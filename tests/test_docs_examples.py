"""Every Python code block of the documentation pages and the README runs.

The blocks are the fenced ```` ```python ```` blocks of ``docs/*.md`` and of the
README (``README.new.md`` while it waits to replace ``README.md``, then
``README.md``: the swap needs no change here).  The blocks of one page run in
page order in one namespace, as a reader would type them.

A block that needs more than fastopt's own dependencies says so in an HTML
comment on the line before its fence (invisible on GitHub and in the site):

``<!-- test: torch -->``, ``keras``, ``scipy``
    runs here when the package imports (the ``test`` extra installs all three;
    ``keras`` runs with ``KERAS_BACKEND=torch``, set by ``tests/conftest.py``);
``<!-- test: mpi -->``
    the block is a script, run under ``mpiexec -n 2`` (as
    ``tests/test_distributed.py`` runs its scripts), when mpi4py and mpiexec
    are installed (the ``test`` extra installs both);
``<!-- test: cuda -->``
    runs on Numba's CUDA simulator (``tests/conftest.py`` sets
    ``NUMBA_ENABLE_CUDASIM=1``) when numba-cuda is installed (``test`` extra);
``<!-- test: module fastopt.algorithms.adamax -->``
    runs in a copy of that module's namespace (the contributor guide's
    fragments of a family module, checked against the module's own names).

A missing package skips that block only, with the reason; nothing is skipped
where the ``test`` extra is installed.
"""
from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<info>[^\n`]*)$")
_MARK = re.compile(r"^\s*<!--\s*test:\s*(?P<mark>[^>]*?)\s*-->\s*$")


def readme() -> Path:
    """The README that is (or is about to become) the project's README."""
    new = ROOT / "README.new.md"
    return new if new.exists() else ROOT / "README.md"


def pages() -> list[Path]:
    docs = sorted(p for p in (ROOT / "docs").glob("*.md"))
    return [readme(), *docs]


def python_blocks(path: Path):
    """``(line, mark, code)`` of each fenced Python block of a Markdown file."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        start = i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence)
                                      and lines[i].strip().strip(fence[0]) == ""):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        if info.split()[:1] not in (["python"], ["py"], ["python3"]):
            continue
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        mark = _MARK.match(lines[j]) if j >= 0 else None
        out.append((start + 1, mark["mark"] if mark else "", "\n".join(body) + "\n"))
    return out


def _cases():
    for path in pages():
        for line, mark, code in python_blocks(path):
            rel = path.relative_to(ROOT).as_posix()
            yield pytest.param(path, line, mark, code, id=f"{rel}:{line}")


#: one namespace per page, the blocks run in page order
_NAMESPACES: dict[Path, dict] = {}


def _mpiexec():
    here = os.path.dirname(sys.executable)
    return shutil.which("mpiexec", path=here) or shutil.which("mpiexec")


def _run_mpi(code: str, tmp_path: Path):
    pytest.importorskip("mpi4py", reason="the mpi extra (in the test extra) is not installed")
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec is not installed (the mpich wheel of the test extra brings it)")
    script = tmp_path / "sample.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, str(script)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"mpiexec -n 2 failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize(("path", "line", "mark", "code"), list(_cases()))
def test_code_block_runs(path, line, mark, code, tmp_path, monkeypatch):
    kind, _, arg = mark.partition(" ")
    if kind == "mpi":
        _run_mpi(code, tmp_path)
        return
    if kind in ("torch", "keras", "scipy"):
        pytest.importorskip(kind, reason=f"{kind} (in the test extra) is not installed")
    elif kind == "cuda":
        import fastopt
        if "cuda" not in fastopt.available_backends():
            pytest.skip("numba-cuda (in the test extra) is not installed")
    elif kind == "module":
        namespace = dict(vars(importlib.import_module(arg.strip())))
    elif kind:
        raise AssertionError(f"{path.name}:{line}: unknown test mark {mark!r}")
    if kind != "module":
        namespace = _NAMESPACES.setdefault(path, {"__name__": f"docs_{path.stem}"})
    monkeypatch.chdir(tmp_path)   # files a sample writes land in a temporary folder
    before = dict(namespace)
    exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
    if kind == "module":
        # the guide quotes the module: each function it shows is the module's own
        # code (same bytecode and names), so the quotation cannot drift from it
        for name, fn in namespace.items():
            old = before.get(name)
            if callable(fn) and hasattr(fn, "__code__") and old is not fn \
                    and hasattr(old, "__code__"):
                assert (fn.__code__.co_code, fn.__code__.co_names) == \
                    (old.__code__.co_code, old.__code__.co_names), \
                    f"{path.name}:{line}: {name} differs from {arg.strip()}.{name}"


def test_every_page_is_found():
    """The collector sees the pages' blocks (a broken fence pattern would make
    every test above vanish without failing)."""
    found = {p.name: python_blocks(p) for p in pages()}
    assert found["quickstart.md"], "no Python block found in docs/quickstart.md"
    marks = {mark.partition(" ")[0] for blocks in found.values() for _, mark, _ in blocks}
    assert {"torch", "keras", "mpi"} <= marks, marks


def test_generated_tables_name_every_optimizer():
    """The optimizer table of the docs is generated from the exports and the
    registry: every exported optimizer class and every rule (compiled and
    ``per_tensor``) has its row."""
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        import fastopt_docs
    finally:
        sys.path.remove(str(ROOT / "docs" / "_ext"))
    import fastopt
    from fastopt.rule import RULES, TENSOR_RULES
    text = fastopt_docs.optimizers_markdown()
    for cls in fastopt_docs.optimizer_classes():
        assert f"### `{cls.__name__}`" in text
    covered = {r.name for cls in fastopt_docs.optimizer_classes()
               for r in fastopt_docs.class_rules(cls)}
    assert covered == set(RULES) | set(TENSOR_RULES), \
        (set(RULES) | set(TENSOR_RULES)) - covered
    exported = {n for n in fastopt.__all__ if isinstance(getattr(fastopt, n), type)
                and issubclass(getattr(fastopt, n), fastopt.Optimizer)} - {"Optimizer"}
    assert exported == {c.__name__ for c in fastopt_docs.optimizer_classes()}
