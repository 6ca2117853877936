"""Time `fastopt bench` rows of two installations of fastopt, interleaved.

For a change that must not move the numbers (the "one place per optimizer"
redesign): the previous commit installed in a second virtual environment,
the working tree in this one.  Each round runs every row once under each
installation, the order alternating from round to round; each run is one
``fastopt bench`` process (median of its own samples).  The result is the
median over rounds of each row's time per step, and the ratio new/old of
those medians.

    python benchmarks/old_vs_new.py --old /path/to/old-venv/bin/python \
        --rounds 7 --json benchmarks/results/old-vs-new-<machine>.json

Run it on a quiet machine: nothing else should be using the CPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

#: (label, fastopt bench arguments): the rows the redesign issue names
ROWS = [
    ("adam 1e7, 1 tensor, numba", ["--optimizers", "adam", "--sizes", "1e7",
                                   "--backends", "numba"]),
    ("adam 1e6, 200 tensors, auto", ["--optimizers", "adam", "--sizes", "1e6",
                                     "--tensors", "200", "--backends", "auto"]),
    ("adam 1e3, cython", ["--optimizers", "adam", "--sizes", "1e3", "--backends", "cython"]),
    ("adam 3e3, cython", ["--optimizers", "adam", "--sizes", "3e3", "--backends", "cython"]),
    ("rmsprop_centered_momentum 1e3, cython", ["--optimizers", "rmsprop_centered_momentum",
                                              "--sizes", "1e3", "--backends", "cython"]),
    ("rmsprop_centered_momentum 3e3, cython", ["--optimizers", "rmsprop_centered_momentum",
                                              "--sizes", "3e3", "--backends", "cython"]),
]
COMMON = ["--no-torch", "--no-naive", "--no-numerics", "--quiet"]


def run(python, args):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "b.json")
        script = os.path.join(os.path.dirname(python), "fastopt")  # the console script
        cmd = [python, script, "bench", *args, *COMMON, "--json", path]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=tmp,
                       env={**os.environ, "PYTHONPATH": ""})
        with open(path) as f:
            data = json.load(f)
    (row,) = data["rows"]
    return row["time_s"], data["machine"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="python of the old installation")
    ap.add_argument("--new", default=sys.executable, help="python of the new one")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    times = {label: {"old": [], "new": []} for label, _ in ROWS}
    machine = None
    for r in range(a.rounds):
        order = (("old", a.old), ("new", a.new)) if r % 2 == 0 else \
            (("new", a.new), ("old", a.old))
        for label, args in ROWS:
            for which, python in order:
                t, machine = run(python, args)
                times[label][which].append(t)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    out = {"machine": machine, "rounds": a.rounds, "rows": []}
    print(f"{'row':40s} {'old':>10s} {'new':>10s} {'new/old':>8s}")
    for label, _ in ROWS:
        old = statistics.median(times[label]["old"])
        new = statistics.median(times[label]["new"])
        out["rows"].append({"row": label, "old_s": old, "new_s": new, "ratio": new / old,
                            "old_samples": times[label]["old"],
                            "new_samples": times[label]["new"]})
        print(f"{label:40s} {old * 1e6:8.2f}us {new * 1e6:8.2f}us {new / old:8.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
