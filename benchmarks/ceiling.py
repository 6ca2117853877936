"""This machine's memory ceiling, measured with plain Numba kernels.

An optimizer step over a large tensor does almost no arithmetic per byte, so
its speed limit is memory bandwidth.  Two reference kernels measure it:

* **rmw** -- in-place read-modify-write with Adam's traffic: four float32
  arrays read (param, grad, m, v), three written back in place (param, m, v):
  28 bytes per element.  The arithmetic is a few multiply-adds, so the kernel
  is purely memory bound.  Because every written cache line was just read,
  there is no extra write-allocate traffic: 28 bytes is the real traffic.
  Three reasonable forms are timed (``flat``: ``prange`` over elements;
  ``chunked``: ``prange`` over 16384-element chunks with a serial inner loop,
  fastopt's own work split; ``blocks``: one contiguous block per thread) and
  :func:`rmw_gbps` reports the best median: the fair ceiling.
* **copy** -- ``dst[i] = src[i]``, counted as 8 bytes per float32 element
  (one read, one write).  The hardware also reads each destination line before
  writing it (write-allocate), so the copy moves ~12 bytes per element and its
  counted GB/s is not comparable with rmw's; it is reported for reference.

All kernels are compiled with ``error_model="numpy"`` and ``boundscheck=False``
(the same flags as fastopt's kernels) and are vectorised (512-bit ``zmm``
loads/stores on AVX-512 hosts; check with ``python benchmarks/ceiling.py --asm``).

:func:`bytes_per_param` gives each rule's traffic: param read + write, gradient
read, each slot read + write.

Run ``python benchmarks/ceiling.py`` for a small table.
"""
from __future__ import annotations

import argparse
import time

import numba
import numpy as np
from numba import njit, prange

__all__ = ["machine_info", "machine_line", "bytes_per_param", "rmw_gbps", "rmw_forms", "copy_gbps", "RMW_BYTES",
           "COPY_BYTES", "time_calls", "RMW_FORMS"]

_FLAGS = dict(error_model="numpy", boundscheck=False, nogil=True)

#: state arrays per rule (same table as fastopt._rules.RULES)
_SLOTS = {"sgd": 0, "sgd_momentum": 1, "sgd_nesterov": 1, "adagrad": 1, "rmsprop": 1,
          "rmsprop_momentum": 2, "rmsprop_centered": 2, "rmsprop_centered_momentum": 3,
          "adam": 2, "adam_amsgrad": 3}


def bytes_per_param(rule, dtype=np.float32):
    """Bytes moved per parameter by one step of ``rule``.

    ``itemsize * (2 + 1 + 2 * slots)``: param read and written, gradient read,
    each slot read and written.  E.g. adam float32 = 4 * (2 + 1 + 2 + 2) = 28.
    AdamW has Adam's traffic (``"adamw"`` is accepted as an alias).
    """
    rule = {"adamw": "adam", "adamw_amsgrad": "adam_amsgrad"}.get(rule, rule)
    return np.dtype(dtype).itemsize * (3 + 2 * _SLOTS[rule])


#: bytes per element of the rmw kernel and of the copy, float32
RMW_BYTES = bytes_per_param("adam", np.float32)
COPY_BYTES = 8


def machine_info():
    """CPU model, core count, numba/numpy versions and Numba's threading layer."""
    import os
    import platform
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    _copy(np.zeros(1, np.float32), np.zeros(1, np.float32))  # start the thread pool
    return {"cpu": model, "cores": os.cpu_count(), "threads": numba.get_num_threads(),
            "numba": numba.__version__, "numpy": np.__version__,
            "threading_layer": numba.threading_layer(), "python": platform.python_version()}


def machine_line(info=None):
    """One line describing the machine, for tables."""
    i = machine_info() if info is None else info
    return (f"{i['cpu']}, {i['cores']} cores ({i['threads']} threads used), numba {i['numba']}, "
            f"numpy {i['numpy']}, threading layer {i['threading_layer']}, Python {i['python']}")


# --- kernels -------------------------------------------------------------------

@njit(parallel=True, **_FLAGS)
def _rmw_flat(p, g, m, v, a, b, c):
    for i in prange(p.shape[0]):
        gi = g[i]
        mi = m[i] * a + gi
        vi = v[i] * b + gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] + (mi + vi) * c


@njit(**_FLAGS)
def _rmw_inner(p, g, m, v, a, b, c):
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i] * a + gi
        vi = v[i] * b + gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] + (mi + vi) * c


