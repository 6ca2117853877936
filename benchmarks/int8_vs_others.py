"""fastopt's 8-bit Adam state against bitsandbytes' and torchao's, on the CPU.

Benchmark only: bitsandbytes and torchao are never fastopt dependencies.  The
script runs with whichever of them imports (a missing or failing one is
recorded in the JSON with its error, not skipped silently).  Candidates, all
Adam with ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``, no weight
decay, on float32 parameters:

* ``torch float32``: ``torch.optim.Adam`` (float32 state; ``fused=True`` in
  the speed part);
* ``fastopt int8``: ``fastopt.torch.Adam(state_dtype="int8")``;
* ``bnb Adam8bit``: ``bitsandbytes.optim.Adam8bit`` with
  ``min_8bit_size=0``, so that every tensor's state is 8-bit, as in fastopt
  (its default, 4096, keeps smaller tensors in float32);
* ``torchao AdamW8bit``: ``torchao.optim.AdamW8bit(weight_decay=0)``, which
  keeps a tensor's state in 8 bits only when it has at least 4096 elements
  and a multiple of its block size (fixed in its source).  The JSON records,
  per problem, the share of the parameters each candidate holds in 8 bits.

(a) Accuracy: the final loss of each candidate on the problems of
``benchmarks/int8_codes.py``, written here in torch (autograd gradients,
float32) and sized so that the large tensors are quantised by every
candidate: ``quadratic`` (16,384 coordinates, curvatures log-uniform over
1e-4..1, noisy gradients, 3,000 steps), ``rosenbrock`` (chained, 4,096
dimensions, 5,000 steps), ``mlp`` (64-256-16 tanh/softmax network with
biases, synthetic teacher data, batch 32, 20 epochs), ``drop`` (8,192
coordinates, the gradient of a quarter of them drops a hundredfold at step
1,000, 6,000 steps); each seed's loss divided by the float32 run's.

(b) Speed: one ``step()`` on a single 9,999,872-element tensor (39,062
blocks of 256, so torchao quantises it; "1e7"), ``torch.set_num_threads``
and ``fastopt.set_num_threads`` at ``--threads`` (2), candidates interleaved
round by round, the median of ``--rounds`` samples each, ratios against
torch's fused float32 Adam taken in the same run.

    python benchmarks/int8_vs_others.py [--seeds 3] [--rounds 21] [--threads 2]
        [--skip-accuracy] [--skip-speed] [--json benchmarks/results/int8-vs-others-<machine>.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from fastopt.bench import ceiling  # noqa: E402

LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8


# --- candidates ---------------------------------------------------------------------------

def _imports():
    """``{name: module or the error string}`` of the optional libraries."""
    out = {}
    try:
        import bitsandbytes
        out["bitsandbytes"] = bitsandbytes
    except Exception as exc:  # noqa: BLE001 - any failure is reported, not hidden
        out["bitsandbytes"] = f"{type(exc).__name__}: {exc}"
    try:
        import torchao
        from torchao.optim import AdamW8bit  # noqa: F401
        out["torchao"] = torchao
    except Exception as exc:  # noqa: BLE001
        out["torchao"] = f"{type(exc).__name__}: {exc}"
    return out


def candidates(libs, fused=False):
    """``{name: make(params)}`` of the candidates that can run here."""
    out = {"torch float32": lambda ps: torch.optim.Adam(ps, lr=LR, betas=BETAS, eps=EPS,
                                                        fused=fused or None),
           "fastopt int8": lambda ps: ft.Adam(ps, lr=LR, betas=BETAS, eps=EPS,
                                              state_dtype="int8")}
    if not isinstance(libs["bitsandbytes"], str):
        bnb = libs["bitsandbytes"]
        out["bnb Adam8bit"] = lambda ps: bnb.optim.Adam8bit(ps, lr=LR, betas=BETAS, eps=EPS,
                                                            weight_decay=0, min_8bit_size=0)
    if not isinstance(libs["torchao"], str):
        from torchao.optim import AdamW8bit
        out["torchao AdamW8bit"] = lambda ps: AdamW8bit(ps, lr=LR, betas=BETAS, eps=EPS,
                                                        weight_decay=0)
    return out


def eight_bit_share(opt, params):
    """The share of the parameters whose optimizer state is held in 8 bits."""
    total = sum(p.numel() for p in params)
    quantised = 0
    for p in params:
        st = opt.state.get(p, {})
        for key in ("exp_avg", "state1"):  # the first moment's tensor
            v = st.get(key)
            if v is None:
                continue
            if v.dtype in (torch.int8, torch.uint8) or type(v).__name__ == "OptimState8bit":
                quantised += p.numel()
            break
    return quantised / total


# --- (a) accuracy -------------------------------------------------------------------------

def quadratic(make, seed):
    g = torch.Generator().manual_seed(seed)
    n = 16384
    h = 10.0 ** (torch.rand(n, generator=g) * 4 - 4)
    w = torch.randn(n, generator=g).requires_grad_()
    opt = make([w])
    noise = torch.Generator().manual_seed(seed + 100)
    for _ in range(3000):
        with torch.no_grad():
            w.grad = h * w + 0.1 * h.sqrt() * torch.randn(n, generator=noise)
        opt.step()
    with torch.no_grad():
        return float(0.5 * (h.double() * w.double() ** 2).sum()), opt, [w]


def rosenbrock(make, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(4096, generator=g) * 3 - 1.5).requires_grad_()
    opt = make([x])

    def f(x):
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()
    for _ in range(5000):
        opt.zero_grad()
        f(x).backward()
        opt.step()
    with torch.no_grad():
        return float(f(x.double())), opt, [x]


def mlp(make, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2000, 64, generator=g)
    teacher = torch.randn(64, 16, generator=g)
    y = torch.argmax(torch.tanh(X @ teacher) + 0.3 * torch.randn(2000, 16, generator=g), 1)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(),
                                torch.nn.Linear(256, 16))
    params = list(model.parameters())
    opt = make(params)
    order = torch.Generator().manual_seed(seed + 7)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(20):
        idx = torch.randperm(2000, generator=order)
        for k in range(0, 2000, 32):
            b = idx[k:k + 32]
            opt.zero_grad()
            loss_fn(model(X[b]), y[b]).backward()
            opt.step()
    with torch.no_grad():
        return float(loss_fn(model(X), y)), opt, params


def drop(make, seed):
    g = torch.Generator().manual_seed(seed)
    n = 8192
    scale = torch.ones(n)
    low = torch.rand(n, generator=g) < 0.25
    w = torch.zeros(n, requires_grad=True)
    target = torch.randn(n, generator=g)
    opt = make([w])
    for t in range(6000):
        if t == 1000:
            scale[low] = 0.01
        with torch.no_grad():
            w.grad = scale * ((w - target) + 0.5 * torch.randn(n, generator=g))
        opt.step()
    with torch.no_grad():
        return float(((w.double() - target.double()) ** 2).mean()), opt, [w]


PROBLEMS = {"quadratic": quadratic, "rosenbrock": rosenbrock, "mlp": mlp, "drop": drop}


def accuracy(cands, seeds):
    results = {}
    for pname, problem in PROBLEMS.items():
        losses, share = {}, {}
        for cname, make in cands.items():
            losses[cname] = []
            for s in range(seeds):
                try:
                    loss, opt, params = problem(make, s)
                except Exception as exc:  # noqa: BLE001 - recorded, the others go on
                    losses[cname] = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc(limit=3)
                    break
                losses[cname].append(loss)
                share[cname] = eight_bit_share(opt, params)
        base = np.array(losses["torch float32"])
        ratios = {c: (v if isinstance(v, str) else (np.array(v) / base).tolist())
                  for c, v in losses.items()}
        results[pname] = {"final_loss": losses, "ratio_to_float32": ratios,
                          "share_of_parameters_in_8_bits": share}
        print(f"{pname}: float32 state final loss {base.mean():.4g}")
        for c, r in ratios.items():
            if isinstance(r, str):
                print(f"  {c:20s} failed: {r}")
            else:
                print(f"  {c:20s} loss / float32's: mean {np.mean(r):.4f}, range "
                      f"{min(r):.4f}-{max(r):.4f}; 8-bit share {share.get(c, 0):.3f}")
    return results


# --- (b) speed ----------------------------------------------------------------------------

N_SPEED = 39062 * 256


def speed(cands, rounds, warmup=3):
    gen = torch.Generator().manual_seed(0)
    init = torch.randn(N_SPEED, generator=gen)
    grad = torch.randn(N_SPEED, generator=gen) * 1e-2
    runs = {}
    for cname, make in cands.items():
        p = torch.nn.Parameter(init.clone())
        p.grad = grad.clone()
        try:
            opt = make([p])
            for _ in range(warmup):  # state, compilation (torchao), caches
                opt.step()
        except Exception as exc:  # noqa: BLE001
            print(f"  {cname}: failed: {type(exc).__name__}: {exc}")
            runs[cname] = f"{type(exc).__name__}: {exc}"
            continue
        runs[cname] = (opt, p)
    samples = {c: [] for c, r in runs.items() if not isinstance(r, str)}
    for _ in range(rounds):
        for cname in samples:
            opt = runs[cname][0]
            t0 = time.perf_counter()
            opt.step()
            samples[cname].append(time.perf_counter() - t0)
    med = {c: statistics.median(v) for c, v in samples.items()}
    base = med.get("torch float32 fused") or med.get("torch float32")
    out = {}
    for c, r in runs.items():
        if isinstance(r, str):
            out[c] = {"error": r}
            continue
        out[c] = {"median_ms": med[c] * 1e3, "min_ms": min(samples[c]) * 1e3,
                  "max_ms": max(samples[c]) * 1e3, "speedup_vs_torch_fused": base / med[c],
                  "samples_ms": [s * 1e3 for s in samples[c]]}
        print(f"  {c:24s} median {med[c] * 1e3:8.2f} ms  ({base / med[c]:.2f}x torch fused "
              f"float32)")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    fastopt.set_num_threads(args.threads)
    start = time.time()
    libs = _imports()
    versions = {"torch": torch.__version__, "fastopt": fastopt.__version__}
    for name, mod in libs.items():
        versions[name] = mod if isinstance(mod, str) else getattr(mod, "__version__", "?")
    print("versions:", versions)
    out = {"command": "python benchmarks/int8_vs_others.py " + " ".join(
               sys.argv[1:] if argv is None else argv),
           "machine": ceiling.machine_info(), "threads": args.threads, "versions": versions,
           "hyperparameters": {"lr": LR, "betas": BETAS, "eps": EPS, "weight_decay": 0}}
    if not args.skip_accuracy:
        out["seeds"] = args.seeds
        out["accuracy"] = accuracy(candidates(libs), args.seeds)
    if not args.skip_speed:
        cands = candidates(libs)
        cands = {"torch float32 fused": candidates(libs, fused=True)["torch float32"],
                 "fastopt float32": lambda ps: ft.Adam(ps, lr=LR, betas=BETAS, eps=EPS),
                 **{c: m for c, m in cands.items() if c != "torch float32"}}
        print(f"speed: one step, {N_SPEED} float32 parameters, {args.threads} threads, "
              f"{args.rounds} interleaved rounds")
        out["speed"] = {"parameters": N_SPEED, "rounds": args.rounds,
                        "candidates": speed(cands, args.rounds)}
    out["seconds"] = round(time.time() - start, 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
