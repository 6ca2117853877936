"""Pages of the fastopt documentation that are generated, never hand-kept.

At ``builder-inited`` this extension writes Markdown into ``docs/_generated/``
(git-ignored, excluded from the page list) which the pages ``{include}``:

* ``optimizers.md``: one table row per optimizer class exported by
  :mod:`fastopt` (its conventions and each convention's defaults, read from the
  class), and one section per class with every rule of its family module in the
  registry :data:`fastopt.rule.RULES`: the formula (the float64 reference's
  docstring, :attr:`fastopt.rule.Rule.formula`), the slots and the bytes one step
  moves per parameter (:meth:`fastopt.rule.Rule.bytes_per_param`).  A new family
  module appears here as soon as it is registered and exported.
* ``performance.md``: every JSON file under ``benchmarks/results/``, rendered as
  tables with the machine, the date and the command recorded in the file.
* ``goldens.md``: every golden recording under ``tests/golden/`` (its JSON
  sidecar): the framework call it recorded and the tolerance it is replayed at.
* ``compare.md`` and ``compare.png``: ``fastopt compare`` run at build time (a
  few seconds), its printed ranking and its plot.

The same functions are used by ``tests/test_docs_examples.py`` (which checks the
generated text mentions every exported optimizer), so they import nothing of
Sphinx at module level.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"
RESULTS = ROOT / "benchmarks" / "results"
GOLDEN = ROOT / "tests" / "golden"


# ---------------------------------------------------------------------------
# helpers

def _write(path: Path, text: str) -> None:
    """Write only when the content changed (keeps incremental builds incremental)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _cell(value) -> str:
    """A Markdown table cell: code for values, pipes escaped."""
    text = value if isinstance(value, str) else repr(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return "`" + _cell(text) + "`" if text else ""


def _table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def _fmt(x, digits=3) -> str:
    if x is None:
        return ""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return _cell(str(x))
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


# ---------------------------------------------------------------------------
# optimizers: from the exported classes and the registry

def optimizer_classes():
    """The optimizer classes :mod:`fastopt` exports, in ``__all__`` order."""
    import fastopt
    out = []
    for name in fastopt.__all__:
        obj = getattr(fastopt, name, None)
        if (inspect.isclass(obj) and issubclass(obj, fastopt.Optimizer)
                and obj is not fastopt.Optimizer):
            out.append(obj)
    return out


def class_rules(cls):
    """The registry's rules of the class's family module, under the conventions
    it offers: the ``per_tensor`` rules of :data:`fastopt.rule.TENSOR_RULES`
    first, then the compiled rules of :data:`fastopt.rule.RULES` (for a
    ``per_tensor`` optimizer, the element loops its host step calls)."""
    from fastopt.rule import RULES, TENSOR_RULES
    family = cls.__module__.rsplit(".", 1)[-1]
    return [r for registry in (TENSOR_RULES, RULES) for r in registry.values()
            if r.family == family and r.convention in cls._CONVENTIONS]


def _reference(rule):
    """Where the rule's float64 reference is documented: :mod:`fastopt.reference`
    for compiled rules, the family module for ``per_tensor`` ones."""
    if rule.kind == "per_tensor":
        ref = rule.reference
        return f"`{ref.__module__}.{ref.__qualname__}`"
    return f"{{func}}`fastopt.reference.{rule.name}`"


def _defaults(cls, convention):
    d = cls._TORCH_DEFAULTS if convention == "torch" else cls._DEFAULTS
    return ", ".join(f"{k}={v!r}" for k, v in d.items())


def _bf16_bytes(rule):
    if rule.bf16_refusal is not None:
        return "refused"
    # bfloat16 state is stored as 2-byte words (uint16), as fastopt bench counts it
    return str(rule.bytes_per_param("float32", "uint16"))


def _summary(doc):
    """The first paragraph of a docstring on one line, its reST roles
    (``:class:`x```) in MyST's spelling (``{class}`x```)."""
    doc = inspect.cleandoc(doc or "")
    text = " ".join(doc.split("\n\n", 1)[0].split())
    return re.sub(r":(\w+(?::\w+)?):`", r"{\1}`", text)


def _formula(rule):
    """The reference's docstring, its ``"Title::"`` shown as ``"Title:"``."""
    text = rule.formula or "(no formula in the reference's docstring)"
    first, _, rest = text.partition("\n")
    if first.endswith("::"):
        first = first[:-1]
    return first + ("\n" + rest if rest else "")


def _span(values):
    values = sorted(set(values))
    return "" if not values else str(values[0]) if len(values) == 1 \
        else f"{values[0]}-{values[-1]}"


def _label(cls):
    """The page anchor of a class (labels are case-insensitive: Nadam, NAdam)."""
    return f"opt-{cls.__name__.lower()}-{'-'.join(cls._CONVENTIONS)}"


def optimizers_markdown() -> str:
    classes = optimizer_classes()
    lines = [
        "<!-- generated by docs/_ext/fastopt_docs.py from fastopt.__all__ and "
        "fastopt.rule.RULES; do not edit -->\n",
        "| class | conventions | defaults | rules (kernels) | slots | bytes/param |",
        "|---|---|---|---|---|---|",
    ]
    for cls in classes:
        rules = class_rules(cls)
        defaults = "<br>".join(f"{c}: {_code(_defaults(cls, c))}" for c in cls._CONVENTIONS)
        slots = sorted({s for r in rules for s in r.slots}, key=lambda s: (len(s), s))
        lines.append("| " + " | ".join([
            f"[`{cls.__name__}`](#{_label(cls)})",
            ", ".join(cls._CONVENTIONS),
            defaults,
            ", ".join(_code(r.name) for r in rules),
            ", ".join(_code(s) for s in slots) or "none",
            _span(r.bytes_per_param("float32") for r in rules),
        ]) + " |")
    lines.append("")
    lines.append(
        "Bytes per parameter (bytes/param): what one step moves through memory per element "
        "with float32 parameters (the parameter read and written, the gradient read, "
        "each slot read and written), with float32 state and with "
        "`state_dtype=\"bfloat16\"`. It is the figure the performance tables divide "
        "by the measured time. A `per_tensor` rule keeps state that is not "
        "parameter-shaped and reads whole tensors on the host: its figure counts the "
        "parameter and the gradient only, the least it can move (the host work moves "
        "more; see [the notes](#notes-on-particular-optimizers) below). The compiled "
        "rules listed with it are the element loops its host step runs, and take the "
        "bfloat16 state it takes.\n")
    for cls in classes:
        lines.append(f"({_label(cls)})=")
        lines.append(f"### `{cls.__name__}`\n")
        lines.append(_summary(cls.__doc__) + "\n")
        lines.append(f"API: {{class}}`fastopt.{cls.__name__}`. Conventions: "
                     + ", ".join(f"`{c}`" for c in cls._CONVENTIONS) + ".\n")
        rows = []
        rules = class_rules(cls)
        # the element loops of a per_tensor rule take the state dtype it takes
        outer = {r.convention: r for r in rules if r.kind == "per_tensor"}
        for r in rules:
            owner = outer.get(r.convention, r)
            rows.append([_code(r.name), r.convention,
                         r.kind if owner is r else f"{r.kind} (in {_code(owner.name)})",
                         ", ".join(_code(s) for s in r.slots) or "none",
                         ", ".join(_code(s) for s in r.host_state) or "",
                         str(r.bytes_per_param("float32")),
                         _bf16_bytes(owner) if owner.bf16_refusal else _bf16_bytes(r)])
        lines.append(_table(["rule", "convention", "kind", "slots", "host state",
                             "bytes/param (float32 state)", "bytes/param (bfloat16 state)"],
                            rows))
        for r in class_rules(cls):
            lines.append(f"`{r.name}` ({_reference(r)}):\n")
            lines.append("```text\n" + _formula(r) + "\n```\n")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# benchmark results: every JSON under benchmarks/results/

def _machine(d):
    m = d.get("machine") or d.get("machine_info") or {}
    if not isinstance(m, dict):
        return _cell(str(m))
    keep = ("cpu", "cores", "threads", "python", "numpy", "numba", "threading_layer",
            "torch", "fastopt", "node", "processor", "machine", "cpu_count")
    parts = [f"{k} {m[k]}" for k in keep if k in m and not isinstance(m[k], (dict, list))]
    cpu = m.get("cpu")
    if isinstance(cpu, dict):  # pytest-benchmark's machine_info
        parts.insert(0, f"cpu {cpu.get('brand_raw', '')} ({cpu.get('count', '?')} cpus)")
    return ", ".join(parts)


def _rows_bench(d):
    """`fastopt bench --json`."""
    rows = d["rows"]
    header = ["optimizer", "rule", "backend", "size", "tensors", "dtype", "B/param",
              "ns/param", "GB/s", "% of ceiling", "vs naive NumPy", "vs torch", "numerics"]
    out = []
    for r in rows:
        out.append([_code(r.get("optimizer", "")), _code(r.get("rule", "")),
                    r.get("backend_used", r.get("backend", "")), r.get("size", ""),
                    r.get("tensors", ""), r.get("dtype", ""), r.get("bytes_per_param", ""),
                    _fmt(r.get("ns_per_param")), _fmt(r.get("gbps")),
                    _fmt(r.get("pct_of_ceiling")), _fmt(r.get("speedup_vs_naive")),
                    _fmt(r.get("speedup_vs_torch")),
                    "ok" if r.get("numerics_ok") else _fmt(r.get("numerics_ok"))])
    return _table(header, out)


def _rows_torch(d):
    """benchmarks/torch_bench.py: cases -> rows name/impl -> median."""
    parts = []
    for case, c in d["cases"].items():
        meta = ", ".join(f"{k} {v}" for k, v in c.items() if k != "rows"
                         and not isinstance(v, (dict, list)))
        parts.append(f"*{_cell(case)}* ({meta})\n")
        out = []
        for name, r in c["rows"].items():
            out.append([_code(name), _fmt(r.get("median_s", 0) * 1e3),
                        _fmt(r.get("gbps")), _fmt(r.get("ceiling_fraction")),
                        _fmt(r.get("speedup_vs_torch_best"))])
        parts.append(_table(["optimizer/implementation", "median ms", "GB/s",
                             "fraction of ceiling", "vs torch's best"], out))
    return "\n".join(parts)


def _rows_keras(d):
    out = []
    for r in d["rows"]:
        med = r.get("median_s", {})
        out.append([r.get("case", ""), r.get("params", ""), _code(r.get("optimizer", "")),
                    _code(json.dumps(r.get("kwargs", {}))),
                    _fmt(med.get("keras", 0) * 1e3), _fmt(med.get("fastopt.keras", 0) * 1e3),
                    _fmt(r.get("ratio_keras_over_fastopt"))])
    return _table(["case", "params", "optimizer", "arguments", "keras ms", "fastopt.keras ms",
                   "keras / fastopt"], out)


def _rows_pytest_bench(d):
    out = []
    for b in d["benchmarks"]:
        s = b.get("stats", {})
        out.append([_code(b.get("name", "")), _fmt(s.get("median", 0) * 1e6),
                    _fmt(s.get("min", 0) * 1e6), s.get("rounds", "")])
    return _table(["benchmark", "median us", "min us", "rounds"], out)


def _rows_drift(d):
    """benchmarks/reduced_precision.py drift: mean of v by state and step."""
    mean_v = d["mean_v"]
    steps = list(next(iter(mean_v.values())))
    rows = [[state, *(_fmt(v.get(k), 4) for k in steps)] for state, v in mean_v.items()]
    return _table(["state", *(f"step {k}" for k in steps)], rows)


def _rows_convergence(d):
    """benchmarks/reduced_precision.py convergence: final loss, mean ± std over seeds."""
    import statistics
    rows, states = [], None
    for setup in d["setups"]:
        loss = setup["final_loss"]
        states = list(loss)
        for opt in next(iter(loss.values())):
            cells = []
            for state in states:
                v = loss[state][opt]
                v = v if isinstance(v, list) else [v]
                sd = statistics.pstdev(v) if len(v) > 1 else 0.0
                cells.append(f"{_fmt(statistics.fmean(v), 4)} ± {_fmt(sd, 2)}")
            rows.append([f"{setup.get('data')}, {setup.get('model')}, {setup.get('epochs')}",
                         _code(opt), *cells])
    return _table(["data, model, epochs", "optimizer", *(f"final loss, {s} state"
                                                         for s in states or [])], rows)


def _rows_generic(d, key="rows"):
    rows = d[key]
    if isinstance(rows, dict):
        rows = [{"name": k, **(v if isinstance(v, dict) else {"value": v})}
                for k, v in rows.items()]
    cols = []
    for r in rows:
        for k, v in r.items():
            if k not in cols and not isinstance(v, (list, dict)):
                cols.append(k)
    return _table(cols, [[_fmt(r.get(k)) for k in cols] for r in rows])


def _summary_fields(d, skip):
    """Small scalar fields of a results file that are not rows (seeds, setups, ...)."""
    out = []
    for k, v in d.items():
        if k in skip:
            continue
        if isinstance(v, (dict, list)):
            text = json.dumps(v)
            if len(text) > 400:
                text = text[:400] + " ..."
            out.append(f"- `{k}`: `{_cell(text)}`")
        else:
            out.append(f"- `{k}`: {_fmt(v)}")
    return "\n".join(out) + "\n" if out else ""


def result_markdown(path: Path) -> str:
    d = json.loads(path.read_text())
    rel = path.relative_to(ROOT).as_posix()
    head = [f"### `{path.name}`\n",
            f"- file: `{rel}`",
            f"- machine: {_machine(d) or 'not recorded in the file'}"]
    date = d.get("date") or d.get("datetime")
    if date:
        head.append(f"- date: {date}")
    command = d.get("command")
    head.append(f"- command: `{_cell(command)}`" if command else
                "- command: not recorded in the file (see `benchmarks/README.md` for the "
                "script that writes this kind of file)")
    body_skip = {"machine", "machine_info", "date", "datetime", "command", "rows", "cases",
                 "benchmarks", "commit_info", "config", "ceiling", "warnings", "mean_v",
                 "setups"}
    if "config" in d and "rows" in d:
        body = _rows_bench(d)
    elif "mean_v" in d:
        body = _rows_drift(d)
    elif "setups" in d:
        body = _rows_convergence(d)
    elif "cases" in d:
        body = _rows_torch(d)
    elif "keras" in d and "rows" in d:
        body = _rows_keras(d)
    elif "benchmarks" in d:
        body = _rows_pytest_bench(d)
    elif "rows" in d:
        body = _rows_generic(d)
    else:
        body = ""
    extra = _summary_fields(d, body_skip | {"fastopt", "torch", "keras", "version"})
    return "\n".join(head) + "\n\n" + extra + "\n" + body + "\n"


def performance_markdown() -> str:
    files = sorted(RESULTS.glob("*.json"))
    out = ["<!-- generated by docs/_ext/fastopt_docs.py from benchmarks/results/*.json; "
           "do not edit -->\n"]
    for f in files:
        out.append(result_markdown(f))
    return "\n".join(out)


def write_results():
    """``_generated/results/<file stem>.md`` for each results file, so that a page
    can ``{include}`` the rendering of the files it discusses."""
    for f in sorted(RESULTS.glob("*.json")):
        _write(GENERATED / "results" / f"{f.stem}.md", result_markdown(f))


# ---------------------------------------------------------------------------
# the golden recordings: tests/golden/*.json (the sidecars of the .npz files)

def goldens_markdown() -> str:
    rows = []
    for f in sorted(GOLDEN.glob("*.json")):
        d = json.loads(f.read_text())
        fo = d.get("fastopt", {})
        version = d.get("framework_version", "")
        if d.get("framework") == "keras":
            version += f" ({d.get('backend', '')} {d.get('backend_version', '')}, floatx " \
                       f"{d.get('keras_floatx', '')})"
        constructor = d.get("constructor", "")
        if d.get("clip"):
            constructor += f"; {d['clip']}"
        rows.append([_code(d.get("name", f.stem)), f"{d.get('framework', '')} {version}",
                     _code(constructor), _code(f"fastopt.{fo.get('class', '')}"),
                     fo.get("convention", ""), d.get("steps", d.get("keras_iterations", "")),
                     _fmt(d.get("tolerance"))])
    return ("<!-- generated by docs/_ext/fastopt_docs.py from tests/golden/*.json; "
            "do not edit -->\n\n"
            + _table(["recording", "recorded with", "the framework's optimizer",
                      "replayed on", "convention", "steps", "tolerance"], rows))


# ---------------------------------------------------------------------------
# fastopt compare, run at build time

def compare_markdown(png: Path) -> str:
    from fastopt import cli
    argv = ["compare", "--plot", str(png)]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        rc = cli.main(argv)
    if rc not in (0, None):
        raise RuntimeError(f"fastopt {' '.join(argv)} exited with {rc}")
    text = buf.getvalue()
    # the per-seed progress lines carry wall times that change every run: keep the table
    table = text[text.index("rank"):] if "rank" in text else text
    table = "\n".join(line for line in table.splitlines() if not line.startswith("plot:"))
    return ("```text\n$ fastopt compare\n" + table.rstrip() + "\n```\n\n"
            f"![loss curves of fastopt compare]({png.name})\n")


# ---------------------------------------------------------------------------
# Sphinx

def generate(app=None):
    GENERATED.mkdir(parents=True, exist_ok=True)
    _write(GENERATED / "optimizers.md", optimizers_markdown())
    _write(GENERATED / "performance.md", performance_markdown())
    _write(GENERATED / "goldens.md", goldens_markdown())
    write_results()
    _write(GENERATED / "compare.md", compare_markdown(GENERATED / "compare.png"))


def _summary_before_literal(app, what, name, obj, options, lines):
    """The float64 references' docstrings: ``"Title::"``, then the formula.

    Two fixes, neither changing what the docstring says: (1) when the formula
    is all that follows the title line, Sphinx's docstring dedent (the margin
    of the lines after the first) takes its indentation away; it is put back,
    as Python wrote it, relative to the title.  (2) ``"Title::"`` becomes
    ``"Title:"`` and a bare ``"::"``, so autosummary's one-line summary
    ("Title:") does not end in a literal-block marker whose block it cut off.
    Both were -W errors."""
    if (len(lines) > 2 and lines[0].rstrip().endswith("::") and not lines[1].strip()
            and lines[2][:1] not in ("", " ")):
        lines[2:] = ["    " + line if line.strip() else line for line in lines[2:]]
    for i, line in enumerate(lines):
        if not line.strip():
            return
        if line.rstrip().endswith("::") and not line.strip() == "::":
            lines[i] = line.rstrip()[:-1]
            lines[i + 1:i + 1] = ["", "::"]
            return


def setup(app):
    app.connect("builder-inited", generate, priority=100)
    app.connect("autodoc-process-docstring", _summary_before_literal)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