@njit(parallel=True, **_FLAGS)
def _rmw_chunked(p, g, m, v, a, b, c):
    n = p.shape[0]
    chunk = 16384
    for k in prange((n + chunk - 1) // chunk):
        s = k * chunk
        e = min(s + chunk, n)
        _rmw_inner(p[s:e], g[s:e], m[s:e], v[s:e], a, b, c)


@njit(parallel=True, **_FLAGS)
def _rmw_blocks(p, g, m, v, a, b, c):
    n = p.shape[0]
    nt = numba.get_num_threads()
    for k in prange(nt):
        s = k * n // nt
        e = (k + 1) * n // nt
        _rmw_inner(p[s:e], g[s:e], m[s:e], v[s:e], a, b, c)


@njit(parallel=True, **_FLAGS)
def _copy(dst, src):
    for i in prange(src.shape[0]):
        dst[i] = src[i]


RMW_FORMS = {"flat": _rmw_flat, "chunked": _rmw_chunked, "blocks": _rmw_blocks}


# --- timing --------------------------------------------------------------------

def time_calls(fns, repeats=30, warmup=2):
    """Median seconds per call of each callable in ``fns`` (a dict).

    The callables are run interleaved (one of each per round), so that the
    machine's slow phases hit all of them alike; ``warmup`` rounds (compile,
    page faults, caches) are excluded.  Returns ``{name: [seconds, ...]}``.
    """
    for _ in range(warmup):
        for f in fns.values():
            f()
    out = {k: [] for k in fns}
    clock = time.perf_counter
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = clock()
            f()
            out[k].append(clock() - t0)
    return out


class _Threads:
    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.old = numba.get_num_threads()
        if self.n is not None:
            numba.set_num_threads(int(self.n))

    def __exit__(self, *exc):
        numba.set_num_threads(self.old)


def _rmw_arrays(n, dtype=np.float32):
    rng = np.random.default_rng(0)
    # small values and a < 1, b < 1, c tiny: nothing overflows over many calls
    arrays = [(rng.random(n) * 1e-3).astype(dtype) for _ in range(4)]
    t = np.dtype(dtype).type
    return arrays, (t(0.5), t(0.5), t(-1e-6))


def rmw_forms(n=10_000_000, threads=None, repeats=30, dtype=np.float32):
    """GB/s (medians) of each rmw form at ``n`` elements: ``{form: GB/s}``."""
    (p, g, m, v), (a, b, c) = _rmw_arrays(n, dtype)
    nbytes = np.dtype(dtype).itemsize * 7 * n
    fns = {name: (lambda k=k: k(p, g, m, v, a, b, c)) for name, k in RMW_FORMS.items()}
    with _Threads(threads):
        times = time_calls(fns, repeats)
    return {name: nbytes / float(np.median(ts)) / 1e9 for name, ts in times.items()}


def rmw_gbps(n=10_000_000, threads=None, repeats=30, dtype=np.float32, detail=False):
    """The rmw ceiling in GB/s: the best median over :data:`RMW_FORMS`.

    With ``detail=True`` returns ``(gbps, best_form_name, {form: GB/s})``.
    """
    forms = rmw_forms(n, threads, repeats, dtype)
    best = max(forms, key=forms.get)
    return (forms[best], best, forms) if detail else forms[best]


def copy_gbps(n=10_000_000, threads=None, repeats=30, dtype=np.float32):
    """Copy bandwidth in GB/s (median), counting one read + one write per element."""
    src = np.random.default_rng(1).random(n).astype(dtype)
    dst = np.zeros_like(src)
    with _Threads(threads):
        times = time_calls({"copy": lambda: _copy(dst, src)}, repeats)["copy"]
    return 2 * src.nbytes / float(np.median(times)) / 1e9


def _asm_report():
    import re
    x = np.zeros(64, np.float32)
    s = np.float32(1)
    _rmw_flat(x, x, x, x, s, s, s)
    _rmw_inner(x, x, x, x, s, s, s)
    _copy(x, x)
    for name, f in (("rmw_flat", _rmw_flat), ("rmw_inner", _rmw_inner), ("copy", _copy)):
        asm = "\n".join(f.inspect_asm().values())
        counts = {r: len(re.findall(r, asm)) for r in ("zmm", "ymm")}
        print(f"{name:10s} vector registers used: {counts}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=float, nargs="*", default=[1e5, 1e6, 1e7])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--asm", action="store_true", help="show that the kernels are vectorised")
    args = ap.parse_args(argv)
    if args.asm:
        _asm_report()
        return
    threads = sorted({1, numba.config.NUMBA_NUM_THREADS})
    print("| size | threads | rmw flat | rmw chunked | rmw blocks | copy |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        n = int(size)
        for t in threads:
            forms = rmw_forms(n, t, args.repeats)
            cp = copy_gbps(n, t, args.repeats)
            print(f"| {n:.0e} | {t} | " + " | ".join(f"{forms[k]:.1f}" for k in RMW_FORMS)
                  + f" | {cp:.1f} |  (GB/s)")


if __name__ == "__main__":
    main()
