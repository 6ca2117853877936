"""The cost of ``use_ema`` and of gradient accumulation, against the plain step.

Usage::

    python benchmarks/ema_bench.py [--sizes 1e6,1e7] [--repeats 30] [--threads 2]
                                   [--backend numba] [--name NAME]

One float32 tensor of each size, ``fastopt.Adam``; the candidates are timed
round by round, interleaved (:func:`fastopt.bench.ceiling.time_calls`), and
reported as medians with their ratio to the plain step:

``plain``
    ``opt.step(g)`` (28 B/param: param r+w, grad r, m and v r+w).
``ema``
    ``use_ema=True``: the moving average folded into the kernel's pass on
    the numba backend (36 B/param: the average r+w more).
``ema separate``
    ``use_ema=True`` with the average as an in-place pass of its own after
    the step (what the other backends and calls that only accumulate run;
    40 B/param: the parameters read again).
``ema old``
    the step, then ``avg[...] = m*avg + (1-m)*p`` in NumPy: what fastopt
    did before (two temporaries of the parameter's size).
``accum add``
    a call that only accumulates, with ``loss_scale_factor``:
    ``acc += g*s`` in one in-place pass (12 B/param).
``accum apply``
    the last call of a cycle: ``acc = (acc + g*s) / steps`` in one pass, the
    kernel on ``acc``, ``acc = 0`` (12 + 28 + 4 = 44 B/param).
``accum add old``, ``accum apply old``
    the same in NumPy as before: ``acc += g*s`` (a temporary), and
    ``acc += g*s; acc /= steps``, the step, ``acc[...] = 0``.

Results go to ``benchmarks/results/ema-bench-<name>.json`` (default name:
the machine, e.g. ``epyc-7b13-2core``) with the machine, the command and the
load average; the table is printed.  Timings on a busy machine are noise:
look at the load average in the file.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

import fastopt
from fastopt.bench import ceiling

HERE = Path(__file__).resolve().parent

#: Bytes per parameter each candidate moves (float32).
BYTES = {"plain": 28, "ema": 36, "ema separate": 40, "ema old": None,
         "accum add": 12, "accum apply": 44, "accum add old": None,
         "accum apply old": None}


def _stable_name(info):
    words = [w for w in re.split(r"[^a-z0-9]+", info["cpu"].lower())
             if w and w not in {"amd", "intel", "r", "tm", "cpu", "processor", "core"}]
    return "-".join(words[:3] or ["cpu"]) + f"-{info['cores']}core"


def candidates(n, backend, seed=0):
    """``{name: callable}``: one call of each candidate on ``n`` float32
    parameters (each its own optimizer and arrays)."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(n).astype(np.float32) * np.float32(1e-3)

    def params():
        return rng.standard_normal(n).astype(np.float32)

    kw = dict(learning_rate=1e-4, backend=backend)
    fns = {}
    plain = fastopt.Adam(params(), **kw)
    fns["plain"] = lambda: plain.step(g)

    ema = fastopt.Adam(params(), use_ema=True, **kw)
    fns["ema"] = lambda: ema.step(g)

    separate = fastopt.Adam(params(), use_ema=True, **kw)
    for group in separate._tensor_groups:
        group.ema_fused = False
    fns["ema separate"] = lambda: separate.step(g)

    p_old = params()
    old = fastopt.Adam(p_old, **kw)
    avg = p_old.copy()
    m = 0.99

    def ema_old():
        old.step(g)
        avg[...] = m * avg + (1.0 - m) * p_old
    fns["ema old"] = ema_old

    acc_kw = dict(gradient_accumulation_steps=2, loss_scale_factor=128.0, **kw)
    adder = fastopt.Adam(params(), **acc_kw)

    def accum_add():
        adder.calls = 0  # the first call of a cycle: only accumulates
        adder.step(g)
    fns["accum add"] = accum_add

    applier = fastopt.Adam(params(), **acc_kw)

    def accum_apply():
        applier.calls = 1  # the last call of a cycle: applies
        applier.step(g)
    fns["accum apply"] = accum_apply

    acc = np.zeros(n, np.float32)
    s = 1.0 / 128.0

    def accum_add_old():
        acc[...] += g * s
    fns["accum add old"] = accum_add_old

    p_acc = params()
    old_applier = fastopt.Adam(p_acc, **kw)
    acc2 = np.zeros(n, np.float32)

    def accum_apply_old():
        acc2[...] += g * s
        acc2[...] /= 2
        old_applier.step(acc2)
        acc2[...] = 0.0
    fns["accum apply old"] = accum_apply_old
    return fns


def run(sizes, repeats, backend):
    rows = []
    for n in sizes:
        fns = candidates(n, backend)
        times = ceiling.time_calls(fns, repeats=repeats, warmup=3)
        med = {k: float(np.median(v)) for k, v in times.items()}
        for k, t in med.items():
            b = BYTES[k]
            rows.append({"size": n, "candidate": k, "median_ms": t * 1e3,
                         "ratio_to_plain": t / med["plain"], "bytes_per_param": b,
                         "gbps": None if b is None else b * n / t / 1e9,
                         "samples_ms": [x * 1e3 for x in times[k]]})
    return rows


def table(out):
    lines = [f"{'size':>10} {'candidate':<16} {'median ms':>10} {'x plain':>8} "
             f"{'B/param':>8} {'GB/s':>7}"]
    for r in out["rows"]:
        b = "-" if r["bytes_per_param"] is None else str(r["bytes_per_param"])
        gb = "-" if r["gbps"] is None else f"{r['gbps']:.1f}"
        lines.append(f"{r['size']:>10.0e} {r['candidate']:<16} {r['median_ms']:>10.3f} "
                     f"{r['ratio_to_plain']:>8.2f} {b:>8} {gb:>7}")
    m = out["machine"]
    lines.append(f"\nMachine: {ceiling.machine_line(m)}; backend {out['backend']}. Medians of "
                 f"{out['repeats']} interleaved rounds. Load average "
                 f"{m['loadavg_at_start'][0]} at the start, {m['loadavg_at_end'][0]} at the end.")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e6,1e7")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--name", default=None, help="file-name tag (default: the machine)")
    a = ap.parse_args(argv)
    fastopt.set_num_threads(a.threads)
    sizes = [int(float(s)) for s in a.sizes.split(",")]
    info = ceiling.machine_info()
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    out = {"what": "ema-bench", "machine": info, "date": datetime.date.today().isoformat(),
           "command": "python benchmarks/ema_bench.py " + " ".join(argv),
           "backend": a.backend, "repeats": a.repeats, "threads": a.threads}
    out["rows"] = run(sizes, a.repeats, a.backend)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    name = a.name or _stable_name(info)
    path = HERE / "results" / f"ema-bench-{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(table(out))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
