"""Measure the compiled backends' parallel thresholds and the ``auto`` rule,
per class of rules.

Usage::

    python benchmarks/calibrate.py            # measure and print (about 2 minutes)
    python benchmarks/calibrate.py --write    # ... and rewrite fastopt/backends/tuning.json
    python benchmarks/calibrate.py --per-rule --samples 9 --json OUT.json
                                              # every rule, to check the grouping
    python benchmarks/calibrate.py --serial-costs --json OUT.json
                                              # every rule's serial cost per element

Rules are grouped by :func:`fastopt.backends.rule_class`: the bytes a float32
step moves per element (parameter, gradient, slots; a two-phase rule's first
pass) and the element function's costliest arithmetic (``pow``; ``branch``, a
test on the elements or ``sign``; ``heavy``, a square root or a division;
``light``).  ``--serial-costs`` measures every rule's serial cost per element,
the check that rules of one class cost alike.  One rule stands for each class
(:data:`PREFERRED`, else the class's first rule in registry order); with
``--per-rule`` every rule is measured and the class's value is the median of
its rules' (the spread within a class is what says whether the grouping is
enough).

(a) Serial vs parallel crossover, per compiled backend (``numba``, and
    ``cython`` when it is built), dtype and class: the step time of the
    class's rule (``Plan.step``; a two-phase rule's ``reduce`` and ``step``)
    on one tensor of 2**10 .. 2**20 elements, the override
    ``set_parallel_threshold`` at 0 (always parallel) and at 2**62 (always
    serial), both modes and all sizes interleaved round by round, medians.
    The threshold is the measured size (or "above the range") whose choice
    loses least against the faster mode over all measured sizes
    (:func:`threshold_from`: a step fit, robust to one disturbed median).  The
    dtype's default (the fallback for a rule not in the file) is the largest
    class threshold: such a rule never goes parallel where no class gains.

(b) Backend choice for ``"auto"``, per dtype and class: the step time of
    the class's rule on ``numba`` and ``cython`` (thresholds from (a) in
    force) at sizes 1e1 .. 1e7.  The faster backend wins a size (by more
    than :data:`TIE`, else the previous size's winner keeps it); a winner
    that differs from the common winner of both neighbouring sizes is taken
    as noise and overruled.  Runs of sizes with the same winner become
    ``[max_size, backend]`` rows; the last row has ``max_size = null``.  So
    ``[[3000, "cython"], [null, "numba"]]`` reads: up to 3000 elements
    cython, above numba.  The dtype's table (the fallback) is decided the
    same way from the geometric mean over the classes.  (The numpy backend,
    the float64 reference, is not timed: it is never the fastest.)

``--write`` rewrites tuning.json: ``parallel_threshold`` and ``auto`` (per
dtype, the fallbacks), ``rule_classes`` (every compiled rule's class),
``parallel_threshold_by_class`` and ``auto_by_class``, with ``measured_by``,
``machine``, ``date`` and ``measurements`` (medians in microseconds).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np

import fastopt
from fastopt.backends import TUNING, rule_class
from fastopt.bench.ceiling import machine_info, machine_line
from fastopt.rule import RULES

TUNING_PATH = Path(fastopt.__file__).resolve().parent / "backends" / "tuning.json"
DTYPES = ("float32", "float64")
NEVER = 2 ** 62
CROSS_SIZES = [2 ** e for e in range(10, 21)]
COST_SIZE = 2 ** 16
#: Two medians within this factor are a tie (noise, not a difference).
TIE = 1.05
SIZES = [10, 100, 1000, 3000, 10_000, 30_000, 100_000, 300_000, 1_000_000, 10_000_000]

#: The rule that stands for its class where the class has it (the common one).
PREFERRED = ("sgd", "sgd_momentum", "rmsprop", "adam", "adam_amsgrad", "lamb", "ftrl", "lion",
             "rprop_torch")

#: Kernel scalars by name: typical values (timing does not depend on them as
#: long as no value turns subnormal); any other name gets 0.5.
SCALAR_VALUES = {
    "learning_rate": 1e-3, "alpha": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
    "momentum": 0.9, "dampening": 0.0, "rho": 0.9, "step": 10.0, "lr_decay": 0.0,
    "beta": 0.0, "learning_rate_power": -0.5, "l1_regularization_strength": 0.0,
    "l2_regularization_strength": 0.0, "l2_shrinkage_regularization_strength": 0.0,
    "eta_minus": 0.5, "eta_plus": 1.2, "step_size_min": 1e-6, "step_size_max": 50.0,
    "u_product": 0.9, "mu_product": 0.9, "momentum_decay": 4e-3, "lambd": 1e-4, "t0": 1e6,
    "eta_now": 1e-3, "mu_now": 1.0, "eta": 1e-3, "mu": 1.0, "weight_decay": 0.0,
    "warmup_steps": 0.0, "r": 0.0, "weight_lr_power": 2.0, "lr_max": 1e-3,
    "weight_sum": 1.0, "train_mode": 1.0,
}


def classes():
    """``{class: [rule names]}`` over :data:`fastopt.rule.RULES`, registry order."""
    out = {}
    for name, rule in RULES.items():
        out.setdefault(rule_class(rule), []).append(name)
    return out


def representative(names):
    return next((n for n in PREFERRED if n in names), names[0])


def _make(rule_name, n, dtype, backend):
    """A no-argument callable: one step of the rule's plan on one tensor."""
    rule = RULES[rule_name]
    rng = np.random.default_rng(n)
    w = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 1e-2).astype(dtype)
    slots = [[np.full(n, 0.1, dtype)] for _ in rule.slots]
    plan = fastopt.get_backend(backend).Plan(rule, [w], slots)
    scalars = tuple(SCALAR_VALUES.get(s, 0.5) for s in rule.scalars)
    grads = [g]
    if rule.two_phase:
        pt = np.array([[1.0], [1.0], [0.0], [1.0]])

        def step():
            plan.reduce(grads, pt, scalars)
            plan.step(grads, pt, scalars)
        return step
    pt = np.array([[1.0], [1.0], [0.0]])
    return lambda: plan.step(grads, pt, scalars)


