"""The measurement behind ``fastopt bench``: the ceiling, the grid, the report.

:func:`run` measures, in this order:

1. the ceiling at every size of the grid: the in-place read-modify-write
   kernel with Adam's traffic (best of its forms) and a copy, in GB/s
   (:mod:`fastopt.bench.ceiling`);
2. for each size and optimizer, every requested fastopt backend, the naive
   NumPy step and the ``torch.optim`` twin (when torch can be imported),
   with the rmw kernel of the same size, all timed round by round,
   interleaved (:func:`fastopt.bench.ceiling.time_calls`), after warm-up
   steps that are not timed (JIT compilation included);
3. for each row, the numerics check of :mod:`fastopt.bench.numerics`.

The result is a JSON-ready dict (:func:`run`), printed by
:func:`format_report`.
"""
from __future__ import annotations

import datetime
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import __version__
from .. import backends as _backends
from . import ceiling as _ceiling
from .cases import CASES, fastopt_stepper, make_optimizer, naive_stepper, split_shapes
from .cases import timing_arrays
from .cases import torch_implementations, torch_stepper
from .numerics import TOLERANCE, step_error

__all__ = ["Config", "ConfigError", "check", "run", "format_report", "describe_machine",
           "DEFAULT_SIZES"]

DEFAULT_SIZES = (1_000, 100_000, 10_000_000)
_MAX_SIZE = 2_000_000_000


@dataclass
class Config:
    """What :func:`run` measures.

    Attributes
    ----------
    optimizers : sequence of str
        Names of :data:`fastopt.bench.cases.CASES` (default: all of them).
    backends : sequence of str
        ``"auto"`` or backend names (default: ``("auto",)``).
    sizes : sequence of int
        Total parameters per step (default: 1e3, 1e5, 1e7).
    dtype : str
        ``"float32"`` or ``"float64"``.
    threads : int or None
        Threads for fastopt's compiled backends and for torch (None: the
        current fastopt setting).
    tensors : int
        The parameters are split into this many tensors of mixed shapes
        (:func:`fastopt.bench.cases.split_shapes`).
    repeats : int
        Timed samples per measurement; the report gives their median.
    warmup : int
        Untimed steps before the samples (compilation, page faults).
    sample_time : float
        Seconds: faster steps are repeated within a sample until it lasts
        about this long.
    convention : str
        The fastopt optimizers' convention, ``"keras"`` or ``"torch"``.
    naive, torch, numerics : bool
        Whether to time the naive NumPy step, time ``torch.optim``, and run
        the numerics check.
    optimizer_options : dict
        Extra keyword arguments for every fastopt optimizer built.
    """

    optimizers: tuple = tuple(CASES)
    backends: tuple = ("auto",)
    sizes: tuple = DEFAULT_SIZES
    dtype: str = "float32"
    threads: int | None = None
    tensors: int = 1
    repeats: int = 15
    warmup: int = 3
    sample_time: float = 2e-3
    convention: str = "keras"
    naive: bool = True
    torch: bool = True
    numerics: bool = True
    optimizer_options: dict = field(default_factory=dict)


