"""Measure the compiled backends' parallel thresholds and the ``auto`` rule.

Usage::

    python benchmarks/calibrate.py            # measure and print
    python benchmarks/calibrate.py --write    # ... and rewrite fastopt/backends/tuning.json

(a) Serial vs parallel crossover, per compiled backend (``numba``, and
    ``cython`` when it is built) and dtype: the whole ``opt.step`` time of Adam
    and SGD at sizes 2**10 .. 2**20, with ``set_parallel_threshold(0)``
    (always parallel) and ``set_parallel_threshold(2**62)`` (always serial),
    the two modes and all sizes interleaved round by round, medians over many
    samples.  The threshold is the smallest measured power of two from which
    parallel is faster at that size and at every larger measured size; the
    larger of Adam's and SGD's.  If parallel never wins at the largest size,
    the threshold is set just above the measured range.

(b) Backend choice for ``"auto"``: the step time of every available backend
    (Adam and SGD, the thresholds from (a) in force) at sizes 1e1 .. 1e7
    (the numpy backend up to 1e5 only; it is the slow float64 reference).
    A size's winner is the backend with the smallest geometric mean of the
    optimizers' medians (each optimizer weighs the same); a winner at one size
    that differs from the common winner of both neighbouring sizes is taken as
    noise and overruled.  Runs of sizes with the same winner become
    ``[max_size, backend]`` rows; the last row has ``max_size = null``.  So ``[[30000, "cython"], [null, "numba"]]`` reads:
    up to 30000 elements cython, above numba.

``--write`` keeps tuning.json's schema (``parallel_threshold``, ``auto``) and
adds ``measured_by``, ``machine``, ``date`` and ``measurements`` (medians in
microseconds).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import time
from pathlib import Path

import numpy as np

import fastopt
from fastopt.backends import TUNING
from fastopt.bench.ceiling import machine_info, machine_line

TUNING_PATH = Path(fastopt.__file__).resolve().parent / "backends" / "tuning.json"
DTYPES = ("float32", "float64")
OPTIMIZERS = {"adam": (fastopt.Adam, {}), "sgd": (fastopt.SGD, {})}
NEVER = 2 ** 62


def _make(name, n, dtype, backend):
    cls, kw = OPTIMIZERS[name]
    rng = np.random.default_rng(n)
    w = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 1e-2).astype(dtype)
    opt = cls([w], backend=backend, **kw)
    grads = [g]
    return lambda: opt.step(grads)


def _calls_per_sample(fn, target_s):
    """How many back-to-back calls make one sample of about ``target_s``."""
    t0 = time.perf_counter()
    fn()
    fn()
    dt = (time.perf_counter() - t0) / 2
    return max(1, min(200, int(target_s / max(dt, 1e-7))))


def _sample(fn, k):
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t0) / k


def measure_crossover(dtype, samples, target_s, backend="numba"):
    """``{opt: {"sizes", "parallel_us", "serial_us"}}`` (medians, µs)."""
    sizes = [2 ** e for e in range(10, 21)]
    out = {}
    for name in OPTIMIZERS:
        steps = {n: _make(name, n, dtype, backend) for n in sizes}
        ks = {}
        for n, fn in steps.items():   # compile/warm up both drivers
            for mode in (0, NEVER):
                fastopt.set_parallel_threshold(mode, dtype)
                fn()
            ks[n] = _calls_per_sample(fn, target_s)
        times = {(n, m): [] for n in sizes for m in (0, NEVER)}
        for r in range(samples):
            for n in sizes:
                # alternate which mode goes first, so neither always follows the other
                for mode in ((0, NEVER) if r % 2 == 0 else (NEVER, 0)):
                    fastopt.set_parallel_threshold(mode, dtype)
                    times[n, mode].append(_sample(steps[n], ks[n]))
        out[name] = {"sizes": sizes,
                     "parallel_us": [_us(np.median(times[n, 0])) for n in sizes],
                     "serial_us": [_us(np.median(times[n, NEVER])) for n in sizes]}
    return out


def threshold_from(rows):
    """Smallest size from which parallel wins at it and every larger size."""
    sizes, par, ser = rows["sizes"], rows["parallel_us"], rows["serial_us"]
    threshold = sizes[-1] * 2   # parallel never wins at the top: above the range
    for n, p, s in reversed(list(zip(sizes, par, ser))):
        if p < s:
            threshold = n
        else:
            break
    return threshold


SIZES = [10, 100, 1000, 3000, 10_000, 30_000, 100_000, 300_000, 1_000_000, 10_000_000]


def measure_backends(dtype, samples, target_s, backends, numpy_max=100_000):
    """``{opt: {"sizes", "<backend>_us" ...}}``; numpy_us is None above numpy_max."""
    out = {}
    for name in OPTIMIZERS:
        fns = {}
        for n in SIZES:
            for b in backends:
                if b != "numpy" or n <= numpy_max:
                    fns[n, b] = _make(name, n, dtype, b)
        ks = {}
        for key, fn in fns.items():
            fn()
            ks[key] = _calls_per_sample(fn, target_s)
        times = {key: [] for key in fns}
        reps = {key: (samples if key[0] <= numpy_max else max(9, samples // 3)) for key in fns}
        for r in range(samples):
            for key, fn in fns.items():   # every backend and size, interleaved
                if r < reps[key]:
                    times[key].append(_sample(fn, ks[key]))
        out[name] = {"sizes": SIZES}
        for b in backends:
            out[name][f"{b}_us"] = [_us(np.median(times[n, b])) if (n, b) in times else None
                                    for n in SIZES]
    return out


def auto_rule(results):
    """``[[max_size_or_None, backend], ...]`` from :func:`measure_backends`' output.

    A size's winner is the backend with the smallest geometric mean, over the
    optimizers, of its median step time (backends not measured at that size
    do not compete); an isolated winner between two sizes won by one other
    backend is overruled by them.
    """
    first = next(iter(results.values()))
    backends = [k[:-3] for k in first if k.endswith("_us")]
    winners = []
    for i, n in enumerate(first["sizes"]):
        scores = {}
        for b in backends:
            ts = [r[f"{b}_us"][i] for r in results.values()]
            if all(t is not None for t in ts):
                scores[b] = float(np.exp(np.mean(np.log(ts))))
        winners.append((n, min(scores, key=scores.get)))
    # a size whose winner differs from the common winner of both its
    # neighbours is noise (one core of a shared machine busy for a moment),
    # not a crossover and back: it goes to the neighbours' backend
    for i in range(1, len(winners) - 1):
        if winners[i - 1][1] == winners[i + 1][1] != winners[i][1]:
            winners[i] = (winners[i][0], winners[i - 1][1])
    rule = []
    for k, (n, backend) in enumerate(winners):
        last = k + 1 == len(winners) or winners[k + 1][1] != backend
        if last:
            rule.append([n, backend])
    rule[-1][0] = None
    return rule


def _us(seconds):
    x = float(seconds) * 1e6
    return float(f"{x:.3g}") if x < 1000 else round(x)


def _dump(obj):
    """JSON with number lists kept on one line."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]",
                  lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description="Calibrate fastopt's tuning.json on this machine.")
    ap.add_argument("--write", action="store_true", help=f"rewrite {TUNING_PATH}")
    ap.add_argument("--samples", type=int, default=41, help="samples per median (default 41)")
    ap.add_argument("--sample-ms", type=float, default=1.0,
                    help="target duration of one sample, ms (small steps are repeated)")
    args = ap.parse_args(argv)
    target = args.sample_ms / 1e3
    t_start = time.perf_counter()
    # load every backend before touching thresholds: fastopt.set_parallel_threshold
    # before the numpy backend's first load makes that load fail (see README)
    fastopt.available_backends()
    info = machine_info()
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    print(machine_line(info), "| load average", info["loadavg_at_start"])
    compiled = [b for b in ("numba", "cython") if b in fastopt.available_backends()]
    modules = {b: fastopt.get_backend(b) for b in compiled}
    if "cython" in modules:
        info["cython_openmp"] = modules["cython"].OPENMP
    old_thresholds = {(b, dt): modules[b].get_parallel_threshold(dt)
                      for b in compiled for dt in DTYPES}

    thresholds = {b: {} for b in compiled}
    auto = {}
    measurements = {"parallel_vs_serial": {b: {} for b in compiled}, "backends": {}}
    try:
        for b in compiled:
            for dt in DTYPES:
                cross = measure_crossover(dt, args.samples, target, b)
                measurements["parallel_vs_serial"][b][dt] = cross
                per_opt = {name: threshold_from(rows) for name, rows in cross.items()}
                thresholds[b][dt] = max(per_opt.values())
                print(f"\n{b} {dt}: serial vs parallel step time (µs, medians of "
                      f"{args.samples})")
                print("| size | " + " | ".join(f"{o} serial | {o} parallel" for o in cross)
                      + " |")
                print("|---:|" + "---:|" * (2 * len(cross)))
                for i, n in enumerate(cross["adam"]["sizes"]):
                    cells = " | ".join(f"{r['serial_us'][i]} | {r['parallel_us'][i]}"
                                       for r in cross.values())
                    print(f"| 2**{n.bit_length() - 1} | {cells} |")
                print(f"threshold per optimizer: {per_opt} -> {thresholds[b][dt]}")
    finally:
        for (b, dt), n in old_thresholds.items():
            modules[b].set_parallel_threshold(n, dt)
    for b in compiled:   # the new thresholds, for (b)
        for dt in DTYPES:
            modules[b].set_parallel_threshold(thresholds[b][dt], dt)
    candidates = ["numpy"] + compiled
    for dt in DTYPES:
        res = measure_backends(dt, args.samples, target, candidates)
        measurements["backends"][dt] = res
        auto[dt] = auto_rule(res)
        print(f"\n{dt}: step time per backend (µs)")
        print("| size | " + " | ".join(f"{o} {b}" for o in res for b in candidates) + " |")
        print("|---:|" + "---:|" * (len(candidates) * len(res)))
        for i, n in enumerate(SIZES):
            cells = " | ".join(f"{r[b + '_us'][i] or '-'}" for r in res.values()
                               for b in candidates)
            print(f"| {n:.0e} | {cells} |")
        print(f"auto rule: {json.dumps(auto[dt])}")

    tuning = {
        "measured_by": "python benchmarks/calibrate.py --write"
                       + ("" if args.samples == 41 else f" --samples {args.samples}")
                       + ("" if args.sample_ms == 1.0 else f" --sample-ms {args.sample_ms}"),
        "machine": info,
        "date": datetime.date.today().isoformat(),
        "parallel_threshold": {**TUNING.get("parallel_threshold", {}), **thresholds},
        "auto": auto,
        "measurements": {"unit": "us per step (median)", **measurements},
    }
    print(f"\nparallel_threshold: {json.dumps(thresholds)}")
    print(f"auto: {json.dumps(auto)}")
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at the end: {info['loadavg_at_end']}")
    print(f"calibration took {time.perf_counter() - t_start:.0f} s")
    if args.write:
        TUNING_PATH.write_text(_dump(tuning))
        print(f"wrote {TUNING_PATH}")


if __name__ == "__main__":
    main()
