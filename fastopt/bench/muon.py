"""``fastopt bench --muon``: Muon's step split into Newton–Schulz and the rest.

Muon is not an elementwise optimizer: its cost is the matrix products of
Newton–Schulz (``~ 2 * ns_steps * (2 r^2 c + r^3)`` flops for an ``r x c``
matrix, ``r <= c``), not memory traffic, so it has no place in the
bytes-per-parameter table of :mod:`fastopt.bench.runner`.  This measures, for
a list of matrix shapes, at one thread count (fastopt's element loops,
NumPy's BLAS and torch all set to it):

* ``fastopt``: one whole ``fastopt.Muon`` step (median);
* ``newton_schulz``: :func:`fastopt.algorithms.muon.newton_schulz` alone on
  the same matrices, and ``elementwise``: the step with Newton–Schulz
  replaced by a copy (the momentum loop, the gradient pipeline, the update,
  Python);
* ``torch``: one ``torch.optim.Muon`` step over the same matrices (float32
  tensors sharing the arrays), torch's own Newton–Schulz alone (it casts to
  bfloat16, as torch 2.13 does), and the same iteration in float32 torch
  operations (what its matrix products cost without the cast).
"""
from __future__ import annotations

import time

import numpy as np

__all__ = ["DEFAULT_SHAPES", "run", "format_report"]

#: a transformer block's matrices at width 256 (attention, MLP in and out)
DEFAULT_SHAPES = ((256, 256), (256, 1024), (1024, 256))


def _median_time(fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def flops(shapes, ns_steps=5):
    """The Newton–Schulz multiply-adds x 2 of one step over ``shapes``."""
    total = 0
    for r, c in shapes:
        r, c = min(r, c), max(r, c)
        total += ns_steps * 2 * (2 * r * r * c + r ** 3)
    return total


def run(shapes=DEFAULT_SHAPES, dtype="float32", threads=None, backend="auto",
        convention="torch", repeats=7, warmup=2, torch=True):
    """Time Muon; returns a JSON-ready dict (see the module docstring)."""
    import fastopt
    from fastopt import blas
    from fastopt.algorithms import muon as M

    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [(rng.standard_normal(s) * 1e-2).astype(dtype) for s in shapes]
    old_threads = fastopt.get_num_threads()
    threads = threads or old_threads
    old_blas = blas.get_num_threads()
    tm = None
    if torch:
        try:
            import torch as tm
        except ImportError:
            tm = None
    old_torch = tm.get_num_threads() if tm is not None else None
    result = {"shapes": [list(s) for s in shapes], "dtype": dtype, "threads": threads,
              "convention": convention, "blas": blas.describe(),
              "gflop_per_step": flops(shapes) / 1e9}
    try:
        fastopt.set_num_threads(threads)
        opt = fastopt.Muon([p.copy() for p in params], backend=backend, convention=convention)
        result["backend"] = opt.backends[dtype]
        result["fastopt_s"] = _median_time(lambda: opt.step(grads), repeats, warmup)
        h = opt.param_groups[0]
        us = [g.copy() for g in grads]
        eps, clamp = (h["epsilon"], True) if convention == "torch" else (M.NS_EPS, False)

        def ns_only():
            for u in us:
                M.newton_schulz(u, h["ns_steps"], h["muon_a"], h["muon_b"], h["muon_c"],
                                eps=eps, clamp=clamp)
        with blas.limit(threads):
            result["newton_schulz_s"] = _median_time(ns_only, repeats, warmup)
        # the step with Newton–Schulz replaced by a copy: what is left
        real = M.newton_schulz
        M.newton_schulz = lambda x, *args, **kwargs: x.copy()
        try:
            result["elementwise_s"] = _median_time(lambda: opt.step(grads), repeats, warmup)
        finally:
            M.newton_schulz = real
        result["blas_threads_during_step"] = threads if blas.available() else None
        if tm is not None:
            tm.set_num_threads(threads)
            result["torch"] = tm.__version__
            tensors = []
            for p, g in zip(params, grads):
                t = tm.nn.Parameter(tm.from_numpy(p.copy()))
                t.grad = tm.from_numpy(g)
                tensors.append(t)
            topt = tm.optim.Muon(tensors, lr=1e-3)
            result["torch_s"] = _median_time(topt.step, repeats, warmup)
            from torch.optim._muon import _zeropower_via_newtonschulz as tns
            tgs = [tm.from_numpy(g) for g in grads]

            def torch_ns():
                for g in tgs:
                    tns(g, M.NS_COEFFICIENTS, 5, M.NS_EPS)
            result["torch_newton_schulz_s"] = _median_time(torch_ns, repeats, warmup)

            def torch_ns_float32():  # the same iteration without the bfloat16 cast
                a, b, c = M.NS_COEFFICIENTS
                for g in tgs:
                    x = g.T if g.size(0) > g.size(1) else g
                    x = x / x.norm().clamp(min=M.NS_EPS)
                    for _ in range(5):
                        gram = x @ x.T
                        x = tm.addmm(x, tm.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
            result["torch_newton_schulz_float32_s"] = _median_time(torch_ns_float32, repeats,
                                                                   warmup)
    finally:
        fastopt.set_num_threads(old_threads)
        if old_blas is not None:
            blas.set_num_threads(old_blas)
        if tm is not None:
            tm.set_num_threads(old_torch)
    return result


def format_report(r):
    """A few lines of text for :func:`run`'s result."""
    ms = lambda s: f"{s * 1e3:8.2f} ms"  # noqa: E731
    lines = [f"Muon ({r['convention']} convention), {r['dtype']}, matrices "
             f"{', '.join('x'.join(map(str, s)) for s in r['shapes'])}, {r['threads']} "
             f"thread(s), backend {r['backend']}, BLAS: {r['blas'] or 'not settable'}",
             f"  fastopt step       {ms(r['fastopt_s'])}",
             f"    Newton-Schulz    {ms(r['newton_schulz_s'])}  "
             f"({r['gflop_per_step'] / r['newton_schulz_s']:.1f} GFLOP/s)",
             f"    elementwise+rest {ms(r['elementwise_s'])}"]
    if "torch_s" in r:
        lines += [f"  torch {r['torch']} Muon step {ms(r['torch_s'])}  "
                  f"(fastopt {r['torch_s'] / r['fastopt_s']:.2f}x faster)",
                  f"    its Newton-Schulz (bfloat16) {ms(r['torch_newton_schulz_s'])}",
                  f"    the same in float32 torch ops {ms(r['torch_newton_schulz_float32_s'])}"]
    return "\n".join(lines)