class ConfigError(ValueError):
    """A bad :class:`Config` field; ``field`` names it."""

    def __init__(self, field_name, message):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def _integer(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check(config):
    """Raise :class:`ConfigError` for the first bad field of ``config``."""
    if not config.optimizers:
        raise ConfigError("optimizers", f"give at least one name; valid: {', '.join(CASES)}")
    bad = [n for n in config.optimizers if n not in CASES]
    if bad:
        raise ConfigError("optimizers", f"unknown name {bad[0]!r}; valid: {', '.join(CASES)}")
    if not config.backends:
        raise ConfigError("backends", "give at least one backend")
    for name in config.backends:
        if name == "auto":
            continue
        if name == "cuda":
            raise ConfigError("backends", "cuda updates device arrays, and fastopt bench times "
                                          "host arrays; on a GPU machine run "
                                          "benchmarks/gpu_bench.py")
        try:
            _backends.get_backend(name)
        except (ValueError, ImportError) as exc:
            raise ConfigError("backends", str(exc)) from None
    if not config.sizes:
        raise ConfigError("sizes", "give at least one size")
    for n in config.sizes:
        if not _integer(n) or not 1 <= n <= _MAX_SIZE:
            raise ConfigError("sizes", f"sizes must be whole numbers from 1 to {_MAX_SIZE:.0e}, "
                                       f"got {n!r}")
    if config.dtype not in ("float32", "float64"):
        raise ConfigError("dtype", f"must be float32 or float64, got {config.dtype!r}")
    if config.threads is not None:
        limit = _backends.get_backend("numba").max_threads()
        if not _integer(config.threads) or not 1 <= config.threads <= limit:
            raise ConfigError("threads", f"must be an integer from 1 to {limit} (the threads "
                                         f"Numba was started with), got {config.threads!r}")
    if not _integer(config.tensors) or not 1 <= config.tensors <= min(config.sizes):
        raise ConfigError("tensors", f"must be an integer from 1 to the smallest size "
                                     f"({min(config.sizes)}), got {config.tensors!r}")
    for name, low in (("repeats", 1), ("warmup", 1)):
        value = getattr(config, name)
        if not _integer(value) or value < low:
            raise ConfigError(name, f"must be an integer >= {low}, got {value!r}")
    if not isinstance(config.sample_time, (int, float)) or not 0 <= config.sample_time <= 10:
        raise ConfigError("sample_time", f"must be seconds in [0, 10], got {config.sample_time!r}")
    if config.convention not in ("keras", "torch"):
        raise ConfigError("convention", f"must be keras or torch, got {config.convention!r}")
    _check_options(config)


def _check_options(config):
    """The optimizer options against the dtype and the backends, then one probe
    optimizer per optimizer and backend: every combination the grid will build
    is built once here, on one element, so that none fails after the timing
    started."""
    options = config.optimizer_options
    if not isinstance(options, dict):
        raise ConfigError("optimizer_options", f"must be a dict, got {options!r}")
    state = options.get("state_dtype")
    if state is not None:
        if state not in _backends.STATE_DTYPES:
            raise ConfigError("state_dtype", f"must be one of {', '.join(_backends.STATE_DTYPES)}"
                                             f", got {state!r}")
        if config.dtype != "float32":
            raise ConfigError("state_dtype", f"{state} state needs float32 parameters "
                                             f"(--dtype float32), not {config.dtype}")
        allowed = _backends.state_backends(state)
        other = [b for b in config.backends if b != "auto" and b not in allowed]
        if other:
            where = " or ".join([", ".join(allowed[:-1]), allowed[-1]] if len(allowed) > 1
                                else allowed)
            raise ConfigError("state_dtype", f"{state} state runs on the {where} backend"
                                             f"{'s' if len(allowed) > 1 else ''} (or auto) "
                                             f"only, not {other[0]}")
    elif options.get("state_rounding") is not None:
        raise ConfigError("state_rounding", "needs --state-dtype bfloat16 (or int8)")
    probe = [np.zeros(1, config.dtype)]
    for name in config.optimizers:
        for backend in config.backends:
            try:
                make_optimizer(name, probe, backend, config.convention, **options)
            except (TypeError, ValueError, ImportError) as exc:
                raise ConfigError("optimizers", f"{name} on backend {backend}: {exc}") from None


def _import_torch(wanted):
    """``(torch module or None, why not)``."""
    if not wanted:
        return None, "not requested"
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken installation
        return None, f"cannot import torch ({type(exc).__name__}: {exc})"
    return torch, None


def describe_machine(torch=None):
    """:func:`fastopt.bench.ceiling.machine_info` plus the fastopt version,
    the backends, the load average and, given the module, torch's version."""
    info = _ceiling.machine_info()
    info["fastopt"] = __version__
    info["backends"] = _backends.available_backends()
    if "cython" in info["backends"]:
        info["cython_openmp"] = bool(_backends.get_backend("cython").OPENMP)
    if torch is not None:
        info["torch"] = torch.__version__
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _measure_ceiling(n, config):
    fns = {("rmw", f): _ceiling.rmw_step(n, config.dtype, f) for f in _ceiling.RMW_FORMS}
    fns.update({("copy", f): _ceiling.copy_step(n, config.dtype, f) for f in _ceiling.COPY_FORMS})
    times = _ceiling.time_calls(fns, config.repeats, config.warmup, config.sample_time)
    nbytes = {"rmw": _ceiling.bytes_per_param("adam", config.dtype) * n,
              "copy": 2 * np.dtype(config.dtype).itemsize * n}
    gbps = {key: nbytes[key[0]] / float(np.median(ts)) / 1e9 for key, ts in times.items()}
    forms = {f: gbps["rmw", f] for f in _ceiling.RMW_FORMS}
    best = max(forms, key=forms.get)
    return {"size": n, "rmw_gbps": forms[best], "rmw_form": best, "rmw_forms_gbps": forms,
            "copy_gbps": max(gbps["copy", f] for f in _ceiling.COPY_FORMS)}


def _group(name, n, config, rmw_form, torch):
    """Rows (one per backend) of optimizer ``name`` at size ``n``."""
    shapes = split_shapes(n, config.tensors)
    base, grads = timing_arrays(shapes, config.dtype, seed=n)
    fns, opts, notes = {}, {}, {}
    for b in config.backends:
        opts[b], fns[b] = fastopt_stepper(name, [p.copy() for p in base], grads, b,
                                          config.convention, config.optimizer_options)
    if config.naive:
        fns["naive"] = naive_stepper(name, [p.copy() for p in base], grads)
    torch_impl = None
    if torch is not None:
        try:
            for impl in torch_implementations(name):
                step, _ = torch_stepper(name, [p.copy() for p in base], grads, impl)
                step()  # fails here, not in the timed rounds, if torch cannot run it
                fns["torch", impl] = step
        except Exception as exc:  # e.g. a dtype this torch build does not fuse
            notes["torch"] = f"{type(exc).__name__}: {exc}"
            for key in [k for k in fns if isinstance(k, tuple)]:
                del fns[key]
    fns["rmw"] = _ceiling.rmw_step(n, config.dtype, rmw_form)
    times = _ceiling.time_calls(fns, config.repeats, config.warmup, config.sample_time)
    med = {k: float(np.median(ts)) for k, ts in times.items()}
    del fns
    timed = {k[1]: med.pop(k) for k in [k for k in med if isinstance(k, tuple)]}
    if timed:  # the faster of torch's implementations
        torch_impl = min(timed, key=timed.get)
        med["torch"] = timed[torch_impl]
    state = {None: None, "bfloat16": np.uint16, "int8": np.int8}[
        config.optimizer_options.get("state_dtype")]
    bpp = _ceiling.bytes_per_param(CASES[name].rule, config.dtype, state)
    rmw_gbps = _ceiling.bytes_per_param("adam", config.dtype) * n / med["rmw"] / 1e9
    rows = []
    for b in config.backends:
        t = med[b]
        gbps = bpp * n / t / 1e9
        row = {"optimizer": name, "convention": opts[b].convention, "rule": opts[b].rule,
               "backend": b,
               "backend_used": opts[b].backends[config.dtype], "size": n,
               "tensors": len(shapes), "dtype": config.dtype, "bytes_per_param": bpp,
               "time_s": t, "ns_per_param": t / n * 1e9, "gbps": gbps,
               "ceiling_gbps": rmw_gbps, "pct_of_ceiling": 100 * gbps / rmw_gbps,
               "naive_time_s": med.get("naive"),
               "speedup_vs_naive": med["naive"] / t if "naive" in med else None,
               "torch_impl": torch_impl, "torch_time_s": med.get("torch"),
               "speedup_vs_torch": med["torch"] / t if "torch" in med else None,
               "torch_note": notes.get("torch"),
               "max_rel_error": None, "tolerance": TOLERANCE[config.dtype],
               "numerics_ok": None}
        if config.numerics:
            err = step_error(name, shapes, config.dtype, b, config.convention,
                             config.optimizer_options, seed=n)
            row["max_rel_error"] = err
            row["numerics_ok"] = bool(err <= TOLERANCE[config.dtype])
        rows.append(row)
    return rows


def run(config=None, progress=None):
    """Run the benchmark; returns a JSON-ready dict.

    Keys: ``fastopt`` (version), ``date``, ``machine`` (CPU, cores, threads,
    versions, Numba's threading layer, load averages), ``config``, ``torch``
    (``{"version", "threads"}`` or ``{"version": None, "reason"}``),
    ``ceiling`` (one entry per size: ``size``, ``rmw_gbps``, ``rmw_form``,
    ``rmw_forms_gbps``, ``copy_gbps``), ``rows`` (one per optimizer, backend
    and size; see ``docs/performance.md``), ``warnings`` and ``seconds``.

    ``progress(done, total, label)``, if given, is called before each
    measurement and once at the end (``done == total``).
    """
    config = Config() if config is None else config
    check(config)
    t_start = time.perf_counter()
    import fastopt

    torch, why_not = _import_torch(config.torch)
    old_threads = fastopt.get_num_threads()
    threads = config.threads or old_threads
    old_torch_threads = torch.get_num_threads() if torch is not None else None
    warnings = []
    try:
        fastopt.set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)
        machine = describe_machine(torch)
        if machine["threading_layer"] == "workqueue":
            warnings.append("Numba uses the workqueue threading layer, which costs ~100 us per "
                            "parallel step: install an OpenMP runtime (libgomp) or tbb")
        sizes = sorted(set(int(n) for n in config.sizes))
        total = len(sizes) * (1 + len(config.optimizers))
        done = 0

        def tick(label):
            nonlocal done
            if progress is not None:
                progress(done, total, label)
            done += 1

        ceilings = []
        for n in sizes:
            tick(f"ceiling {n:.0e}")
            ceilings.append(_measure_ceiling(n, config))
        rows = []
        for n, ceil in zip(sizes, ceilings):
            for name in config.optimizers:
                tick(f"{name} {n:.0e}")
                rows += _group(name, n, config, ceil["rmw_form"], torch)
        if progress is not None:
            progress(total, total, "done")
    finally:
        fastopt.set_num_threads(old_threads)
        if torch is not None:
            torch.set_num_threads(old_torch_threads)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["threads"] = threads
    bad = [r for r in rows if r["numerics_ok"] is False]
    for r in bad:
        warnings.append(f"numerics: {r['optimizer']} on {r['backend']} at {r['size']} "
                        f"elements is off by {r['max_rel_error']:.2e} (tolerance "
                        f"{r['tolerance']:.0e})")
    return {"fastopt": __version__, "date": datetime.date.today().isoformat(),
            "machine": machine, "config": {**asdict(config), "sizes": sizes},
            "torch": ({"version": torch.__version__, "threads": threads} if torch is not None
                      else {"version": None, "reason": why_not}),
            "ceiling": ceilings, "rows": rows, "warnings": warnings,
            "seconds": round(time.perf_counter() - t_start, 1)}


