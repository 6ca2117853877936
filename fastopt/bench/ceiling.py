"""This machine's memory ceiling, and the bytes each optimizer moves.

An optimizer step over a large tensor does almost no arithmetic per byte, so
its speed limit is memory bandwidth.  Two reference kernels measure it:

* **rmw**: an in-place read-modify-write with Adam's traffic. Four arrays
  are read (param, grad, m, v) and three are written back in place
  (param, m, v), 28 bytes per float32 element.  The arithmetic is a few
  multiply-adds, so the kernel is purely memory bound.  Every written cache
  line was just read, so there is no extra write-allocate traffic: 28 bytes
  is the real traffic.  Four forms are timed (``flat``: ``prange`` over
  elements; ``chunked``: ``prange`` over 16384-element chunks with a serial
  inner loop, fastopt's own work split; ``blocks``: one contiguous block per
  thread; ``serial``: one thread, which wins on small arrays) and the best
  median is the ceiling.
* **copy**: ``dst[i] = src[i]`` (``prange`` or serial, the better of the two), counted as two itemsizes per element (one
  read, one write).  The hardware also reads each destination line before
  writing it (write-allocate), so a copy really moves three itemsizes per
  element and its counted GB/s is not comparable with rmw's.  It is reported
  for reference.

The kernels are compiled with fastopt's own flags (``error_model="numpy"``,
``boundscheck=False``, no fastmath) and vectorise: 512-bit ``zmm`` loads and
stores on AVX-512 hosts (``python -m fastopt.bench.ceiling --asm`` shows it).

:func:`bytes_per_param` gives each rule's traffic: the parameter read and
written, the gradient read, each slot read and written.

``python -m fastopt.bench.ceiling`` prints a small table.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numba
import numpy as np
from numba import njit, prange

from ..rule import get_rule
from ..backends._numba_util import _FLAGS

__all__ = ["bytes_per_param", "machine_info", "machine_line", "time_calls", "rmw_step",
           "copy_step", "rmw_forms", "rmw_gbps", "copy_gbps", "RMW_FORMS", "COPY_FORMS",
           "RMW_BYTES", "COPY_BYTES"]


def bytes_per_param(rule, dtype="float32", state_dtype=None):
    """Bytes moved per parameter by one step of ``rule`` (a name of
    :data:`fastopt.rule.RULES`, or ``"adamw"``).

    ``itemsize * 3 + state_itemsize * 2 * slots``: the parameter read and
    written, the gradient read, each slot read and written.  Adam in float32
    moves ``4 * 3 + 4 * 2 * 2 = 28`` bytes.  ``state_dtype`` is the slots'
    dtype when it differs from the parameter's.  AdamW has Adam's traffic
    (its weight decay is a factor inside the same pass).
    """
    rule = {"adamw": "adam", "adamw_amsgrad": "adam_amsgrad"}.get(rule, rule)
    return get_rule(rule).bytes_per_param(dtype, state_dtype)


#: bytes per element of the rmw kernel and of the copy, float32
RMW_BYTES = bytes_per_param("adam")
COPY_BYTES = 8


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    """CPU model, core count, versions, Numba's threading layer and threads."""
    _copy(np.zeros(1, np.float32), np.zeros(1, np.float32))  # start Numba's thread pool
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "threads": numba.get_num_threads(),
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "threading_layer": numba.threading_layer()}


def machine_line(info=None):
    """One line describing the machine, for tables."""
    i = machine_info() if info is None else info
    return (f"{i['cpu']}, {i['cores']} cores ({i['threads']} threads used), Python "
            f"{i['python']}, NumPy {i['numpy']}, Numba {i['numba']} "
            f"(threading layer {i['threading_layer']})")


# --- kernels -------------------------------------------------------------------

_parallel = njit(parallel=True, **_FLAGS)


@_parallel
def _rmw_flat(p, g, m, v, a, b, c):
    for i in prange(p.shape[0]):
        gi = g[i]
        mi = m[i] * a + gi
        vi = v[i] * b + gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] + (mi + vi) * c


@njit(**_FLAGS)
def _rmw_serial(p, g, m, v, a, b, c):
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i] * a + gi
        vi = v[i] * b + gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] + (mi + vi) * c


