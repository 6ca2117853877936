"""Compact benchmark report: a Markdown table for the README, raw numbers in JSON.

Usage::

    python benchmarks/report.py [--repeats 15] [--name epyc-2core]

Measures (every number a median of >= ``--repeats`` samples after warm-up,
the things compared with each other interleaved round by round):

* each of the 10 rules at 1e7 float32: fastopt (numba backend) ms/step, the
  GB/s that implies (``bytes_per_param(rule) * 1e7 / time``), that as a
  percentage of the in-place rmw ceiling, and the speed-up over the naive NumPy
  step.  The rmw kernel runs interleaved with each rule's samples, so each
  percentage compares numbers taken at the same moments;
* Adam at 1e3 and 1e5 float32 (µs/step, speed-up over naive);
* Adam over 200 mixed-shape float32 tensors totalling 2M params vs one 2M tensor;
* the ceiling: rmw (best of :data:`ceiling.RMW_FORMS`) and copy GB/s at 1e7.

Prints the table and writes ``benchmarks/results/report-<name>.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fastopt  # noqa: E402

import ceiling  # noqa: E402
import naive  # noqa: E402

N_BIG = 10_000_000


def _stable_name(info):
    words = [w for w in re.split(r"[^a-z0-9]+", info["cpu"].lower())
             if w and w not in {"amd", "intel", "r", "tm", "cpu", "processor", "core"}]
    return "-".join(words[:3] or ["cpu"]) + f"-{info['cores']}core"


def _arrays(rule, n, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2)
    return w, g


def _fastopt_step(rule, n, seed=0):
    cls, kw = CASES[rule]
    w, g = _arrays(rule, n, seed)
    opt = cls([w], backend="numba", **kw)
    grads = [g]
    return lambda: opt.step(grads)


def _naive_step(rule, n, seed=1):
    w, g = _arrays(rule, n, seed)
    return naive.stepper(rule, w, g)


def _batched(fn, k):
    def run():
        for _ in range(k):
            fn()
    return run


CASES = {rule: (cls, kw) for rule, cls, kw in naive.cases()}


def measure(repeats):
    info = ceiling.machine_info()
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    med = lambda ts: float(np.median(ts))  # noqa: E731
    out = {"machine": info, "date": datetime.date.today().isoformat(),
           "command": "python benchmarks/report.py " + " ".join(sys.argv[1:]),
           "repeats": repeats}

    # the ceiling: every rmw form and the copy, interleaved
    (p, g, m, v), (a, b, c) = ceiling._rmw_arrays(N_BIG)
    src, dst = _arrays("copy", N_BIG, 3)
    fns = {name: (lambda k=k: k(p, g, m, v, a, b, c)) for name, k in ceiling.RMW_FORMS.items()}
    fns["copy"] = lambda: ceiling._copy(dst, src)
    times = ceiling.time_calls(fns, repeats=max(repeats, 30))
    forms = {k: ceiling.RMW_BYTES * N_BIG / med(times[k]) / 1e9 for k in ceiling.RMW_FORMS}
    best = max(forms, key=forms.get)
    rmw_kernel = ceiling.RMW_FORMS[best]
    rmw = lambda: rmw_kernel(p, g, m, v, a, b, c)  # noqa: E731
    out["ceiling"] = {"rmw_forms_gbps": forms, "rmw_best_form": best,
                      "copy_gbps": ceiling.COPY_BYTES * N_BIG / med(times["copy"]) / 1e9}

    # the ten rules at 1e7, each interleaved with naive and with the rmw kernel
    rules, rmw_samples = {}, []
    for rule in CASES:
        fns = {"numba": _fastopt_step(rule, N_BIG), "naive": _naive_step(rule, N_BIG),
               "rmw": rmw}
        times = ceiling.time_calls(fns, repeats=repeats)
        bpp = ceiling.bytes_per_param(rule, np.float32)
        t_nb, t_nv, t_rmw = med(times["numba"]), med(times["naive"]), med(times["rmw"])
        gbps = bpp * N_BIG / t_nb / 1e9
        rmw_gbps = ceiling.RMW_BYTES * N_BIG / t_rmw / 1e9
        rmw_samples += times["rmw"]
        rules[rule] = {"bytes_per_param": bpp, "numba_ms": t_nb * 1e3, "naive_ms": t_nv * 1e3,
                       "gbps": gbps, "rmw_gbps_same_rounds": rmw_gbps,
                       "pct_of_rmw": 100 * gbps / rmw_gbps, "speedup_vs_naive": t_nv / t_nb}
        del fns
    out["rules_1e7_float32"] = rules
    out["ceiling"]["rmw_gbps"] = ceiling.RMW_BYTES * N_BIG / med(rmw_samples) / 1e9

    # Adam at small sizes (steps batched so that one sample is ~1 ms)
    small = {}
    for n in (1_000, 100_000):
        k = max(1, 2_000_000 // (n * 20))
        fns = {"numba": _batched(_fastopt_step("adam", n), k),
               "naive": _batched(_naive_step("adam", n), k)}
        times = ceiling.time_calls(fns, repeats=max(repeats, 41))
        t_nb, t_nv = med(times["numba"]) / k, med(times["naive"]) / k
        small[str(n)] = {"numba_us": t_nb * 1e6, "naive_us": t_nv * 1e6,
                         "speedup_vs_naive": t_nv / t_nb}
    out["adam_small_float32"] = small

    # 200 tensors vs one, 2M params
    total = 2_000_000
    rng = np.random.default_rng(5)
    fns = {}
    for label, shapes in (("200_tensors", naive.mixed_shapes(200, total)),
                          ("one_tensor", [(total,)])):
        params = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
        grads = [rng.standard_normal(s, dtype=np.float32) * np.float32(1e-2) for s in shapes]
        opt = fastopt.Adam(params, backend="numba")
        fns[label] = (lambda o=opt, gl=grads: o.step(gl))
    times = ceiling.time_calls(fns, repeats=max(repeats, 41))
    out["adam_2M_float32"] = {k: {"ms": med(ts) * 1e3,
                                  "gbps": 28 * total / med(ts) / 1e9} for k, ts in times.items()}
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def table(r):
    c = r["ceiling"]
    lines = ["| Case (float32) | fastopt numba | GB/s | % of rmw ceiling | vs naive NumPy |",
             "|---|---:|---:|---:|---:|"]
    for rule, x in r["rules_1e7_float32"].items():
        lines.append(f"| {rule}, 1e7 ({x['bytes_per_param']} B/param) | {x['numba_ms']:.2f} ms "
                     f"| {x['gbps']:.1f} | {x['pct_of_rmw']:.0f}% "
                     f"| {x['speedup_vs_naive']:.1f}x |")
    for n, x in r["adam_small_float32"].items():
        lines.append(f"| adam, {int(n):.0e} | {x['numba_us']:.1f} µs | | "
                     f"| {x['speedup_vs_naive']:.1f}x |")
    many, one = r["adam_2M_float32"]["200_tensors"], r["adam_2M_float32"]["one_tensor"]
    lines.append(f"| adam, 200 tensors / 2M params | {many['ms']:.2f} ms | {many['gbps']:.1f} "
                 f"| (56 MB, partly cache-resident) | |")
    lines.append(f"| adam, one 2M tensor | {one['ms']:.2f} ms | {one['gbps']:.1f} "
                 f"| (56 MB, partly cache-resident) | |")
    lines.append(f"| **ceiling**: in-place rmw, 28 B/elem ({c['rmw_best_form']} form), 1e7 "
                 f"| | {c['rmw_gbps']:.1f} | 100% | |")
    lines.append(f"| **ceiling**: copy, 8 B/elem counted, 1e7 | | {c['copy_gbps']:.1f} | | |")
    m = r["machine"]
    lines.append("")
    lines.append(f"Machine: {ceiling.machine_line(m)}. Medians of {r['repeats']} "
                 f"(small cases: >= 41) samples after warm-up; load average "
                 f"{m['loadavg_at_start'][0]} at start, {m['loadavg_at_end'][0]} at end. "
                 "% of ceiling = the rule's GB/s (its own bytes/param) / the rmw kernel's "
                 "GB/s measured in the same rounds.")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--name", default=None, help="results file name (default from the CPU)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    r = measure(max(15, args.repeats))
    r["seconds"] = round(time.perf_counter() - t0, 1)
    name = args.name or _stable_name(r["machine"])
    path = HERE / "results" / f"report-{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(r, indent=1) + "\n")
    print(table(r))
    print(f"\n({r['seconds']} s; raw numbers in {path.relative_to(HERE.parent)})")


if __name__ == "__main__":
    main()
