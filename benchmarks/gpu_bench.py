"""GPU benchmark of the cuda backend: one optimizer step on one float32 tensor.

Usage (on a machine with an NVIDIA GPU, numba-cuda, and optionally PyTorch)::

    python benchmarks/gpu_bench.py                 # 1e6, 1e7, 1e8 elements
    python benchmarks/gpu_bench.py --sizes 1e6,1e7 --repeats 30
    python benchmarks/gpu_bench.py --smoke --out /tmp/smoke.json   # tiny, any device

For each size: Adam, Adam with 8-bit state (``state_dtype="int8"``), SGD
with momentum, RMSprop and Adagrad (fastopt's defaults, Keras convention) on
one float32 tensor held in a Numba device array, with a fixed device
gradient.  One warm-up step compiles the kernel;
then ``--repeats`` samples, each timing ``--inner`` consecutive ``opt.step``
calls between two CUDA events (so the optimizer's Python work counts, as it
does in a training loop); the median per step is reported.

* **GB/s** counts each rule's own traffic per element (parameter read and
  written, gradient read, every slot read and written: Adam 28 B, the others
  20 B, Adam with 8-bit state 16 B plus its scales;
  ``fastopt.bench.ceiling.bytes_per_param``).  The 8-bit row also gives
  the float32-state Adam's time over its own (above 1: 8-bit state is
  faster).
* **% of copy**: against a device-to-device copy (``copy_to_device`` between
  two device arrays of ``4 * size`` float32, counted as 32 B per element read
  plus written), timed the same way at each size.
* **torch fused**: where PyTorch with CUDA can be imported,
  ``torch.optim.Adam(fused=True)`` on a CUDA tensor of the same size, same
  method; the ratio is torch's time over fastopt's Adam (above 1: fastopt is
  faster).

Results go to ``benchmarks/results/gpu-<device>.json`` with the device name,
the versions and the date (``--out`` to choose the file).  Under Numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) the script runs only to exercise its
code path: its timings mean nothing, it says so, marks the file
``"simulator": true`` and requires ``--out`` so that nothing lands in
``benchmarks/results/`` by mistake.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import fastopt  # noqa: E402
from fastopt.bench.ceiling import bytes_per_param  # noqa: E402

#: (name in the results, rule for the traffic, state dtype, optimizer factory)
OPTIMIZERS = [
    ("adam", "adam", None, lambda p: fastopt.Adam(p)),
    ("adam_int8", "adam", "int8", lambda p: fastopt.Adam(p, state_dtype="int8")),
    ("sgd_momentum", "sgd_momentum", None, lambda p: fastopt.SGD(p, momentum=0.9)),
    ("rmsprop", "rmsprop", None, lambda p: fastopt.RMSprop(p)),
    ("adagrad", "adagrad", None, lambda p: fastopt.Adagrad(p)),
]


class Timer:
    """Median milliseconds per call of ``fn``: CUDA events on a GPU, the
    wall clock (with a synchronize) on the simulator."""

    def __init__(self, cuda, simulator, repeats, inner):
        self.cuda, self.simulator = cuda, simulator
        self.repeats, self.inner = repeats, inner

    def __call__(self, fn, sync=None):
        fn()  # warm-up: compiles, allocates
        (sync or self.cuda.synchronize)()
        samples = []
        for _ in range(self.repeats):
            if self.simulator:
                t0 = time.perf_counter()
                for _ in range(self.inner):
                    fn()
                samples.append((time.perf_counter() - t0) * 1e3 / self.inner)
            else:
                start, stop = self.cuda.event(), self.cuda.event()
                start.record()
                for _ in range(self.inner):
                    fn()
                stop.record()
                stop.synchronize()
                samples.append(self.cuda.event_elapsed_time(start, stop) / self.inner)
        return statistics.median(samples)


def copy_gb_s(cuda, timer, n):
    src = cuda.device_array(4 * n, dtype=np.float32)
    dst = cuda.device_array(4 * n, dtype=np.float32)
    ms = timer(lambda: dst.copy_to_device(src))
    return 32 * n / (ms * 1e-3) / 1e9, ms


def fastopt_step_ms(cuda_backend, timer, factory, n):
    p = cuda_backend.full(n, 1.0, np.float32)
    g = cuda_backend.full(n, 1e-3, np.float32)
    opt = factory(p)
    assert opt.backends == {"float32": "cuda"}
    return timer(lambda: opt.step(g))


def torch_adam_ms(timer, n):
    """torch.optim.Adam(fused=True) per step in ms, or None without torch/CUDA."""
    try:
        import torch
    except ImportError:
        return None, None
    if not torch.cuda.is_available():
        return None, None
    p = torch.ones(n, dtype=torch.float32, device="cuda", requires_grad=True)
    p.grad = torch.full_like(p, 1e-3)
    opt = torch.optim.Adam([p], fused=True)
    ms = timer(opt.step, sync=torch.cuda.synchronize)
    return ms, torch.__version__


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e6,1e7,1e8",
                    help="comma-separated element counts (default 1e6,1e7,1e8)")
    ap.add_argument("--repeats", type=int, default=20, help="samples per case (median)")
    ap.add_argument("--inner", type=int, default=10, help="steps per sample")
    ap.add_argument("--smoke", action="store_true",
                    help="a tiny run (256 elements, 2 samples of 1 step) that only "
                         "exercises the code path")
    ap.add_argument("--no-torch", action="store_true", help="skip torch.optim.Adam(fused=True)")
    ap.add_argument("--out", help="JSON file for the results (default: "
                                  "benchmarks/results/gpu-<device>.json)")
    args = ap.parse_args(argv)

    cb = fastopt.get_backend("cuda")  # ImportError with the way to get it
    from numba import cuda

    simulator = cb.SIMULATOR
    device = cb.device_name()
    if simulator and not args.out:
        ap.error("on the CUDA simulator the timings mean nothing: give --out (not "
                 "benchmarks/results/)")
    sizes = [256] if args.smoke else [int(float(s)) for s in args.sizes.split(",")]
    repeats, inner = (2, 1) if args.smoke else (args.repeats, args.inner)
    if simulator:
        cb.THREADS_PER_BLOCK = 8  # the simulator runs one Python thread per CUDA thread
        print("CUDA simulator: this run only exercises the code path; its timings are "
              "not GPU numbers.")
    timer = Timer(cuda, simulator, repeats, inner)

    results, copies, torch_version = [], {}, None
    for n in sizes:
        gb_copy, ms_copy = copy_gb_s(cuda, timer, n)
        copies[str(n)] = {"gb_s": gb_copy, "ms": ms_copy}
        adam_ms = None
        for name, rule, state_dtype, factory in OPTIMIZERS:
            ms = fastopt_step_ms(cb, timer, factory, n)
            gb = bytes_per_param(rule, np.float32, state_dtype) * n / (ms * 1e-3) / 1e9
            row = {"optimizer": name, "size": n, "ms": ms, "gb_s": gb,
                   "pct_of_copy": 100 * gb / gb_copy}
            if state_dtype is not None:
                row.update(state_dtype=state_dtype, float32_state_over_this=adam_ms / ms)
            if name == "adam":
                adam_ms = ms
                if not args.no_torch:
                    t_ms, torch_version = torch_adam_ms(timer, n)
                    if t_ms is not None:
                        row.update(torch_fused_ms=t_ms, torch_over_fastopt=t_ms / adam_ms)
            results.append(row)

    print(f"device: {device}")
    print(f"{'optimizer':14s} {'size':>11s} {'ms/step':>10s} {'GB/s':>8s} {'% of copy':>10s} "
          f"{'torch fused ms':>15s}")
    for r in results:
        torch_cell = f"{r['torch_fused_ms']:.4f}" if "torch_fused_ms" in r else "-"
        print(f"{r['optimizer']:14s} {r['size']:11.0e} {r['ms']:10.4f} {r['gb_s']:8.1f} "
              f"{r['pct_of_copy']:9.0f}% {torch_cell:>15s}")
    for n, c in copies.items():
        print(f"copy, 4x{int(n):.0e} float32: {c['gb_s']:.1f} GB/s")

    import numba
    import numba_cuda
    record = {
        "device": device, "simulator": simulator,
        "date": datetime.date.today().isoformat(),
        "method": f"median of {repeats} samples of {inner} steps, CUDA events"
                  if not simulator else "wall clock on the CUDA simulator (meaningless)",
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "numba": numba.__version__,
                     "numba_cuda": numba_cuda.__version__, "fastopt": fastopt.__version__,
                     "torch": torch_version},
        "threads_per_block": cb.THREADS_PER_BLOCK, "chunk": cb.CHUNK,
        "copy": {"gb_s": max(c["gb_s"] for c in copies.values()), "per_size": copies},
        "results": results,
    }
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    out = Path(args.out) if args.out else HERE / "results" / f"gpu-{slug}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
