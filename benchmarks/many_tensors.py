"""Many small tensors: fastopt's Adam against torch's fused Adam (issue 19, item 3).

The case of ``fastopt bench --optimizers adam --sizes 2e6 --tensors 200``:
float32, 2M parameters in 200 tensors of a small network's mixed shapes
(``fastopt.bench.cases.split_shapes``), each step Adam over all of them.  At
28 bytes per parameter a step moves 56 MB, more than a 32 MB L3, so with the
candidates interleaved each step finds most of its data evicted.

Candidates, timed once per round, rounds interleaved
(``fastopt.bench.ceiling.time_calls``):

* ``fastopt`` / ``fastopt views``: ``fastopt.Adam`` (backend ``auto``) on 200
  separately allocated parameter and gradient arrays, or on views of one
  parameter buffer and one gradient buffer (fastopt's own state is one buffer
  per slot in both);
* ``fastopt views shuffled``: views of one buffer each, the tensors laid out
  in a shuffled order: contiguous tensors whose neighbours in the chunk
  table are not their neighbours in memory (what separate allocations add
  to views, without the allocator's placement);
* ``fastopt pass``: the same optimizer's compiled pass alone (its plan's
  ``step``, no gradient matching or checks): ``fastopt`` minus this is the
  Python work of a step;
* ``fastopt by address``: separate arrays, the plan's chunk table ordered by
  the parameters' addresses instead of by tensor (the same chunks, so the
  same results);
* ``fastopt.torch`` / ``torch fused``: ``fastopt.torch.Adam`` and
  ``torch.optim.Adam(fused=True)`` on 200 ``torch.nn.Parameter`` of their
  own (separate allocations), and ``torch fused views`` on views of one
  buffer;
* ``rmw``: the in-place read-modify-write kernel over one 2M buffer (the
  memory floor of 28 bytes per parameter).

``--cache cold`` (default both): each candidate once per round, so every
step runs after the others evicted its data, as in ``fastopt bench`` without
``--sample-ms``; ``warm``: each sample repeats its candidate back to back for
about 20 ms (``--sample-ms 20``), as in a training loop that does little
between steps.  Each of ``--runs`` runs reports the medians of its rounds and
the ratios to torch fused, so "at least 3x in each of 5 runs" can be read off.

    python benchmarks/many_tensors.py [--runs 5] [--rounds 41] [--threads 2]
        [--cache cold,warm] [--json benchmarks/results/many-tensors-<machine>.json]

About a minute on a 2-core machine (compiles included).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import fastopt
from fastopt.bench.cases import make_optimizer, split_shapes, timing_arrays
from fastopt.bench.ceiling import machine_info, machine_line, rmw_step, time_calls

SIZE, TENSORS = 2_000_000, 200


def _views(arrays, order=None):
    """Copies of ``arrays`` as views of one new contiguous buffer, laid out
    in ``order`` (default: their own)."""
    buf = np.empty(sum(a.size for a in arrays), arrays[0].dtype)
    out, k = [None] * len(arrays), 0
    for i in range(len(arrays)) if order is None else order:
        a = arrays[i]
        out[i] = buf[k:k + a.size].reshape(a.shape)
        out[i][...] = a
        k += a.size
    return out


def _fastopt(params, grads, pass_only=False, by_address=False):
    opt = make_optimizer("adam", params, "auto")
    opt.step(grads)
    if not (pass_only or by_address):
        return opt, lambda: opt.step(grads)
    (group,) = opt._tensor_groups
    plan = group.plan
    if by_address:
        table = plan._table
        order = np.argsort(plan._ptrs[0][table[0]] + table[1] * plan.params[0].itemsize,
                           kind="stable")
        plan._table = np.ascontiguousarray(table[:, order])
        return opt, lambda: opt.step(grads)
    scalars = opt._scalars(opt._param_groups[0].hyperparams, 1e-3, 1)
    return opt, lambda: plan.step(grads, group.factors, scalars)


def _torch(torch, params, grads, fastopt_torch):
    tensors = []
    for p, g in zip(params, grads):
        t = torch.nn.Parameter(torch.from_numpy(p))
        t.grad = torch.from_numpy(g)
        tensors.append(t)
    if fastopt_torch:
        import fastopt.torch as ft
        opt = ft.Adam(tensors, lr=1e-3)
    else:
        opt = torch.optim.Adam(tensors, lr=1e-3, fused=True)
    opt.step()
    return opt.step


class _Candidates(dict):
    """``{name: step}``, and ``backend``: what ``auto`` chose for fastopt."""

    backend = None


def candidates(torch, shapes):
    """``{name: step}``, every candidate over its own copy of the same values."""
    base, grads = timing_arrays(shapes, "float32", seed=0)
    fns = _Candidates()
    opt, fns["fastopt"] = _fastopt([p.copy() for p in base], [g.copy() for g in grads])
    fns.backend = opt.backends["float32"]
    _, fns["fastopt views"] = _fastopt(_views(base), _views(grads))
    shuffled = np.random.default_rng(1).permutation(len(shapes))
    _, fns["fastopt views shuffled"] = _fastopt(_views(base, shuffled), _views(grads, shuffled))
    _, fns["fastopt pass"] = _fastopt([p.copy() for p in base], [g.copy() for g in grads],
                                      pass_only=True)
    _, fns["fastopt by address"] = _fastopt([p.copy() for p in base],
                                            [g.copy() for g in grads], by_address=True)
    if torch is not None:
        fns["fastopt.torch"] = _torch(torch, [p.copy() for p in base],
                                      [g.copy() for g in grads], True)
        fns["torch fused"] = _torch(torch, [p.copy() for p in base],
                                    [g.copy() for g in grads], False)
        fns["torch fused views"] = _torch(torch, _views(base), _views(grads), False)
    fns["rmw"] = rmw_step(sum(int(np.prod(s)) for s in shapes), "float32", "flat")
    return fns


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="cold,warm")
    ap.add_argument("--tensors", type=int, default=TENSORS)
    ap.add_argument("--size", type=float, default=SIZE)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    caches = args.cache.split(",")
    if not set(caches) <= {"cold", "warm"}:
        ap.error("--cache: cold, warm or cold,warm")
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    fastopt.set_num_threads(args.threads)
    t_start = time.perf_counter()
    shapes = split_shapes(int(args.size), args.tensors)
    fns = candidates(torch, shapes)
    machine = machine_info()
    machine["load_average_start"] = list(os.getloadavg())
    print(machine_line(machine))
    print("load average %.2f %.2f %.2f" % os.getloadavg())
    if torch is not None:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"Adam float32, {len(shapes)} tensors, {int(args.size)} parameters, fastopt "
          f"backend {fns.backend}")
    runs = []
    for r in range(args.runs):
        for cache in caches:
            times = time_calls(fns, args.rounds, warmup=2,
                               sample_time=0.02 if cache == "warm" else 0.0)
            med = {k: statistics.median(v) for k, v in times.items()}
            torch_t = med.get("torch fused")
            ratio = {k: torch_t / t for k, t in med.items()} if torch_t else {}
            runs.append({"run": r, "cache": cache, "median_s": med,
                         "torch_fused_over": ratio})
            line = "  ".join(f"{k} {1e3 * t:.3f} ms" + (f" ({ratio[k]:.2f}x)" if ratio else "")
                             for k, t in med.items())
            print(f"run {r} {cache}: {line}")
            sys.stdout.flush()
    summary = {}
    for cache in caches:
        mine = [x for x in runs if x["cache"] == cache]
        summary[cache] = {k: [x["torch_fused_over"].get(k) for x in mine]
                          for k in ("fastopt", "fastopt views", "fastopt.torch")}
        if torch is not None:
            print(f"{cache}: torch fused / fastopt per run: "
                  + ", ".join(f"{v:.2f}x" for v in summary[cache]["fastopt"]))
    machine["load_average_end"] = list(os.getloadavg())
    out = {"machine": machine, "torch": None if torch is None else torch.__version__,
           "threads": args.threads, "tensors": len(shapes), "size": int(args.size),
           "backend": fns.backend, "shapes": [list(s) for s in shapes], "rounds": args.rounds, "runs": runs,
           "summary": summary, "seconds": time.perf_counter() - t_start}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
