"""Small-step latency: the whole ``opt.step([g])`` on one small float32 tensor.

Usage::

    python benchmarks/latency.py                      # fastopt's backends, Adam, 1e1..1e4
    python benchmarks/latency.py --torch-python /path/to/venv/bin/python
                                                      # ... and torch.optim.Adam(fused=True)

For each implementation and size: Adam with default hyperparameters on one
float32 tensor, a fixed gradient, one warm-up step, then ``--samples`` samples
of ``timeit`` (each sample repeats the step for about 2 ms); printed per step
as the minimum and the median over samples, in microseconds.  fastopt's
backends run in this process with their samples interleaved round by round.
PyTorch is never a dependency of fastopt: it is timed only if it can be
imported here or by the interpreter given with ``--torch-python`` (run as a
subprocess with ``--only-torch``, same method, after fastopt's rounds).

The machine and the load average are printed; on a shared machine take the
numbers when it is idle (see README.md in this folder).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import timeit

import numpy as np

SIZES = [10, 100, 1000, 10_000]


def _per_sample(fn, target_s=2e-3):
    t = timeit.timeit(fn, number=20) / 20
    return max(1, int(target_s / max(t, 1e-7)))


def _summary(samples_us):
    s = sorted(samples_us)
    return {"min_us": round(s[0], 3), "median_us": round(s[len(s) // 2], 3)}


def _rounds(steppers, samples):
    """``{key: summary}``; all steppers interleaved, one sample each per round."""
    numbers = {k: _per_sample(fn) for k, fn in steppers.items()}
    times = {k: [] for k in steppers}
    for _ in range(samples):
        for k, fn in steppers.items():
            times[k].append(timeit.timeit(fn, number=numbers[k]) / numbers[k] * 1e6)
    return {k: _summary(v) for k, v in times.items()}


def fastopt_steppers(sizes):
    import fastopt
    out = {}
    for backend in [b for b in ("cython", "numba") if b in fastopt.available_backends()]:
        for n in sizes:
            rng = np.random.default_rng(n)
            w = rng.standard_normal(n).astype(np.float32)
            grads = [(rng.standard_normal(n) * 1e-2).astype(np.float32)]
            opt = fastopt.Adam([w], backend=backend)
            opt.step(grads)                        # warm-up: JIT compile, page faults
            out[f"fastopt {backend}", n] = (lambda o=opt, g=grads: o.step(g))
    return out


def torch_steppers(sizes):
    import torch
    out = {}
    for n in sizes:
        rng = np.random.default_rng(n)
        p = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(n).astype(np.float32)))
        p.grad = torch.from_numpy((rng.standard_normal(n) * 1e-2).astype(np.float32))
        opt = torch.optim.Adam([p], fused=True)
        opt.step()
        out["torch fused", n] = opt.step
    return out, torch.__version__, torch.get_num_threads()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=41)
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=SIZES)
    ap.add_argument("--torch-python", help="an interpreter that can import torch")
    ap.add_argument("--only-torch", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.only_torch:
        steppers, version, threads = torch_steppers(args.sizes)
        res = _rounds(steppers, args.samples)
        print(json.dumps({"version": version, "threads": threads,
                          "results": [[k[0], k[1], v] for k, v in res.items()]}))
        return
    import fastopt
    from fastopt.bench.ceiling import machine_line
    print(machine_line(), f"| load average {os.getloadavg()}")
    results = _rounds(fastopt_steppers(args.sizes), args.samples)
    torch_cmd = None
    try:
        import torch  # noqa: F401
        torch_cmd = [sys.executable]
    except ImportError:
        if args.torch_python:
            torch_cmd = [args.torch_python]
    if torch_cmd:
        out = subprocess.run(torch_cmd + [__file__, "--only-torch", "--samples",
                                          str(args.samples), "--sizes",
                                          ",".join(map(str, args.sizes))],
                             capture_output=True, text=True, check=True)
        t = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"torch {t['version']} ({t['threads']} threads)")
        results.update({(k, n): v for k, n, v in t["results"]})
    impls = list(dict.fromkeys(k for k, _ in results))
    print(f"\nAdam, one float32 tensor, whole opt.step: µs per step, min / median of "
          f"{args.samples} samples (fastopt {fastopt.__version__})")
    print("| size | " + " | ".join(impls) + " |")
    print("|---:|" + "---:|" * len(impls))
    for n in args.sizes:
        cells = [f"{results[k, n]['min_us']:.2f} / {results[k, n]['median_us']:.2f}"
                 if (k, n) in results else "-" for k in impls]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
