"""bfloat16 optimizer state: its speed, and what it does to training.

Usage::

    python benchmarks/reduced_precision.py speed [--sizes 1e7,3e7] [--rules adam,adam_amsgrad]
    python benchmarks/reduced_precision.py convergence [--seeds 5]
    python benchmarks/reduced_precision.py drift
    python benchmarks/reduced_precision.py summary results/reduced-precision-speed-*-run*.json
    python benchmarks/reduced_precision.py asm

``speed``: one ``opt.step`` of float32 parameters with float32 state, with
bfloat16 state rounded to nearest and with bfloat16 state rounded
stochastically (numba backend), interleaved round by round with two
reference kernels of the same traffic shape, at each size.  Reports the
median time, ns/param, the GB/s that the rule's own bytes per parameter
imply (float32 state: param r+w, grad r, 4+4 bytes per slot; bfloat16 state:
2+2 bytes per slot -- Adam 28 vs 20) and that as a percentage of the
in-place read-modify-write ceiling of ``ceiling.py`` (28 B/param, best of its
forms, timed in the same rounds).  ``rmw16`` is that ceiling kernel with its
two state arrays in bfloat16 (20 B/param, decoded and rounded to nearest like
fastopt's): what 20-byte traffic costs here without Adam's arithmetic.

``convergence``: ``fastopt compare`` (the same models, data, seeds and
batches) with the three kinds of state; the final training loss per
optimizer, and its difference to float32 state.

``drift``: Adam's ``v`` for a gradient whose size drops tenfold at step 500,
with float32 state and the two bfloat16 roundings -- the case where
round-to-nearest loses ``v``'s small steps.

``summary``: several ``speed`` result files (separate runs) as one table:
each cell the median over the runs, with their range.

``asm``: the instructions per 16 elements (one 512-bit iteration) of Adam's
vectorised loop with float32 state and with bfloat16 state, both roundings,
read from the machine code (compiled afresh in a temporary cache, because
Numba cannot show the assembly of cached code).

Results go to ``benchmarks/results/reduced-precision-<what>-<machine>.json``
with the machine, the command and the load average.
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

import numba  # noqa: E402
from numba import njit, prange  # noqa: E402

import fastopt  # noqa: E402
from fastopt import reference  # noqa: E402
from fastopt.rule import RULES  # noqa: E402
from fastopt.backends.numba_bf16 import bf16_decode, bf16_nearest  # noqa: E402

from fastopt.bench import ceiling  # noqa: E402

STATES = {"float32": {}, "bf16 nearest": {"state_dtype": "bfloat16"},
          "bf16 stochastic": {"state_dtype": "bfloat16", "state_rounding": "stochastic"},
          "int8": {"state_dtype": "int8"}}
OPTIMIZER = {"adam": (fastopt.Adam, {}), "adam_amsgrad": (fastopt.Adam, {"amsgrad": True}),
             "rmsprop": (fastopt.RMSprop, {}), "sgd_momentum": (fastopt.SGD, {"momentum": 0.9}),
             "adagrad": (fastopt.Adagrad, {})}


def bytes_per_param(rule, state):
    """Bytes per parameter of one step: bfloat16 slots are 2 bytes wide, 8-bit
    ones 1 byte and a float32 scale per 256."""
    dtype = STATES[state].get("state_dtype")
    return ceiling.bytes_per_param(rule, "float32",
                                   {None: None, "bfloat16": np.uint16, "int8": np.int8}[dtype])


def _stable_name(info):
    """A file-name tag for the machine, e.g. ``epyc-7b13-2core``."""
    words = [w for w in re.split(r"[^a-z0-9]+", info["cpu"].lower())
             if w and w not in {"amd", "intel", "r", "tm", "cpu", "processor", "core"}]
    return "-".join(words[:3] or ["cpu"]) + f"-{info['cores']}core"


# --- the 20-byte reference kernel ------------------------------------------------

@njit(error_model="numpy", boundscheck=False, nogil=True)
def _rmw16_inner(p, g, m, v, a, b, c):
    for i in range(p.shape[0]):
        gi = g[i]
        mi = bf16_decode(m[i]) * a + gi
        vi = bf16_decode(v[i]) * b + gi
        m[i] = bf16_nearest(mi)
        v[i] = bf16_nearest(vi)
        p[i] = p[i] + (mi + vi) * c


@njit(parallel=True, error_model="numpy", boundscheck=False, nogil=True)
def _rmw16(p, g, m, v, a, b, c):
    n = p.shape[0]
    chunk = 16384
    for k in prange((n + chunk - 1) // chunk):
        s = k * chunk
        e = min(s + chunk, n)
        _rmw16_inner(p[s:e], g[s:e], m[s:e], v[s:e], a, b, c)


def _start(what, argv):
    info = ceiling.machine_info()
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return {"what": what, "machine": info, "date": datetime.date.today().isoformat(),
            "command": "python benchmarks/reduced_precision.py " + " ".join(argv)}


def _finish(out, name):
    out["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    name = name or _stable_name(out["machine"])
    path = HERE / "results" / f"reduced-precision-{out['what']}-{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return path


# --- speed -----------------------------------------------------------------------

def speed(sizes, rules, repeats):
    med = lambda ts: float(np.median(ts))  # noqa: E731
    rows = []
    for n in sizes:
        forms = ceiling.time_calls({k: ceiling.rmw_step(n, form=k) for k in ceiling.RMW_FORMS},
                                   repeats=7)
        best = min(forms, key=lambda k: med(forms[k]))
        rmw = ceiling.rmw_step(n, form=best)
        rng = np.random.default_rng(n)
        p16, g16 = ((rng.random(n) * 1e-3).astype(np.float32) for _ in range(2))
        a, b, c = np.float32(0.5), np.float32(0.5), np.float32(-1e-6)
        m16, v16 = np.zeros(n, np.uint16), np.zeros(n, np.uint16)
        for rule in rules:
            cls, kw = OPTIMIZER[rule]
            rng = np.random.default_rng(0)
            fns = {}
            for state, options in STATES.items():
                w = rng.standard_normal(n, dtype=np.float32)
                grad = [rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2)]
                opt = cls([w], backend="numba", **kw, **options)
                fns[state] = (lambda o=opt, gl=grad: o.step(gl))
            fns["rmw"] = rmw
            fns["rmw16"] = lambda: _rmw16(p16, g16, m16, v16, a, b, c)
            times = ceiling.time_calls(fns, repeats=repeats)
            t_rmw = med(times["rmw"])
            rmw_gbps = ceiling.RMW_BYTES * n / t_rmw / 1e9
            rmw16_gbps = 20 * n / med(times["rmw16"]) / 1e9
            base = med(times["float32"])
            for state in STATES:
                t = med(times[state])
                bpp = bytes_per_param(rule, state)
                gbps = bpp * n / t / 1e9
                rows.append({"size": n, "rule": rule, "state": state, "bytes_per_param": bpp,
                             "ms": t * 1e3, "ns_per_param": t / n * 1e9, "gbps": gbps,
                             "pct_of_rmw": 100 * gbps / rmw_gbps, "speedup": base / t,
                             "rmw_gbps": rmw_gbps, "rmw_form": best,
                             "rmw16_gbps": rmw16_gbps,
                             "rmw16_ns_per_param": med(times["rmw16"]) / n * 1e9,
                             "iqr_ms": [float(np.percentile(times[state], q)) * 1e3
                                        for q in (25, 75)]})
            del fns
    return rows


def speed_table(r):
    lines = ["| size | rule | state | B/param | ms | ns/param | GB/s | % of rmw ceiling "
             "| vs float32 state |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        lines.append(f"| {x['size']:.0e} | {x['rule']} | {x['state']} | {x['bytes_per_param']:.3g} "
                     f"| {x['ms']:.2f} | {x['ns_per_param']:.3f} | {x['gbps']:.1f} "
                     f"| {x['pct_of_rmw']:.0f}% | {x['speedup']:.2f}x |")
    lines.append("")
    for x in r["rows"][::len(STATES)]:
        lines.append(f"- {x['size']:.0e}, {x['rule']} rounds: rmw ceiling ({x['rmw_form']} "
                     f"form, 28 B) {x['rmw_gbps']:.1f} GB/s; rmw16 (20 B, uint16 state) "
                     f"{x['rmw16_gbps']:.1f} GB/s = {x['rmw16_ns_per_param']:.3f} ns/param")
    m = r["machine"]
    lines.append(f"\nMachine: {ceiling.machine_line(m)}. Medians of {r['repeats']} interleaved "
                 f"samples after warm-up; load average {m['loadavg_at_start'][0]} at start, "
                 f"{m['loadavg_at_end'][0]} at end.")
    return "\n".join(lines)


def summary_table(paths):
    runs = [json.loads(Path(p).read_text()) for p in paths]
    lines = ["| size | rule | state | B/param | ns/param | vs float32 state | % of rmw ceiling |",
             "|---:|---|---|---:|---:|---:|---:|"]

    def cell(xs, key, fmt):
        values = [x[key] for x in xs]
        return (f"{fmt.format(np.median(values))} "
                f"({fmt.format(min(values))}–{fmt.format(max(values))})")
    for row in runs[0]["rows"]:
        key = (row["size"], row["rule"], row["state"])
        xs = [x for r in runs for x in r["rows"] if (x["size"], x["rule"], x["state"]) == key]
        lines.append(f"| {key[0]:.0e} | {key[1]} | {key[2]} | {row['bytes_per_param']:.3g} "
                     f"| {cell(xs, 'ns_per_param', '{:.3f}')} | {cell(xs, 'speedup', '{:.2f}x')} "
                     f"| {cell(xs, 'pct_of_rmw', '{:.0f}%')} |")
    for size in sorted({x["size"] for x in runs[0]["rows"]}):
        xs = [x for r in runs for x in r["rows"] if x["size"] == size and x["state"] == "float32"]
        lines.append(f"\n{size:.0e}: rmw ceiling {min(x['rmw_gbps'] for x in xs):.1f} to "
                     f"{max(x['rmw_gbps'] for x in xs):.1f} GB/s; rmw16 (20 B) "
                     f"{min(x['rmw16_ns_per_param'] for x in xs):.3f} to "
                     f"{max(x['rmw16_ns_per_param'] for x in xs):.3f} ns/param")
    loads = [(r["machine"]["loadavg_at_start"][0], r["machine"]["loadavg_at_end"][0])
             for r in runs]
    lines.append(f"\n{len(runs)} runs (each cell: median over the runs of each run's median of "
                 f"{runs[0]['repeats']} samples, and the range); load average at start/end: "
                 + ", ".join(f"{a}/{b}" for a, b in loads) + ".")
    return "\n".join(lines)


def _vector_loops(asm, slot_stores):
    """Instruction counts of the basic blocks that hold Adam's 512-bit loop body
    (a zmm square root and ``slot_stores`` narrowing stores)."""
    import re
    blocks, block = [], []
    for line in asm.splitlines():
        if re.match(r"^\.LBB", line):
            blocks.append(block)
            block = []
        block.append(line)
    blocks.append(block)
    return [sum(1 for x in b[1:] if x.startswith("\t") and not x.startswith("\t."))
            for b in blocks if "vsqrtps\t%zmm" in "\n".join(b)
            and "\n".join(b).count("vpmovdw") == slot_stores]


def asm_counts():
    if "FASTOPT_ASM_CHILD" not in os.environ:  # compile afresh in a child process
        import subprocess
        import tempfile
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache, "FASTOPT_ASM_CHILD": "1"}
            out = subprocess.run([sys.executable, __file__, "asm"], env=env, check=True,
                                 capture_output=True, text=True).stdout
        return json.loads(out)
    from fastopt.backends import numba_backend, numba_bf16
    n = 40_000
    for options in STATES.values():
        w = np.ones(n, np.float32)
        fastopt.Adam(w, backend="numba", **options).step(np.ones(n, np.float32))
    counts = {"float32": min(c for asm in numba_backend._loop_adam.inspect_asm().values()
                             for c in _vector_loops(asm, 0))}
    for sig, asm in numba_bf16._run_chunk.inspect_asm().items():
        state = "bf16 nearest" if sig[-2] == numba.types.none else "bf16 stochastic"
        counts[state] = min(_vector_loops(asm, 2))
    return counts


# --- convergence -------------------------------------------------------------------

def _banknotes():
    for candidate in (os.environ.get("FASTOPT_BANKNOTES"),
                      HERE.parent.parent / "shared" / "data" / "banknotes.csv",
                      "/work/shared/data/banknotes.csv"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


#: (data, model, epochs): the default experiment on both data sets and models,
#: and a long run where the final loss gets small
SETUPS = [("builtin", "logistic", 5), ("builtin", "mlp", 5), ("banknotes", "logistic", 5),
          ("banknotes", "mlp", 5), ("banknotes", "mlp", 50)]


def convergence(seeds, optimizers):
    from fastopt.train import (Standardizer, comparison, load_builtin, load_csv,
                               train_test_split)
    data = {"builtin": load_builtin()[:2]}
    path = _banknotes()
    if path:
        data["banknotes"] = load_csv(path, "class")[:2]
    setups = []
    for data_name, model, epochs in SETUPS:
        if data_name not in data:
            continue
        X_tr, X_te, y_tr, y_te = train_test_split(*data[data_name], 0.3, seed=0)
        scaler = Standardizer().fit(X_tr)
        X_tr, X_te = scaler.transform(X_tr), scaler.transform(X_te)
        finals = {}
        for state, options in STATES.items():
            runs = comparison.compare(X_tr, y_tr, (X_te, y_te), optimizers=optimizers,
                                      seeds=seeds, model=model, hidden=(16,),
                                      epochs=epochs, **options)
            finals[state] = {name: [r["history"]["loss"][-1] for r in runs
                                    if r["optimizer"] == name] for name in optimizers}
            finals[state + " val_accuracy"] = {
                name: [r["history"]["val_accuracy"][-1] for r in runs
                       if r["optimizer"] == name] for name in optimizers}
        setups.append({"data": data_name, "model": model, "epochs": epochs, "final_loss": {
            s: finals[s] for s in STATES}, "val_accuracy": {
            s: finals[s + " val_accuracy"] for s in STATES}})
    return setups


def convergence_table(r):
    low = [s for s in STATES if s != "float32"]
    lines = ["| data, model, epochs | optimizer | " + " | ".join(
        ["float32 state", *low]) + " | largest change of a seed's loss ("
        + " / ".join(low) + ") |", "|---|---|" + "---:|" * (len(STATES) + 1)]
    for s in r["setups"]:
        loss = s["final_loss"]
        for name in loss["float32"]:
            f32 = np.array(loss["float32"][name])
            cells = [f"{np.mean(loss[st][name]):.4g} ± {np.std(loss[st][name]):.2g}"
                     for st in STATES if st in loss]
            diffs = [np.max(np.abs(np.array(loss[st][name]) - f32)) for st in low if st in loss]
            lines.append(f"| {s['data']}, {s['model']}, {s['epochs']} | {name} | "
                         + " | ".join(cells)
                         + " | " + " / ".join(f"{d:.1e}" for d in diffs) + " |")
    m = r["machine"]
    lines.append(f"\nFinal training loss (Keras's last-epoch figure), mean ± std over "
                 f"{r['seeds']} seeds; `fastopt compare` defaults otherwise (lr 0.01, batch "
                 f"16, momentum 0.3; mlp: 16 relu units).  Machine: "
                 f"{ceiling.machine_line(m)}.")
    return "\n".join(lines)


# --- drift of v ----------------------------------------------------------------------

def drift(steps=6000, drop=500, n=4096):
    """Adam's v under a gradient of size 1 for ``drop`` steps, then 0.1."""
    rng = np.random.default_rng(0)
    signs = np.where(rng.random((steps, n)) < 0.5, -1.0, 1.0).astype(np.float32)
    out = {}
    checkpoints = [drop, drop + 500, drop + 1000, drop + 2000, drop + 5000]
    for state, options in STATES.items():
        w = np.zeros(n, np.float32)
        opt = fastopt.Adam(w, learning_rate=1e-4, backend="numba", **options)
        track = {}
        for t in range(steps):
            opt.step(signs[t] * np.float32(1.0 if t < drop else 0.1))
            if t + 1 in checkpoints:
                v = reference.decoded_slots(opt.state_dict()["slots"])["velocity/0"]
                track[t + 1] = float(np.mean(v))
        out[state] = track
    # exact: v = 0.999^(t-drop) v_drop + (1 - 0.999^(t-drop)) * 0.01
    exact = {}
    for t in checkpoints:
        v_drop = 1 - 0.999 ** drop
        k = t - drop
        exact[t] = 0.999 ** k * v_drop + (1 - 0.999 ** k) * 0.01
    out["exact (float64)"] = exact
    return {"steps": steps, "drop_at": drop, "n": n, "mean_v": out}


