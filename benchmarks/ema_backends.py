"""Which backend ``"auto"`` should pick when the optimizer keeps a moving
average (``use_ema``): the numba backend moves the average inside the step's
pass, the cython backend runs it as a pass of its own after the step.

Usage::

    python benchmarks/ema_backends.py [--sizes 1e3,1e4,3e4,1e5,1e6,1e7]
                                      [--repeats 15] [--threads 2]

One float32 tensor of each size, ``fastopt.Adam`` on ``backend="numba"`` and
``"cython"``, with and without ``use_ema``; the four candidates are timed
round by round, interleaved (:func:`fastopt.bench.ceiling.time_calls`, a
sample at least 2 ms of back-to-back steps), medians in microseconds.  The
smallest size from which numba with ``use_ema`` is faster than cython with
``use_ema`` at every larger measured size is what
``fastopt.backends.EMA_NUMBA_FROM`` should be near.  Results:
``benchmarks/results/ema-backends-<machine>.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

import fastopt
from fastopt.bench import ceiling

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ema_bench import _stable_name  # noqa: E402


def candidates(n, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for backend in ("numba", "cython"):
        for ema in (False, True):
            p = rng.standard_normal(n).astype(np.float32)
            g = [rng.standard_normal(n).astype(np.float32)]
            opt = fastopt.Adam([p], learning_rate=1e-3, use_ema=ema, backend=backend)
            out[f"{backend}{' ema' if ema else ''}"] = (lambda o=opt, g=g: o.step(g))
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e3,1e4,3e4,1e5,1e6,1e7")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    fastopt.set_num_threads(a.threads)
    info = ceiling.machine_info()
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    rows = []
    for n in (int(float(s)) for s in a.sizes.split(",")):
        times = ceiling.time_calls(candidates(n), repeats=a.repeats, warmup=3,
                                   sample_time=0.002)
        med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        rows.append({"size": n, "median_us": med})
        print(f"{n:>10}  " + "  ".join(f"{k} {v:.1f}" for k, v in med.items()), flush=True)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = {"what": "ema-backends", "machine": info, "date": datetime.date.today().isoformat(),
           "command": "python benchmarks/ema_backends.py " + " ".join(argv),
           "threads": a.threads, "repeats": a.repeats, "rows": rows,
           "ema_numba_from": fastopt.backends.EMA_NUMBA_FROM}
    path = HERE / "results" / f"ema-backends-{_stable_name(info)}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
