"""fastopt.torch.AdamWScheduleFree against the authors' package on torch tensors.

Times one ``step()`` of ``fastopt.torch.AdamWScheduleFree`` and of
``schedulefree.AdamWScheduleFree`` (``foreach=True`` and ``False``), float32
CPU tensors, at a fixed thread count, after 3 warm-up steps; medians of 15.
Three layouts: 1e7 parameters in 1 tensor and in 148 tensors, 1e5 in 1000::

    python benchmarks/schedulefree_torch_bench.py [--threads 2]

Needs torch and ``schedulefree==1.4.1`` (the test extra).
"""
import argparse
import time

import numpy as np
import schedulefree
import torch

import fastopt
import fastopt.torch as ft

LAYOUTS = ((1, 10**7), (148, 10**7), (1000, 10**5))


def make(n_tensors, total):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(total // n_tensors, generator=g) for _ in range(n_tensors)]


def median_step(cls, init, repeats=15, **kw):
    ps = [a.clone().requires_grad_() for a in init]
    for p in ps:
        p.grad = torch.randn_like(p) * 1e-3
    opt = cls(ps, **kw)
    opt.train()
    for _ in range(3):
        opt.step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fastopt.set_num_threads(args.threads)
    for n, total in LAYOUTS:
        init = make(n, total)
        r = {"fastopt.torch": median_step(ft.AdamWScheduleFree, init),
             "package foreach": median_step(schedulefree.AdamWScheduleFree, init, foreach=True),
             "package for-loop": median_step(schedulefree.AdamWScheduleFree, init,
                                             foreach=False)}
        best = min(r["package foreach"], r["package for-loop"])
        print(f"{total:.0e} in {n} tensors: "
              + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in r.items())
              + f"; vs the package's faster path {best / r['fastopt.torch']:.1f}x")


if __name__ == "__main__":
    main()