# --- the report ------------------------------------------------------------------

def _time(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if seconds >= scale or unit == "ns":
            return f"{seconds / scale:.3g} {unit}" if seconds / scale < 100 \
                else f"{seconds / scale:.0f} {unit}"


def _size(n):
    exp = int(math.floor(math.log10(n))) if n > 0 else 0
    mant = n / 10 ** exp
    return f"{mant:g}e{exp}" if mant == int(mant) or len(f"{mant:g}") <= 3 else str(n)


def _ratio(x):
    return "n/a" if x is None else f"{x:.1f}x" if x < 100 else f"{x:.0f}x"


def _table(header, rows, right):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    out = []
    for row in [header, *rows]:
        cells = [str(c).rjust(w) if k in right else str(c).ljust(w)
                 for k, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells).rstrip())
    return out


def _own_conventions(rows, convention):
    """``" (lion: keras, its only one)"``: the rows that ran under another
    convention than the configured one (a class of one framework only)."""
    other = {}
    for r in rows:
        if r.get("convention", convention) != convention:
            other.setdefault(r["convention"], []).append(r["optimizer"])
    if not other:
        return ""
    parts = []
    for c, names in sorted(other.items()):
        names = list(dict.fromkeys(names))
        parts.append(f"{', '.join(names)}: {c}, {'its' if len(names) == 1 else 'their'} only one")
    return " (" + "; ".join(parts) + ")"


