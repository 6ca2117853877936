"""fastopt.torch against torch.optim on the CPU: one process, interleaved rounds.

Cases (float32 parameters, gradients set once and reused, every optimizer over
the same tensors with its own state):

* ``gpt2``: GPT-2-small-like shapes (embeddings 50257x768 and 1024x768, 12
  blocks of 768x2304, 768x768, 768x3072, 3072x768 with biases and layer
  norms): 148 tensors, 124M parameters;
* ``resnet50``: ResNet-50-like shapes (convolutions, batch norms, the final
  layer): 161 tensors, 25.6M parameters;
* ``many``: 1,000 tensors of 1,000 elements;
* ``one``: one tensor of 1,000 elements (the per-call cost of ``step``).

Candidates: AdamW (fastopt; torch fused, foreach and for-loop), RMSprop
(fastopt; torch foreach and for-loop: torch has no fused CPU RMSprop), and
AdamW with bfloat16 state (fastopt, ``state_dtype="bfloat16"``, round to
nearest).  DeepSpeed's ``DeepSpeedCPUAdam`` joins when ``deepspeed`` is
importable (benchmark-only; never a dependency).

Both libraries run with the same thread count (``--threads``, default all
cores): ``torch.set_num_threads`` and ``fastopt.set_num_threads``.  Every
candidate is timed once per round, rounds interleaved and each starting one
candidate later (``fastopt.bench.ceiling.time_calls``); medians are reported,
with the ratio to torch's best and the fraction of the machine's in-place
read-modify-write ceiling (measured in the same run) that the bytes moved per
step reach.  ``--json PATH`` writes everything.

    python benchmarks/torch_bench.py [--cases gpt2,resnet50,many,one]
        [--rounds 7] [--threads N] [--param-dtype bfloat16] [--json out.json]

``--optimizers adadelta,nadam,asgd,radam,rprop`` (any of :data:`CATALOGUE`)
times those instead of AdamW and RMSprop: ``fastopt.torch``'s class against
torch's foreach and for-loop implementations (torch 2.13 fuses none of them),
at torch's defaults, one optimizer at a time so that only one set of state
is allocated besides the parameters.

``--param-dtype bfloat16`` (or ``float16``) runs AdamW on parameters,
gradients and state of that dtype (fastopt against torch's fused, foreach and
for-loop implementations).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np
import torch

import fastopt
import fastopt.torch as ft
from fastopt.bench.ceiling import bytes_per_param, machine_info, rmw_gbps, time_calls


def gpt2_shapes():
    d, v, ctx, layers = 768, 50257, 1024, 12
    shapes = [(v, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,),                      # ln_1
                   (d, 3 * d), (3 * d,),            # attention in
                   (d, d), (d,),                    # attention out
                   (d,), (d,),                      # ln_2
                   (d, 4 * d), (4 * d,),            # mlp in
                   (4 * d, d), (d,)]                # mlp out
    return shapes + [(d,), (d,)]                    # ln_f


def resnet50_shapes():
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, cin, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if b == 0:
                shapes += [(4 * width, cin, 1, 1), (4 * width,), (4 * width,)]
            cin = 4 * width
    return shapes + [(1000, 2048), (1000,)]


CASES = {
    "gpt2": gpt2_shapes,
    "resnet50": resnet50_shapes,
    "many": lambda: [(1000,)] * 1000,
    "one": lambda: [(1000,)],
}


def make_params(shapes, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randn(s, generator=g) * 0.02).to(dtype))
        p.grad = (torch.randn(s, generator=g) * 1e-3).to(dtype)
        params.append(p)
    return params


versions = {}

#: ``--optimizers`` names beyond AdamW/RMSprop: torch class name and the
#: fastopt rule that counts the traffic (at torch's defaults)
CATALOGUE = {"adadelta": ("Adadelta", "adadelta_torch"), "nadam": ("NAdam", "nadam_torch"),
             "asgd": ("ASGD", "asgd_torch"), "radam": ("RAdam", "radam_torch"),
             "rprop": ("Rprop", "rprop_torch")}


def catalogue_candidates(params, name):
    """fastopt.torch's ``name`` against torch's foreach and for-loop steps."""
    cls, rule = CATALOGUE[name]
    return {f"{name}/fastopt": (getattr(ft, cls)(params), rule, None),
            f"{name}/torch-foreach": (getattr(torch.optim, cls)(params, foreach=True), rule,
                                      None),
            f"{name}/torch-for-loop": (getattr(torch.optim, cls)(params, foreach=False), rule,
                                       None)}


def candidates(params):
    """name -> (optimizer, rule for the traffic count, state dtype)."""
    if params[0].dtype in (torch.bfloat16, torch.float16):  # 2-byte parameters: AdamW only
        return {
            "adamw/fastopt": (ft.AdamW(params, lr=1e-4), "adamw", None),
            "adamw/torch-fused": (torch.optim.AdamW(params, lr=1e-4, fused=True), "adamw",
                                  None),
            "adamw/torch-foreach": (torch.optim.AdamW(params, lr=1e-4, foreach=True),
                                    "adamw", None),
            "adamw/torch-for-loop": (torch.optim.AdamW(params, lr=1e-4, foreach=False),
                                     "adamw", None),
        }
    out = {
        "adamw/fastopt": (ft.AdamW(params, lr=1e-4), "adamw", None),
        "adamw/torch-fused": (torch.optim.AdamW(params, lr=1e-4, fused=True), "adamw", None),
        "adamw/torch-foreach": (torch.optim.AdamW(params, lr=1e-4, foreach=True), "adamw",
                                None),
        "adamw/torch-for-loop": (torch.optim.AdamW(params, lr=1e-4, foreach=False), "adamw",
                                 None),
        "adamw-bf16state/fastopt": (ft.AdamW(params, lr=1e-4, state_dtype="bfloat16"),
                                    "adamw", np.uint16),
        "rmsprop/fastopt": (ft.RMSprop(params, lr=1e-4), "rmsprop", None),
        "rmsprop/torch-foreach": (torch.optim.RMSprop(params, lr=1e-4, foreach=True),
                                  "rmsprop", None),
        "rmsprop/torch-for-loop": (torch.optim.RMSprop(params, lr=1e-4, foreach=False),
                                   "rmsprop", None),
    }
    try:
        import deepspeed
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        out["adamw/deepspeed-cpu-adam"] = (DeepSpeedCPUAdam(params, lr=1e-4, adamw_mode=True),
                                           "adamw", None)
        versions["deepspeed"] = deepspeed.__version__
    except Exception as exc:  # not installed, or its C++ op cannot build here
        print(f"# DeepSpeedCPUAdam not measured: {type(exc).__name__}: {exc}"[:300],
              file=sys.stderr)
    return out


def run_case(name, rounds, ceiling, dtype=torch.float32, optimizer=None):
    shapes = CASES[name]()
    params = make_params(shapes, dtype=dtype)
    n = sum(p.numel() for p in params)
    cands = candidates(params) if optimizer is None else catalogue_candidates(params, optimizer)
    for opt, _, _ in cands.values():  # state allocated and first-touched
        opt.step()
    small = n < 1_000_000
    times = time_calls({k: v[0].step for k, v in cands.items()}, repeats=rounds, warmup=2,
                       sample_time=0.05 if small else 0.0)
    rows = {}
    for key, (_, rule, state) in cands.items():
        med = statistics.median(times[key])
        moved = bytes_per_param(rule, "float32", state) * n
        if dtype in (torch.bfloat16, torch.float16):  # every array 2 bytes an element
            moved //= 2
        rows[key] = {"median_s": med, "samples_s": times[key],
                     "gbps": moved / med / 1e9, "ceiling_fraction": moved / med / 1e9 / ceiling}
    for family in ("adamw", "rmsprop", *CATALOGUE):
        if not any(k.startswith(family + "/torch") for k in rows):
            continue
        torch_best = min(r["median_s"] for k, r in rows.items()
                         if k.startswith(family + "/torch"))
        for k, r in rows.items():
            if k.split("/")[0] in (family, family + "-bf16state"):
                r["speedup_vs_torch_best"] = torch_best / r["median_s"]
    return {"tensors": len(shapes), "params": n, "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="gpt2,resnet50,many,one")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--param-dtype", choices=["float32", "bfloat16", "float16"],
                    default="float32", help="bfloat16 or float16: parameters, gradients "
                    "and state in that dtype (AdamW only)")
    ap.add_argument("--optimizers", default="adamw,rmsprop",
                    help="adamw,rmsprop (together, with AdamW's bfloat16-state row), or any "
                         f"of {', '.join(CATALOGUE)}, each timed on its own")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    names = args.optimizers.split(",")
    bad = [x for x in names if x not in ("adamw", "rmsprop", *CATALOGUE)]
    if bad:
        ap.error(f"unknown optimizers {bad}")
    groups = ([None] if {"adamw", "rmsprop"} & set(names) else []) + \
        [x for x in names if x in CATALOGUE]
    torch.set_num_threads(args.threads)
    fastopt.set_num_threads(args.threads)
    info = machine_info()
    info.update(torch=torch.__version__, fastopt=fastopt.__version__,
                torch_threads=torch.get_num_threads(), fastopt_threads=fastopt.get_num_threads(),
                loadavg_at_start=os.getloadavg())
    ceiling = rmw_gbps(n=20_000_000, repeats=9)
    print(f"# {info['cpu']}, {info['cores']} cores; torch {info['torch']}, "
          f"{args.threads} threads each; rmw ceiling {ceiling:.1f} GB/s")
    results = {"machine": info, "rmw_ceiling_gbps": ceiling, "rounds": args.rounds,
               "param_dtype": args.param_dtype, "cases": {}}
    for name, group in [(c, g) for c in args.cases.split(",") for g in groups]:
        res = run_case(name, args.rounds, ceiling, getattr(torch, args.param_dtype), group)
        if group is not None:  # one optimizer per run_case: merge the rows per case
            old = results["cases"].get(name)
            if old is not None:
                old["rows"].update(res["rows"])
                res = {**old, "rows": res["rows"]}
            else:
                results["cases"][name] = dict(res)
        else:
            results["cases"][name] = res
        print(f"\n## {name}: {res['tensors']} tensors, {res['params']:,} parameters")
        print(f"{'candidate':28s} {'median':>11s} {'GB/s':>7s} {'ceiling':>8s} "
              f"{'vs torch best':>14s}")
        for key, r in res["rows"].items():
            med = r["median_s"]
            unit = f"{med * 1e3:8.2f} ms" if med >= 1e-3 else f"{med * 1e6:8.1f} us"
            print(f"{key:28s} {unit:>11s} {r['gbps']:7.1f} {r['ceiling_fraction']:7.0%} "
                  f"{r.get('speedup_vs_torch_best', float('nan')):13.2f}x")
        if name == "many" and "adamw/fastopt" in res["rows"]:
            per = res["rows"]["adamw/fastopt"]["median_s"] / res["tensors"]
            print(f"# fastopt AdamW: {per * 1e6:.2f} us per tensor, kernel and wrapper together")
    info["loadavg_at_end"] = os.getloadavg()
    info.update(versions)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
    return results


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