def _calls_per_sample(fn, target_s):
    """How many back-to-back calls make one sample of about ``target_s``."""
    t0 = time.perf_counter()
    fn()
    fn()
    dt = (time.perf_counter() - t0) / 2
    return max(1, min(200, int(target_s / max(dt, 1e-7))))


def _sample(fn, k):
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t0) / k


def measure_crossover(module, dtype, rule_names, samples, target_s):
    """``{rule: {"sizes", "parallel_us", "serial_us"}}`` (medians, µs) on the
    backend ``module``, the override forced to 0 and to :data:`NEVER` in turn."""
    out = {}
    for name in rule_names:
        steps = {n: _make(name, n, dtype, module.NAME) for n in CROSS_SIZES}
        ks = {}
        for n, fn in steps.items():   # compile/warm up both drivers
            for mode in (0, NEVER):
                module.set_parallel_threshold(mode, dtype)
                fn()
            ks[n] = _calls_per_sample(fn, target_s)
        times = {(n, m): [] for n in CROSS_SIZES for m in (0, NEVER)}
        for r in range(samples):
            for n in CROSS_SIZES:
                # alternate which mode goes first, so neither always follows the other
                for mode in ((0, NEVER) if r % 2 == 0 else (NEVER, 0)):
                    module.set_parallel_threshold(mode, dtype)
                    times[n, mode].append(_sample(steps[n], ks[n]))
        out[name] = {"sizes": CROSS_SIZES,
                     "parallel_us": [_us(np.median(times[n, 0])) for n in CROSS_SIZES],
                     "serial_us": [_us(np.median(times[n, NEVER])) for n in CROSS_SIZES]}
        del steps
    return out


def threshold_from(rows):
    """The threshold that fits the measurements best: of the measured sizes
    (and "above the range", twice the largest), the one whose choice --
    serial below it, parallel from it -- loses least against the faster mode
    at each measured size, summed as log(chosen / faster), each term capped at
    log 2 so that one disturbed median cannot move the threshold far; a
    difference within :data:`TIE` counts as none (below one chunk the Cython
    backend runs the same serial loop in both modes), and ties go to the
    larger threshold."""
    sizes, par, ser = rows["sizes"], rows["parallel_us"], rows["serial_us"]
    candidates = list(sizes) + [sizes[-1] * 2]

    def loss(threshold):
        total = 0.0
        for n, p, s in zip(sizes, par, ser):
            chosen = p if n >= threshold else s
            total += min(max(0.0, math.log(chosen / min(p, s) / TIE)), math.log(2))
        return total
    losses = [loss(t) for t in candidates]
    best = min(losses)
    return max(t for t, x in zip(candidates, losses) if x <= best + 1e-12)


