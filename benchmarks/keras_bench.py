"""fastopt.keras against Keras's own optimizers (torch backend, CPU): one
process, interleaved rounds.

``optimizer.apply_gradients`` on float32 variables, gradients made once and
reused; every candidate has its own variables and state.  Cases:

* ``8m``: 7 kernels of 1024x1100 and 7 biases of 1024: 14 variables, 7.9M
  parameters (the size the issue names);
* ``small``: the banknote MLP of the tests (4x8, 8, 8x1, 1): the per-call
  cost of ``apply``, which a small ``model.fit`` pays every batch.

Optimizers: Keras's defaults for each class (SGD with ``momentum=0.9``), and
Adam with ``weight_decay=0.004`` and ``clipnorm=1.0`` (the pipeline around the
update: Keras runs clipping and decay as passes of their own).  Both sides
get the same thread count (``torch.set_num_threads`` and
``fastopt.set_num_threads``); every candidate is timed once per round, rounds
interleaved (``fastopt.bench.ceiling.time_calls``); medians and the ratio
Keras / fastopt are reported.

    KERAS_BACKEND=torch python benchmarks/keras_bench.py [--rounds 15]
        [--cases 8m,small] [--threads N] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import fastopt  # noqa: E402
import fastopt.keras as fk  # noqa: E402
from fastopt.bench.ceiling import machine_info, time_calls  # noqa: E402

CASES = {
    "8m": [(1024, 1100)] * 7 + [(1024,)] * 7,
    "small": [(4, 8), (8,), (8, 1), (1,)],
}
OPTIMIZERS = [
    ("SGD", {"momentum": 0.9}),
    ("Adagrad", {}),
    ("RMSprop", {}),
    ("Adam", {}),
    ("AdamW", {}),
    ("Adamax", {}),
    ("Nadam", {}),
    ("Adadelta", {}),
    ("Lion", {}),
    ("Ftrl", {}),
    ("Adam", {"weight_decay": 0.004, "clipnorm": 1.0}),
]


def candidate(cls, kwargs, shapes, seed=0):
    rng = np.random.default_rng(seed)
    variables = [keras.Variable(rng.standard_normal(s).astype("float32")) for s in shapes]
    grads = [torch.from_numpy(0.01 * rng.standard_normal(s).astype("float32"))
             for s in shapes]
    opt = cls(learning_rate=1e-3, **kwargs)
    pairs = list(zip(grads, variables))
    opt.apply_gradients(pairs)  # builds the slots (and fastopt's plan)
    return lambda: opt.apply_gradients(pairs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="8m,small")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    fastopt.set_num_threads(args.threads)
    info = machine_info()
    print(f"{info}\nkeras {keras.__version__} (backend {keras.backend.backend()}), torch "
          f"{torch.__version__}, fastopt {fastopt.__version__}; {args.threads} threads each; "
          f"medians of {args.rounds} interleaved rounds")
    rows = []
    for case in args.cases.split(","):
        shapes = CASES[case]
        n = int(sum(np.prod(s) for s in shapes))
        for name, kwargs in OPTIMIZERS:
            label = name + "".join(f" {k}={v}" for k, v in kwargs.items())
            fns = {"keras": candidate(getattr(keras.optimizers, name), kwargs, shapes),
                   "fastopt.keras": candidate(getattr(fk, name), kwargs, shapes)}
            times = time_calls(fns, repeats=args.rounds, warmup=2,
                               sample_time=0.0 if case == "8m" else 0.02)
            med = {k: statistics.median(v) for k, v in times.items()}
            ratio = med["keras"] / med["fastopt.keras"]
            print(f"{case:>5} {n:>9,} params, {len(shapes):>2} variables  {label:<38} "
                  f"keras {med['keras'] * 1e3:8.3f} ms  fastopt.keras "
                  f"{med['fastopt.keras'] * 1e3:8.3f} ms  ratio {ratio:5.2f}x")
            rows.append({"case": case, "params": n, "variables": len(shapes),
                         "optimizer": name, "kwargs": kwargs, "median_s": med,
                         "samples_s": times, "ratio_keras_over_fastopt": ratio})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "threads": args.threads, "rounds": args.rounds,
                       "keras": keras.__version__, "torch": torch.__version__,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