def format_report(result):
    """The human-readable report of a :func:`run` result (a string)."""
    m, cfg = result["machine"], result["config"]
    t = result["torch"]
    lines = [f"fastopt {result['fastopt']} bench, {result['date']}",
             f"machine: {_ceiling.machine_line(m)}; load average "
             f"{m['loadavg_at_start'][0]:.2f} at start, {m['loadavg_at_end'][0]:.2f} at end",
             f"torch: {t['version']} ({t['threads']} threads)" if t["version"]
             else f"torch: n/a, {t['reason']}",
             f"{cfg['dtype']}, {cfg['tensors']} tensor{'s' if cfg['tensors'] != 1 else ''} per "
             f"step, {cfg['convention']} convention"
             + _own_conventions(result["rows"], cfg["convention"])
             + "".join(f", {k} {v}" for k, v in cfg["optimizer_options"].items())
             + f"; medians of {cfg['repeats']} samples (a "
             f"sample: back-to-back steps for at least {cfg['sample_time'] * 1e3:g} ms) after "
             f"{cfg['warmup']} warm-up steps, implementations interleaved round by round", ""]
    item = np.dtype(cfg["dtype"]).itemsize
    lines.append(f"ceiling: in-place read-modify-write with Adam's traffic "
                 f"({_ceiling.bytes_per_param('adam', cfg['dtype'])} B/element) and copy "
                 f"(counted {2 * item} B/element), timed in rounds of their own; each row "
                 "below is taken against the rmw kernel timed in that row's rounds, printed "
                 "in its 'ceiling' column")
    lines += _table(["size", "rmw GB/s", "best form", "copy GB/s"],
                    [[_size(c["size"]), f"{c['rmw_gbps']:.1f}", c["rmw_form"],
                      f"{c['copy_gbps']:.1f}"] for c in result["ceiling"]], right={0, 1, 3})
    lines.append("")
    rows = []
    for r in result["rows"]:
        backend = r["backend"] if r["backend"] != "auto" else f"auto:{r['backend_used']}"
        if r["speedup_vs_torch"] is not None:
            torch_cell = f"{_ratio(r['speedup_vs_torch'])} {r['torch_impl']}"
        else:
            torch_cell = "n/a"
        err = "" if r["max_rel_error"] is None else \
            f"{r['max_rel_error']:.1e}{'' if r['numerics_ok'] else ' !'}"
        rows.append([r["optimizer"], backend, _size(r["size"]), _time(r["time_s"]),
                     f"{r['ns_per_param']:.3g}", f"{r['gbps']:.1f}",
                     f"{r['ceiling_gbps']:.1f}", f"{r['pct_of_ceiling']:.0f}%",
                     _ratio(r["speedup_vs_naive"]), torch_cell, err])
    lines += _table(["optimizer", "backend", "size", "time/step", "ns/param", "GB/s",
                     "ceiling", "% ceiling", "vs naive", "vs torch", "max rel err"], rows,
                    right={2, 3, 4, 5, 6, 7, 8, 9, 10})
    lines += ["", "time/step: median per step; GB/s: the optimizer's bytes per parameter "
              "(param read and written, gradient read, each slot read and written) x size / "
              "time;",
              "ceiling: the rmw kernel's GB/s timed in the same rounds as the row; "
              "% ceiling: GB/s / ceiling; vs naive, vs torch: "
              "their time / fastopt's (torch.optim's fused one, else the faster of foreach and for-loop);",
              "max rel err: one step against the float64 reference, parameters"
              + (" only (the slots are stored rounded) "
                 if cfg["optimizer_options"].get("state_dtype") else " and slots ")
              + f"(tolerance {TOLERANCE[cfg['dtype']]:.0e}; '!' marks a row above it)."]
    for w in result["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