def measure_backends(dtype, rule_names, samples, target_s, backends):
    """``{rule: {"sizes", "<backend>_us" ...}}``: medians (µs), interleaved."""
    out = {}
    for name in rule_names:
        fns = {(n, b): _make(name, n, dtype, b) for n in SIZES for b in backends}
        ks, reps = {}, {}
        for key, fn in fns.items():
            fn()
            t0 = time.perf_counter()
            ks[key] = _calls_per_sample(fn, target_s)
            step_s = (time.perf_counter() - t0) / 2
            # the largest steps get a third of the samples, and at most about
            # half a second of them (Ftrl's power at 1e7: tenths of a second a step)
            reps[key] = samples if key[0] < 1_000_000 else max(9, samples // 3)
            reps[key] = min(reps[key], max(5, int(0.5 / step_s)))
        times = {key: [] for key in fns}
        for r in range(samples):
            for key, fn in fns.items():   # every backend and size, interleaved
                if r < reps[key]:
                    times[key].append(_sample(fn, ks[key]))
        out[name] = {"sizes": SIZES}
        for b in backends:
            out[name][f"{b}_us"] = [_us(np.median(times[n, b])) for n in SIZES]
        del fns
    return out


def auto_rule(results):
    """``[[max_size_or_None, backend], ...]`` from :func:`measure_backends`' output.

    A size's winner is the backend with the smallest geometric mean, over the
    rules in ``results``, of its median step time, unless the previous size's
    winner is within :data:`TIE` of it (then that one keeps the size); an
    isolated winner between two sizes won by one other backend is overruled
    by them.
    """
    first = next(iter(results.values()))
    backends = [k[:-3] for k in first if k.endswith("_us")]
    winners = []
    for i, n in enumerate(first["sizes"]):
        scores = {b: float(np.exp(np.mean(np.log([r[f"{b}_us"][i] for r in results.values()]))))
                  for b in backends}
        best = min(scores, key=scores.get)
        # within TIE of the best, the previous size's winner keeps the size
        if winners and scores[winners[-1][1]] <= scores[best] * TIE:
            best = winners[-1][1]
        winners.append((n, best))
    # a size whose winner differs from the common winner of both its
    # neighbours is noise (one core of a shared machine busy for a moment),
    # not a crossover and back: it goes to the neighbours' backend
    for i in range(1, len(winners) - 1):
        if winners[i - 1][1] == winners[i + 1][1] != winners[i][1]:
            winners[i] = (winners[i][0], winners[i - 1][1])
    rule = []
    for k, (n, backend) in enumerate(winners):
        last = k + 1 == len(winners) or winners[k + 1][1] != backend
        if last:
            rule.append([n, backend])
    rule[-1][0] = None
    return rule


def serial_costs(module, dtype, rule_names, samples, target_s, n=COST_SIZE):
    """``{rule: [min, median]}``: the serial step time of every rule on one
    tensor of ``n`` elements, ns per element, all rules interleaved.  The
    parallel crossover is where the parallel region's fixed cost equals the
    time the second thread saves, so it goes as the inverse of this cost: a
    class whose rules cost alike can share one threshold.  (The minimum is
    the robust statistic on a busy machine, where a crossover cannot be
    measured at all.)"""
    steps = {name: _make(name, n, dtype, module.NAME) for name in rule_names}
    module.set_parallel_threshold(NEVER, dtype)
    try:
        ks = {}
        for name, fn in steps.items():
            fn()
            ks[name] = _calls_per_sample(fn, target_s)
        times = {name: [] for name in steps}
        for _ in range(samples):
            for name, fn in steps.items():
                times[name].append(_sample(fn, ks[name]))
    finally:
        module.set_parallel_threshold(None, dtype)
    return {name: [round(min(t) / n * 1e9, 3), round(float(np.median(t)) / n * 1e9, 3)]
            for name, t in times.items()}


def cost_report(costs, groups):
    """Per class: its rules' minimum cost (ns/element) and the spread, the
    largest over the smallest; and the spread of each class over the cost
    of the class's rule of the same bytes but the other arithmetic."""
    out = {}
    for cls, names in groups.items():
        mins = {name: costs[name][0] for name in names}
        out[cls] = {"ns_per_element_min": mins,
                    "spread": round(max(mins.values()) / min(mins.values()), 2),
                    "median": float(np.median(list(mins.values())))}
    return out


def _us(seconds):
    x = float(seconds) * 1e6
    return float(f"{x:.3g}") if x < 1000 else round(x)


def _dump(obj):
    """JSON with number lists kept on one line."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]",
                  lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text) + "\n"


def _print_crossover(b, dt, cls, cross, per_rule, samples):
    print(f"\n{b} {dt} {cls}: serial vs parallel step time (µs, medians of {samples})")
    print("| size | " + " | ".join(f"{o} serial | {o} parallel" for o in cross) + " |")
    print("|---:|" + "---:|" * (2 * len(cross)))
    for i, n in enumerate(CROSS_SIZES):
        cells = " | ".join(f"{r['serial_us'][i]} | {r['parallel_us'][i]}"
                           for r in cross.values())
        print(f"| 2**{n.bit_length() - 1} | {cells} |")
    print(f"threshold per rule: {per_rule}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Calibrate fastopt's tuning.json on this machine.")
    ap.add_argument("--write", action="store_true", help=f"rewrite {TUNING_PATH}")
    ap.add_argument("--samples", type=int, default=41, help="samples per median (default 41)")
    ap.add_argument("--sample-ms", type=float, default=1.0,
                    help="target duration of one sample, ms (small steps are repeated)")
    ap.add_argument("--per-rule", action="store_true",
                    help="measure every rule, not one per class (checks the grouping; "
                         "a class's value is then the median of its rules')")
    ap.add_argument("--serial-costs", action="store_true",
                    help="only measure every rule's serial cost per element (min and "
                         "median) at 2**16 elements and report it per class: the "
                         "grouping check that a busy machine allows")
    ap.add_argument("--skip-auto", action="store_true",
                    help="measure the thresholds only (keeps tuning.json's auto tables)")
    ap.add_argument("--classes", help="comma-separated classes to measure (default: all); "
                                      "the others keep no value and fall back to the "
                                      "dtype's")
    ap.add_argument("--json", help="also write the results (thresholds per rule and "
                                   "class, measurements, machine) to this file")
    args = ap.parse_args(argv)
    target = args.sample_ms / 1e3
    t_start = time.perf_counter()
    # load every backend before touching thresholds
    fastopt.available_backends()
    info = machine_info()
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    print(machine_line(info), "| load average", info["loadavg_at_start"])
    compiled = [b for b in ("numba", "cython") if b in fastopt.available_backends()]
    modules = {b: fastopt.get_backend(b) for b in compiled}
    if "cython" in modules:
        info["cython_openmp"] = modules["cython"].OPENMP
    groups = classes()
    if args.classes:
        wanted = args.classes.split(",")
        unknown = sorted(set(wanted) - set(groups))
        if unknown:
            ap.error(f"unknown classes {unknown}; the classes are {sorted(groups)}")
        groups = {c: names for c, names in groups.items() if c in wanted}
    chosen = {cls: (names if args.per_rule else [representative(names)])
              for cls, names in groups.items()}
    print("classes:", json.dumps({c: {"measured": chosen[c], "rules": groups[c]}
                                  for c in groups}, indent=1))

    if args.serial_costs:
        result = {"machine": info, "date": datetime.date.today().isoformat(),
                  "samples": args.samples, "size": COST_SIZE,
                  "unit": "ns per element, serial step: [min, median]", "costs": {}}
        for b in compiled:
            for dt in DTYPES:
                costs = serial_costs(modules[b], dt, list(RULES), args.samples, target)
                report = cost_report(costs, groups)
                result["costs"][f"{b} {dt}"] = {"per_rule": costs, "per_class": report}
                print(f"\n{b} {dt}: serial cost at 2**16, ns/element (min over "
                      f"{args.samples} samples), per class")
                for cls, r in report.items():
                    cells = ", ".join(f"{k} {v}" for k, v in r["ns_per_element_min"].items())
                    print(f"  {cls}: median {r['median']}, spread x{r['spread']}: {cells}")
        info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        print(f"load average at the end: {info['loadavg_at_end']}; "
              f"took {time.perf_counter() - t_start:.0f} s")
        if args.json:
            Path(args.json).write_text(_dump(result))
            print(f"wrote {args.json}")
        return

    # --classes: the other classes keep the file's values
    old = TUNING.get("parallel_threshold_by_class", {}) if args.classes else {}
    by_class = {b: {dt: dict(old.get(b, {}).get(dt, {})) for dt in DTYPES} for b in compiled}
    per_rule_thresholds = {b: {dt: {} for dt in DTYPES} for b in compiled}
    defaults = {b: {} for b in compiled}
    measurements = {"parallel_vs_serial": {b: {dt: {} for dt in DTYPES} for b in compiled},
                    "backends": {dt: {} for dt in DTYPES}}
    try:
        for b in compiled:
            for dt in DTYPES:
                for cls, names in chosen.items():
                    cross = measure_crossover(modules[b], dt, names, args.samples, target)
                    measurements["parallel_vs_serial"][b][dt][cls] = cross
                    per_rule = {name: threshold_from(rows) for name, rows in cross.items()}
                    per_rule_thresholds[b][dt].update(per_rule)
                    # the median of the rules' (the lower middle of an even count)
                    values = sorted(per_rule.values())
                    by_class[b][dt][cls] = values[(len(values) - 1) // 2]
                    _print_crossover(b, dt, cls, cross, per_rule, args.samples)
                defaults[b][dt] = max(by_class[b][dt].values())
                print(f"\n{b} {dt}: thresholds by class {by_class[b][dt]}; "
                      f"default {defaults[b][dt]}")
    finally:
        for b in compiled:   # no override left behind
            for dt in DTYPES:
                modules[b].set_parallel_threshold(None, dt)

    auto, auto_by_class = dict(TUNING.get("auto", {})), dict(TUNING.get("auto_by_class", {}))
    if len(compiled) > 1 and not args.skip_auto:
        rule_map = {name: cls for cls, names in classes().items() for name in names}
        for b in compiled:   # the new thresholds, for (b)
            per_rule = {dt: {name: by_class[b][dt][cls] for name, cls in rule_map.items()
                             if cls in by_class[b][dt]} for dt in DTYPES}
            modules[b].configure_thresholds(defaults[b], per_rule)
        for dt in DTYPES:
            reps = [representative(names) for names in groups.values()]
            res = measure_backends(dt, reps, args.samples, target, compiled)
            measurements["backends"][dt] = res
            measured = {cls: auto_rule({r: res[r]}) for cls, r in zip(groups, reps)}
            auto_by_class[dt] = {**(auto_by_class.get(dt, {}) if args.classes else {}),
                                 **measured}
            if not args.classes:   # the fallback needs every class
                auto[dt] = auto_rule(res)
            print(f"\n{dt}: step time per backend (µs)")
            print("| size | " + " | ".join(f"{o} {b}" for o in res for b in compiled) + " |")
            print("|---:|" + "---:|" * (len(compiled) * len(res)))
            for i, n in enumerate(SIZES):
                cells = " | ".join(f"{r[b + '_us'][i]}" for r in res.values() for b in compiled)
                print(f"| {n:.0e} | {cells} |")
            print(f"auto by class: {json.dumps(auto_by_class[dt])}")
            print(f"auto (fallback): {json.dumps(auto[dt])}")

    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    elapsed = time.perf_counter() - t_start
    tuning = {
        "measured_by": "python benchmarks/calibrate.py --write"
                       + (" --per-rule" if args.per_rule else "")
                       + (f" --classes {args.classes}" if args.classes else "")
                       + ("" if args.samples == 41 else f" --samples {args.samples}")
                       + ("" if args.sample_ms == 1.0 else f" --sample-ms {args.sample_ms}"),
        "machine": info,
        "date": datetime.date.today().isoformat(),
        "parallel_threshold": {**TUNING.get("parallel_threshold", {}), **defaults},
        "auto": auto,
        "rule_classes": {name: rule_class(rule) for name, rule in RULES.items()},
        "parallel_threshold_by_class": by_class,
        "auto_by_class": auto_by_class,
        "measurements": {"unit": "us per step (median)", **measurements},
    }
    print(f"\nparallel_threshold_by_class: {json.dumps(by_class)}")
    print(f"parallel_threshold (default): {json.dumps(defaults)}")
    print(f"load average at the end: {info['loadavg_at_end']}")
    print(f"calibration took {elapsed:.0f} s")
    if args.json:
        Path(args.json).write_text(_dump({
            **tuning, "elapsed_s": round(elapsed), "samples": args.samples,
            "parallel_threshold_by_rule": per_rule_thresholds}))
        print(f"wrote {args.json}")
    if args.write:
        TUNING_PATH.write_text(_dump(tuning))
        print(f"wrote {TUNING_PATH}")


if __name__ == "__main__":
    main()