@_parallel
def _rmw_chunked(p, g, m, v, a, b, c):
    n = p.shape[0]
    chunk = 16384
    for k in prange((n + chunk - 1) // chunk):
        s = k * chunk
        e = min(s + chunk, n)
        _rmw_serial(p[s:e], g[s:e], m[s:e], v[s:e], a, b, c)


@_parallel
def _rmw_blocks(p, g, m, v, a, b, c, nt):
    n = p.shape[0]
    for k in prange(nt):
        s = k * n // nt
        e = (k + 1) * n // nt
        _rmw_serial(p[s:e], g[s:e], m[s:e], v[s:e], a, b, c)


@_parallel
def _copy(dst, src):
    for i in prange(src.shape[0]):
        dst[i] = src[i]


@njit(**_FLAGS)
def _copy_serial(dst, src):
    for i in range(src.shape[0]):
        dst[i] = src[i]


RMW_FORMS = {"flat": _rmw_flat, "chunked": _rmw_chunked, "blocks": _rmw_blocks,
             "serial": _rmw_serial}
COPY_FORMS = {"parallel": _copy, "serial": _copy_serial}


def rmw_step(n, dtype="float32", form="flat"):
    """A no-argument callable running the rmw kernel ``form`` over its own
    arrays of ``n`` elements (small values: nothing overflows over many calls)."""
    rng = np.random.default_rng(n)
    p, g, m, v = ((rng.random(n) * 1e-3).astype(dtype) for _ in range(4))
    t = np.dtype(dtype).type
    a, b, c = t(0.5), t(0.5), t(-1e-6)
    kernel = RMW_FORMS[form]
    if form == "blocks":  # one block per thread
        return lambda: kernel(p, g, m, v, a, b, c, numba.get_num_threads())
    return lambda: kernel(p, g, m, v, a, b, c)


def copy_step(n, dtype="float32", form="parallel"):
    """A no-argument callable copying an array of ``n`` elements into another."""
    src = np.random.default_rng(n).random(n).astype(dtype)
    dst = np.zeros_like(src)
    kernel = COPY_FORMS[form]
    return lambda: kernel(dst, src)


# --- timing --------------------------------------------------------------------

def time_calls(fns, repeats=15, warmup=2, sample_time=0.0):
    """Seconds per call of each callable of the dict ``fns``, one list per key.

    ``warmup`` rounds run first and are not timed (JIT compilation, page
    faults, caches).  Then every callable is timed once per round, round
    after round, interleaved, so that the machine's slow moments hit all of
    them alike; each round starts one callable later than the previous one,
    so that none always runs first or always follows the same other one.
    A callable faster than ``sample_time`` seconds is repeated
    within a sample until the sample lasts about that long, and the sample is
    the mean over those calls.  Returns ``{key: [seconds per call, ...]}``
    with ``repeats`` samples each.
    """
    clock = time.perf_counter
    calls = {}
    for key, fn in fns.items():
        for _ in range(max(warmup, 1)):
            t0 = clock()
            fn()
            dt = clock() - t0
        calls[key] = max(1, min(100_000, int(sample_time / max(dt, 1e-8))))
    out = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(repeats):
        shift = r % len(items)
        for key, fn in items[shift:] + items[:shift]:
            k = calls[key]
            t0 = clock()
            for _ in range(k):
                fn()
            out[key].append((clock() - t0) / k)
    return out


def _median(samples):
    return float(np.median(samples))


def rmw_forms(n=10_000_000, repeats=15, dtype="float32", sample_time=0.0):
    """GB/s (medians) of each rmw form at ``n`` elements: ``{form: GB/s}``."""
    nbytes = bytes_per_param("adam", dtype) * n
    times = time_calls({f: rmw_step(n, dtype, f) for f in RMW_FORMS}, repeats,
                       sample_time=sample_time)
    return {f: nbytes / _median(ts) / 1e9 for f, ts in times.items()}


def rmw_gbps(n=10_000_000, repeats=15, dtype="float32", detail=False):
    """The rmw ceiling in GB/s: the best median over :data:`RMW_FORMS`.

    With ``detail=True`` returns ``(gbps, best_form_name, {form: GB/s})``.
    """
    forms = rmw_forms(n, repeats, dtype)
    best = max(forms, key=forms.get)
    return (forms[best], best, forms) if detail else forms[best]


def copy_gbps(n=10_000_000, repeats=15, dtype="float32", sample_time=0.0):
    """Copy bandwidth in GB/s, counting one read and one write per element:
    the best median of :data:`COPY_FORMS`."""
    times = time_calls({f: copy_step(n, dtype, f) for f in COPY_FORMS}, repeats,
                       sample_time=sample_time)
    return 2 * np.dtype(dtype).itemsize * n / min(_median(ts) for ts in times.values()) / 1e9


def _asm_report():
    import re
    x = np.zeros(64, np.float32)
    s = np.float32(1)
    _rmw_flat(x, x, x, x, s, s, s)
    _rmw_serial(x, x, x, x, s, s, s)
    _copy(x, x)
    for name, f in (("rmw_flat", _rmw_flat), ("rmw_serial", _rmw_serial), ("copy", _copy)):
        asm = "\n".join(f.inspect_asm().values())
        counts = {r: len(re.findall(r, asm)) for r in ("zmm", "ymm")}
        print(f"{name:10s} vector registers used: {counts}")


def main(argv=None):
    """``python -m fastopt.bench.ceiling``: rmw forms and copy, GB/s, 1 and all threads."""
    ap = argparse.ArgumentParser(prog="python -m fastopt.bench.ceiling",
                                 description="This machine's memory ceiling (GB/s).")
    ap.add_argument("--sizes", type=float, nargs="*", default=[1e5, 1e6, 1e7])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--asm", action="store_true", help="show that the kernels are vectorised")
    args = ap.parse_args(argv)
    if args.asm:
        _asm_report()
        return
    print(machine_line())
    old = numba.get_num_threads()
    print("| size | threads | " + " | ".join(f"rmw {f}" for f in RMW_FORMS) + " | copy |")
    print("|---:|---:|" + "---:|" * (len(RMW_FORMS) + 1))
    try:
        for size in args.sizes:
            n = int(size)
            for t in sorted({1, numba.config.NUMBA_NUM_THREADS}):
                numba.set_num_threads(t)
                forms = rmw_forms(n, args.repeats)
                cp = copy_gbps(n, args.repeats)
                print(f"| {n:.0e} | {t} | " + " | ".join(f"{forms[k]:.1f}" for k in RMW_FORMS)
                      + f" | {cp:.1f} |  (GB/s)")
    finally:
        numba.set_num_threads(old)


if __name__ == "__main__":  # pragma: no cover
    main()
