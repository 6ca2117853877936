"""Memory and step time of fastopt.distributed.ShardedOptimizer on 1, 2, 3 ranks.

    python benchmarks/distributed.py                     # ranks 1,2,3; Adam, 1e7 float32
    python benchmarks/distributed.py --ranks 1,2,4 --size 1e6 --threads 1

For each rank count it launches ``mpiexec -n N`` (the ``mpiexec`` next to
this Python, else on PATH) on this script in worker mode, and prints a
Markdown table.  Each worker builds a ``ShardedOptimizer(fastopt.Adam, [w])``
over one float32 tensor and times, after warm-up, ``--repeats`` samples of:

* ``step``: one whole ``opt.step(g)`` (checks, reduce-scatter, the fused
  kernel on the shard, all-gather), after a barrier; a sample is the slowest
  rank's time, and the table shows the median;
* its parts, timed alone on the same buffers: ``Reduce_scatter`` of the
  gradient, the wrapped optimizer's step on the shard, ``Allgatherv`` of the
  parameters, and, for comparison, an ``Allreduce`` of the whole gradient;
* the plain ``fastopt.Adam`` step on the whole tensor in one process (only
  with one rank).

State bytes are the optimizer state each rank holds (``opt.state_nbytes``).
The 1-minute load average is recorded before each launch.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np


def timed(comm, fn, repeats):
    """Median over ``repeats`` samples of the slowest rank's time of ``fn()``."""
    samples = []
    for _ in range(repeats):
        comm.Barrier()
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        samples.append(comm.allreduce(dt, op=_MPI.MAX))
    return float(np.median(samples))


def worker(args):
    global _MPI
    from mpi4py import MPI

    import fastopt
    from fastopt.distributed import ShardedOptimizer
    _MPI = MPI
    comm = MPI.COMM_WORLD
    n = int(args.size)
    rng = np.random.default_rng(0)
    w = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    opt = ShardedOptimizer(fastopt.Adam, [w], comm=comm, learning_rate=1e-6)
    inner, layout = opt.shard_optimizer, opt._layouts[0]
    pieces = [layout.gshard]
    for _ in range(args.warmup):
        opt.step([g])
    out = {"ranks": comm.size, "size": n, "threads": fastopt.get_num_threads(),
           "state_bytes": comm.allgather(opt.state_nbytes),
           "buffer_bytes": comm.allgather(opt.buffer_nbytes)}
    r = args.repeats
    out["step"] = timed(comm, lambda: opt.step([g]), r)
    out["reduce_scatter"] = timed(
        comm, lambda: comm.Reduce_scatter(g, layout.gshard, layout.counts, op=MPI.SUM), r)
    out["shard_step"] = timed(comm, lambda: inner.step(pieces), r)
    out["allgatherv"] = timed(comm, lambda: comm.Allgatherv(
        MPI.IN_PLACE, [w, layout.counts, layout.displs, MPI.FLOAT]), r)
    full = np.empty_like(g)
    out["allreduce"] = timed(comm, lambda: comm.Allreduce(g, full, op=MPI.SUM), r)
    if comm.size == 1:
        plain = fastopt.Adam([w.copy()], learning_rate=1e-6)
        for _ in range(args.warmup):
            plain.step([g])
        out["plain_step"] = timed(comm, lambda: plain.step([g]), r)
    if comm.rank == 0:
        print("BENCH " + json.dumps(out))


def driver(args):
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) \
        or shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("mpiexec not found: pip install 'fastopt[mpi]'")
    env = {**os.environ, "NUMBA_NUM_THREADS": str(args.threads),
           "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for n in [int(x) for x in args.ranks.split(",")]:
        cmd = [mpiexec, "-n", str(n), sys.executable, os.path.abspath(__file__), "--worker",
               "--size", str(args.size), "--repeats", str(args.repeats),
               "--warmup", str(args.warmup)]
        load = os.getloadavg()[0]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        line = next(x for x in proc.stdout.splitlines() if x.startswith("BENCH "))
        rows.append({**json.loads(line[6:]), "load_before": load})
        print(f"ranks {n}: done", file=sys.stderr)
    ms = 1e3
    loads = ", ".join(f"{r['load_before']:.2f}" for r in rows)
    print(f"Adam, {rows[0]['size']:.0e} float32 parameters, one tensor; "
          f"{args.threads} thread(s) per rank; medians of {args.repeats} samples (ms); "
          f"load average before each: {loads}\n")
    print("| ranks | state bytes per rank | step | reduce-scatter | shard update "
          "| allgatherv | allreduce (for comparison) | plain Adam, one process |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        state = max(r["state_bytes"])
        plain = f"{r['plain_step'] * ms:.2f}" if "plain_step" in r else ""
        print(f"| {r['ranks']} | {state / 1e6:.1f} MB | {r['step'] * ms:.2f} | "
              f"{r['reduce_scatter'] * ms:.2f} | {r['shard_step'] * ms:.2f} | "
              f"{r['allgatherv'] * ms:.2f} | {r['allreduce'] * ms:.2f} | {plain} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", default="1,2,3")
    p.add_argument("--size", type=float, default=1e7)
    p.add_argument("--threads", type=int, default=1, help="Numba/OpenMP threads per rank")
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