def drift_table(r):
    ts = list(r["mean_v"]["float32"])
    lines = ["| state | " + " | ".join(f"step {t}" for t in ts) + " |",
             "|---|" + "---:|" * len(ts)]
    for state, track in r["mean_v"].items():
        lines.append(f"| {state} | " + " | ".join(f"{track[t]:.4g}" for t in ts) + " |")
    lines.append(f"\nMean of Adam's v over {r['n']} coordinates; |g| = 1 until step "
                 f"{r['drop_at']}, then 0.1 (random signs); beta_2 = 0.999.")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--sizes", default="1e7,3e7")
    s.add_argument("--rules", default="adam,adam_amsgrad")
    s.add_argument("--repeats", type=int, default=31)
    s.add_argument("--threads", type=int, default=None)
    c = sub.add_parser("convergence")
    c.add_argument("--seeds", type=int, default=5)
    c.add_argument("--optimizers", default="momentum,adam,adamw,amsgrad,adagrad,rmsprop")
    sub.add_parser("drift")
    sub.add_parser("asm")
    m = sub.add_parser("summary")
    m.add_argument("files", nargs="+", help="speed result files of separate runs")
    for p in (s, c, sub.choices["drift"]):
        p.add_argument("--name", default=None, help="results file name (default from the CPU)")
    args = ap.parse_args(argv)
    if args.what == "summary":
        print(summary_table(args.files))
        return
    if args.what == "asm":
        counts = asm_counts()
        if "FASTOPT_ASM_CHILD" in os.environ:
            print(json.dumps(counts))
        else:
            print("Adam's vectorised loop, instructions per 16 elements: "
                  + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return
    t0 = time.perf_counter()
    if getattr(args, "threads", None):
        fastopt.set_num_threads(args.threads)
    out = _start(args.what, argv)
    if args.what == "speed":
        sizes = [int(float(x)) for x in args.sizes.split(",")]
        out.update(repeats=args.repeats, threads=fastopt.get_num_threads(),
                   numba_threading_layer=numba.threading_layer(),
                   rows=speed(sizes, args.rules.split(","), args.repeats))
        render = speed_table
    elif args.what == "convergence":
        out.update(seeds=args.seeds,
                   setups=convergence(args.seeds, args.optimizers.split(",")))
        render = convergence_table
    else:
        out.update(drift())
        render = drift_table
    out["seconds"] = round(time.perf_counter() - t0, 1)
    path = _finish(out, args.name)
    print(render(out))
    print(f"\n({out['seconds']} s; raw numbers in {path.relative_to(HERE.parent)})")


if __name__ == "__main__":
    main()
