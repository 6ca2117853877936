"""The ``fastopt`` command: ``compare`` (the optimizer experiment, with
fastopt's trainer or, ``--framework keras``, in Keras), ``bench`` (speed and
numerics of the optimizer steps) and ``info``.

Bad input (arguments and their combinations, data files, optimizer settings,
output paths) ends with one line on stderr and exit status 2, never a traceback,
and is found before any work.  Exit status 1: a ``bench`` row failed its numerics
check, or a ``compare`` run diverged.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys


def _thresholds(module):
    """``"32768 (adam) / 131072 (sgd) float32, ..."``: the thresholds Adam and
    SGD run by on ``module`` (per class of rules, or the override)."""
    return ", ".join(
        " / ".join(f"{module.get_parallel_threshold(dt, r)} ({r})" for r in ("adam", "sgd"))
        + f" {dt}" for dt in ("float32", "float64"))


def _info(args):
    import numpy as np

    import fastopt
    from fastopt import backends

    print(f"fastopt  {fastopt.__version__}")
    print(f"python   {platform.python_version()} ({platform.machine()})")
    print(f"numpy    {np.__version__}")
    names = fastopt.available_backends()
    print(f"backends {', '.join(names)}")
    for name in backends.BACKEND_NAMES:
        if name not in names:
            try:
                backends.get_backend(name)
            except ImportError as exc:
                print(f"         {name}: unavailable ({exc})")
    if "numba" in names:
        import numba

        nb = backends.get_backend("numba")
        layer = nb.threading_layer()
        print(f"numba    {numba.__version__}, threading layer {layer}, "
              f"{fastopt.get_num_threads()} of {nb.max_threads()} threads, parallel from "
              f"{_thresholds(nb)} elements")
        if layer == "workqueue":
            print("         warning: the workqueue layer costs ~100 us per parallel region; "
                  "install an OpenMP runtime (libgomp) or tbb for the omp/tbb layer")
    if "cython" in names:
        cy = backends.get_backend("cython")
        if cy.OPENMP:
            how = (f"built with OpenMP, {cy.get_num_threads()} threads, parallel from "
                   f"{_thresholds(cy)} elements")
        else:
            how = ("built without OpenMP: every step runs serially (FASTOPT_NO_OPENMP=1 "
                   "or a compiler without OpenMP at build time)")
        isa = ("the AVX2 copy" if cy.ISA == "avx2"
               else "the x86-64 baseline (SSE2) build")
        print(f"cython   {isa}, {how}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (exit status 2), no usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: ``kind`` (int or float) within the given bounds."""
    if low is None:
        bounds = f" <= {high}"
    elif high is None:
        bounds = f" {'>' if low_open else '>='} {low}"
    else:
        bounds = f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    expected = f"{'an integer' if kind is int else 'a number'}{bounds}"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        too_low = low is not None and (value < low or low_open and value == low)
        too_high = high is not None and (value > high or high_open and value == high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


def _names(text):
    """``"adam, sgd"`` -> ``["adam", "sgd"]`` (duplicates dropped)."""
    return list(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))


def _hidden(text):
    parse = _number(int, low=1)
    try:
        return tuple(parse(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected layer sizes >= 1 separated by commas, e.g. 32,16; got {text!r}") from None


def _load_data(args, fail):
    """Training and validation rows, standardised with the training rows' statistics."""
    from fastopt.train import (
        DataError,
        Standardizer,
        load_builtin,
        load_csv,
        train_test_split,
    )

    if args.csv is None:
        X, y, names = load_builtin()
        source = "the built-in data set"
    else:
        try:
            X, y, names = load_csv(args.csv, args.target)
        except DataError as exc:
            fail(str(exc))
        labels = sorted(set(y.tolist()))
        if not set(labels) <= {0.0, 1.0} or len(labels) < 2:
            shown = ", ".join(f"{v:g}" for v in labels[:10]) + (", ..." if labels[10:] else "")
            fail(f"the target column {args.target!r} of {args.csv!r} must hold the binary labels "
                 f"0 and 1; it holds {shown}")
        source = args.csv
    try:
        X_train, X_test, y_train, y_test = train_test_split(X, y, args.test_size, seed=0)
    except ValueError as exc:
        fail(str(exc))
    try:
        scaler = Standardizer().fit(X_train)
        X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    except ValueError as exc:
        fail(f"{source}: the features cannot be standardised: {exc}")
    return X_train, y_train, X_test, y_test, names, source


def _plural(n, word):
    return f"{n} {word}{'s' if n != 1 else ''}"


def _writable(path, option, fail):
    """Fail unless ``path`` names a file this process can write: checked before
    any work, so that a long run never ends on an unwritable output.  The probe
    opens the file for appending (an existing file is left as it is) and removes
    it again if it did not exist."""
    if not path:
        fail(f"{option}: expected a file name, got ''")
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        fail(f"{option} {path!r} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        fail(f"{option} {path!r}: the folder {folder!r} does not exist")
    existed = os.path.lexists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        fail(f"{option}: cannot write {path!r}: {exc.strerror or exc}")
    if not existed:
        try:
            os.remove(path)
        except OSError:  # pragma: no cover - removed meanwhile
            pass


def _refuse_for_keras(args, fail):
    """Fail on the options that choose how fastopt's own trainer runs: under
    ``--framework keras`` Keras trains, and fastopt.keras takes Keras's options."""
    only = "applies to --framework fastopt only"
    if args.backend != "auto":
        fail(f"--backend {args.backend} {only}; fastopt.keras chooses fastopt's backend "
             "itself (auto)")
    if args.convention != "keras":
        fail(f"--convention {args.convention} {only}; Keras's optimizers and fastopt.keras "
             "follow Keras's formulas and defaults")
    if args.state_dtype is not None:
        fail(f"--state-dtype {only}; under --framework keras the optimizer state is Keras's "
             "slot variables, in the model's dtype")
    if args.state_rounding is not None:
        fail(f"--state-rounding {only} (with --state-dtype)")


def _compare(args):
    import numpy as np

    from fastopt.train import comparison, plot

    fail = args.parser.error
    in_keras = args.framework == "keras"
    if (args.csv is None) != (args.target is None):
        fail("--csv PATH and --target COLUMN go together" if args.csv is None
             else "--csv needs --target COLUMN, the column to predict")
    if in_keras:
        _refuse_for_keras(args, fail)
    if args.hidden is not None and args.model != "mlp":
        fail("--hidden applies to --model mlp only")
    if args.activation is not None and args.model != "mlp":
        fail("--activation applies to --model mlp only")
    hidden = args.hidden or (16,)
    args.activation = args.activation or "relu"
    if not args.optimizers:
        fail("--optimizers needs at least one name; valid names: "
             + ", ".join(comparison.OPTIMIZERS))
    momentum_given = args.momentum is not None
    args.momentum = 0.3 if args.momentum is None else args.momentum
    if args.state_rounding is not None and args.state_dtype is None:
        fail("--state-rounding needs --state-dtype bfloat16")
    if args.state_dtype is not None and args.dtype != "float32":
        fail(f"--state-dtype {args.state_dtype} needs --dtype float32")
    if args.state_dtype is not None:
        from fastopt.backends import state_backends
        allowed = [b for b in state_backends(args.state_dtype) if b != "cuda"]  # host models
        if args.backend != "auto" and args.backend not in allowed:
            fail(f"--state-dtype {args.state_dtype} runs on --backend {' or '.join(allowed)} "
                 f"(or auto), not {args.backend}")
    if args.backend != "auto":
        from fastopt.backends import get_backend
        try:
            get_backend(args.backend)
        except ImportError as exc:
            fail(f"--backend: {exc}")
    try:
        comparison.check_optimizers(args.optimizers, args.learning_rate, args.momentum,
                                    args.backend, args.convention, args.dtype,
                                    args.state_dtype, args.state_rounding)
    except ValueError as exc:
        fail(f"--optimizers: {exc}")
    if momentum_given and not any(comparison.OPTIMIZERS[n].takes_momentum
                                  for n in args.optimizers):
        fail("--momentum applies to the optimizers momentum and nesterov only, and "
             "--optimizers names neither")
    plot_path = args.plot
    if plot_path is not None:
        missing = plot.matplotlib_missing()
        if missing:
            fail(f"--plot: {missing}")
        _writable(plot_path, "--plot", fail)
    elif not args.no_plot:
        missing = plot.matplotlib_missing()
        if missing:
            print(f"fastopt compare: no plot: {missing}", file=sys.stderr)
        else:
            plot_path = "compare.png"
            _writable(plot_path, "the default plot",
                      lambda message: fail(f"{message} (choose --plot PATH or --no-plot)"))
    if args.json is not None:
        _writable(args.json, "--json", fail)
        if plot_path is not None and os.path.realpath(args.json) == os.path.realpath(plot_path):
            fail(f"--json {args.json!r} is also the plot's file; give them different names")
    if in_keras:  # imported only here: the default framework never loads Keras or torch
        from fastopt.train import keras_compare
        try:
            keras_compare.check_optimizers(args.optimizers, args.learning_rate, args.momentum)
        except keras_compare.KerasUnavailable as exc:
            fail(f"--framework keras: {exc}")
        except ValueError as exc:
            fail(f"--optimizers: {exc}")
        versions = keras_compare.versions()

    X_train, y_train, X_test, y_test, names, source = _load_data(args, fail)
    model = ("logistic regression" if args.model == "logistic" else
             f"an MLP ({', '.join(map(str, hidden))} {args.activation} units, sigmoid output)")
    trainer = (f" in Keras {versions['keras']} (model.fit, torch {versions['torch']} backend)"
               if in_keras else "")
    print(f"Training {model}{trainer} on {source}: {len(X_train)} training and {len(X_test)} "
          f"validation rows, {len(names)} features (standardised on the training rows).")
    settings = (f"learning rate {args.learning_rate:g}, momentum {args.momentum:g} (momentum "
                f"and nesterov), batch size {args.batch_size}, {_plural(args.epochs, 'epoch')}, "
                f"{_plural(args.seeds, 'seed')}")
    if in_keras:
        print(f"{settings}, {args.dtype}; each optimizer twice, as keras.optimizers.X and as "
              "fastopt.keras.X, from the same weights on the same batches")
    else:
        print(f"{settings}, {args.convention} convention, {args.dtype}, backend {args.backend}"
              + ("" if args.state_dtype is None else
                 f", {args.state_dtype} optimizer state ({args.state_rounding or 'nearest'} "
                 "rounding)"))
    width = max(16, *(len(n) + (len(" (fastopt.keras)") if in_keras else 0)
                      for n in args.optimizers))

    def progress(name, seed, history, seconds):
        print(f"  {name:<{width}} seed {seed}: loss {history['loss'][-1]:.4f}, val_accuracy "
              f"{history['val_accuracy'][-1]:.4f} ({seconds:.2f} s)", file=sys.stderr)

    common = dict(optimizers=args.optimizers, learning_rate=args.learning_rate,
                  momentum=args.momentum, epochs=args.epochs, batch_size=args.batch_size,
                  seeds=args.seeds, model=args.model, hidden=hidden,
                  activation=args.activation, dtype=args.dtype, on_run=progress)
    with np.errstate(all="ignore"):  # a run that diverges is reported once, at the end
        if in_keras:
            runs = keras_compare.compare(X_train, y_train, (X_test, y_test), **common)
        else:
            runs = comparison.compare(
                X_train, y_train, (X_test, y_test), backend=args.backend,
                convention=args.convention, state_dtype=args.state_dtype,
                state_rounding=args.state_rounding, **common)
    print()
    print(comparison.format_table(comparison.summarize(runs)))
    print(f"\nmean ± std over {_plural(args.seeds, 'seed')} "
          f"({', '.join(map(str, range(args.seeds)))}). final loss, accuracy: the last epoch's "
          "training figures, as Keras reports them;\nval accuracy: on the validation rows "
          "after the last epoch.")
    if in_keras:
        agreement = keras_compare.curve_differences(runs)
        print("\nkeras.optimizers.X vs fastopt.keras.X: the largest difference between their "
              "loss curves\n(training and validation loss, every epoch and seed; relative: "
              "to Keras's value)")
        name_width = max(len("optimizer"), *map(len, agreement))
        print(f"  {'optimizer':<{name_width}}  absolute  relative")
        for name, d in agreement.items():
            print(f"  {name:<{name_width}}  {d['absolute']:<8.1e}  {d['relative']:.1e}")

    if args.json is not None:
        config = {"framework": args.framework,
                  "optimizers": args.optimizers, "learning_rate": args.learning_rate,
                  "momentum": args.momentum, "epochs": args.epochs,
                  "batch_size": args.batch_size, "seeds": args.seeds, "model": args.model,
                  "hidden": list(hidden) if args.model == "mlp" else None,
                  "activation": args.activation if args.model == "mlp" else None,
                  "backend": args.backend, "convention": args.convention,
                  "dtype": args.dtype, "data": "builtin" if args.csv is None else args.csv,
                  "target": args.target, "test_size": args.test_size,
                  "features": names, "n_train": len(X_train), "n_validation": len(X_test),
                  "state_dtype": args.state_dtype,
                  "state_rounding": args.state_rounding
                  or ("nearest" if args.state_dtype else None)}
        if in_keras:
            config.update(versions)
        report = comparison.json_report(config, runs)
        if in_keras:
            report["agreement"] = {
                name: {k: v if math.isfinite(v) else None for k, v in d.items()}
                for name, d in agreement.items()}
        try:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1, allow_nan=False)
        except OSError as exc:
            fail(f"--json: cannot write {args.json!r}: {exc.strerror or exc}")
        print(f"json: {args.json}")
    if plot_path is not None:
        title = (f"{model}{' in Keras' if in_keras else ''} on "
                 f"{os.path.basename(source) if args.csv else 'the built-in data'}: "
                 f"lr {args.learning_rate:g}, batch {args.batch_size}, "
                 f"{_plural(args.seeds, 'seed')}"
                 f"{' (mean, band: min to max)' if args.seeds > 1 else ''}")
        try:
            plot.plot_runs(runs, plot_path, title,
                           styles=keras_compare.STYLES if in_keras else None)
        except OSError as exc:
            fail(f"--plot: cannot write {plot_path!r}: {exc.strerror or exc}")
        print(f"plot: {plot_path}")
    diverged = comparison.diverged(runs)
    if diverged:
        shown = "; ".join(f"{name} seed {seed} from epoch {epoch + 1}"
                          for name, seed, epoch in diverged[:5])
        more = f" and {len(diverged) - 5} more" if len(diverged) > 5 else ""
        print(f"fastopt compare: training diverged (the loss is not a finite number): "
              f"{shown}{more}; try a smaller --learning-rate", file=sys.stderr)
        return 1
    return 0


def _sizes(text):
    """``"1e3,1e5"`` -> ``[1000, 100000]``: whole numbers >= 1."""
    out = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 1 or value != int(value):
            raise argparse.ArgumentTypeError(
                f"expected whole numbers >= 1 separated by commas, e.g. 1e3,1e5,1e7; "
                f"got {part.strip()!r}")
        out.append(int(value))
    return out


class _Progress:
    """A one-line progress bar on stderr (only on a terminal)."""

    def __init__(self, stream, width=30):
        self.stream, self.width, self.last = stream, width, 0

    def __call__(self, done, total, label):
        filled = self.width * done // max(total, 1)
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {label}"
        pad = " " * max(0, self.last - len(line))
        self.stream.write(f"\r{line}{pad}")
        self.last = len(line)
        if done == total:
            self.stream.write("\r" + " " * self.last + "\r")
        self.stream.flush()


def _bench_muon(args):
    from fastopt.bench import muon

    if len(args.backends) != 1:
        args.parser.error("--muon: give one backend")
    result = muon.run(dtype=args.dtype, threads=args.threads, backend=args.backends[0],
                      convention=args.convention,
                      repeats=args.repeats if args.repeats is not None else 7,
                      warmup=args.warmup if args.warmup is not None else 2,
                      torch=not args.no_torch)
    result["command"] = "fastopt bench" + "".join(f" {a}" for a in args.argv)
    print(muon.format_report(result))
    if args.json is not None:
        _writable(args.json, "--json", args.parser.error)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        print(f"json: {args.json}")
    return 0


def _bench(args):
    from fastopt import bench

    if args.muon:
        return _bench_muon(args)
    fail = args.parser.error
    quick = args.quick
    config = bench.Config(
        optimizers=tuple(args.optimizers), backends=tuple(args.backends),
        sizes=tuple(args.sizes), dtype=args.dtype, threads=args.threads,
        tensors=args.tensors,
        repeats=args.repeats if args.repeats is not None else (5 if quick else 15),
        warmup=args.warmup if args.warmup is not None else (2 if quick else 3),
        sample_time=(args.sample_ms if args.sample_ms is not None else 0.5 if quick else 2.0) / 1e3,
        convention=args.convention,
        naive=not args.no_naive, torch=not args.no_torch, numerics=not args.no_numerics,
        optimizer_options=({} if args.state_dtype is None else
                           {"state_dtype": args.state_dtype,
                            "state_rounding": args.state_rounding or "nearest"}))
    if args.state_rounding is not None and args.state_dtype is None:
        fail("--state-rounding: needs --state-dtype bfloat16")
    try:
        bench.check(config)
    except bench.ConfigError as exc:
        option = {"sample_time": "sample_ms", "optimizer_options": "state_dtype"}.get(
            exc.field, exc.field)
        fail(f"--{option.replace('_', '-')}: {exc.message}")
    if args.json is not None:
        _writable(args.json, "--json", fail)
    show = not args.quiet and sys.stderr.isatty()
    result = bench.run(config, progress=_Progress(sys.stderr) if show else None)
    result["command"] = "fastopt bench" + "".join(f" {a}" for a in args.argv)
    print(bench.format_report(result))
    if args.json is not None:
        try:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1, allow_nan=False)
                f.write("\n")
        except OSError as exc:
            fail(f"--json: cannot write {args.json!r}: {exc.strerror or exc}")
        print(f"json: {args.json}")
    failed = [r for r in result["rows"] if r["numerics_ok"] is False]
    if failed:
        print(f"fastopt bench: {_plural(len(failed), 'row')} failed the numerics check",
              file=sys.stderr)
        return 1
    return 0


def _add_bench(sub):
    from fastopt import bench
    from fastopt.backends import BACKEND_NAMES
    from fastopt.hyperparams import own_conventions

    p = sub.add_parser(
        "bench", help="time the optimizer steps against the memory ceiling, NumPy and PyTorch",
        description="Measure this machine's memory ceiling, then time one step of each "
                    "optimizer x backend x size (medians after warm-up), compare it with the "
                    "ceiling, with the naive NumPy step and with torch.optim (when torch can "
                    "be imported), and check one step against the float64 reference.")
    p.add_argument("--optimizers", type=_names, default=list(bench.CASES), metavar="NAMES",
                   help=f"comma-separated, from: {', '.join(bench.CASES)} (default: all)")
    p.add_argument("--backends", type=_names, default=["auto"], metavar="NAMES",
                   help=f"comma-separated, from: {', '.join(('auto', *BACKEND_NAMES))} "
                        "(default: auto)")
    p.add_argument("--sizes", type=_sizes, default=list(bench.DEFAULT_SIZES), metavar="LIST",
                   help="parameters per step, comma-separated (default: 1e3,1e5,1e7)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="(default: float32)")
    p.add_argument("--threads", type=_number(int, low=1), metavar="N",
                   help="threads for fastopt and torch (default: fastopt's current setting)")
    p.add_argument("--tensors", type=_number(int, low=1), default=1, metavar="K",
                   help="split the parameters into K tensors of mixed shapes (default: 1)")
    p.add_argument("--repeats", type=_number(int, low=1), metavar="N",
                   help="timed samples per measurement (default: 15; 5 with --quick)")
    p.add_argument("--warmup", type=_number(int, low=1), metavar="N",
                   help="untimed steps first (default: 3; 2 with --quick)")
    p.add_argument("--sample-ms", type=_number(float, low=0.0, high=10_000.0), metavar="MS",
                   help="a sample repeats a fast step until it lasts this long, back to back, "
                        "so a step whose data fits in the cache finds it there (default: 2; "
                        "0.5 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="fewer and shorter samples: a rough answer fast")
    p.add_argument("--convention", choices=("keras", "torch"), default="keras",
                   help="of the fastopt optimizers; one that exists in one framework only "
                        f"({own_conventions({n: c.cls for n, c in bench.CASES.items()})}) runs "
                        "under its own (default: keras)")
    p.add_argument("--state-dtype", choices=("bfloat16", "int8"),
                   help="optimizer state as bfloat16 or 8-bit codes (float32 params; numba "
                        "backend, int8 also cython; see docs/reduced-precision.md)")
    p.add_argument("--state-rounding", choices=("nearest", "stochastic"),
                   help="with --state-dtype: round to nearest (default) or stochastically")
    p.add_argument("--no-torch", action="store_true", help="do not time torch.optim")
    p.add_argument("--no-naive", action="store_true", help="do not time the naive NumPy step")
    p.add_argument("--no-numerics", action="store_true",
                   help="skip the check against the float64 reference")
    p.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--muon", action="store_true",
                   help="time Muon instead (a transformer block's matrices at width 256): "
                        "the step split into Newton-Schulz and the elementwise rest, against "
                        "torch.optim.Muon at the same thread count; takes --threads, --dtype, "
                        "--convention, one of --backends, --repeats, --warmup, --no-torch, "
                        "--json")
    p.set_defaults(func=_bench, parser=p)


def _add_compare(sub):
    from fastopt.backends import BACKEND_NAMES
    from fastopt.hyperparams import own_conventions
    from fastopt.train import comparison

    p = sub.add_parser(
        "compare", help="train one model with several optimizers and compare the loss curves",
        description="Train the same model (same initial weights, same batches) with each "
                    "optimizer, print a ranking of the final figures and plot the loss curves.")
    p.add_argument("--optimizers", type=_names, default=list(comparison.DEFAULT_OPTIMIZERS),
                   metavar="NAMES",
                   help=f"comma-separated, from: {', '.join(comparison.OPTIMIZERS)} "
                        f"(default: {','.join(comparison.DEFAULT_OPTIMIZERS)})")
    p.add_argument("--framework", choices=("fastopt", "keras"), default="fastopt",
                   help="fastopt: train with fastopt's NumPy trainer; keras: train a Keras "
                        "model with model.fit, twice per optimizer, with keras.optimizers.X "
                        "and with fastopt.keras.X, and compare the two (needs Keras 3 and "
                        "torch: pip install 'fastopt[keras]'; not with --backend, "
                        "--convention torch or --state-dtype) (default: fastopt)")
    p.add_argument("--learning-rate", type=_number(float, low=0.0), default=0.01,
                   metavar="LR", help="for every optimizer (default: 0.01)")
    p.add_argument("--momentum", type=_number(float, low=0.0, high=1.0),
                   help="of the momentum and nesterov optimizers (default: 0.3)")
    p.add_argument("--epochs", type=_number(int, low=1), default=5, help="(default: 5)")
    p.add_argument("--batch-size", type=_number(int, low=1), default=16, help="(default: 16)")
    p.add_argument("--seeds", type=_number(int, low=1), default=1, metavar="N",
                   help="runs per optimizer, seeds 0..N-1; a seed fixes the initial weights "
                        "and the batch order (default: 1)")
    p.add_argument("--model", choices=comparison.MODELS, default="logistic",
                   help="(default: logistic)")
    p.add_argument("--hidden", type=_hidden, metavar="SIZES",
                   help="hidden layer sizes of the mlp, comma-separated (default: 16)")
    p.add_argument("--activation", choices=("relu", "tanh", "sigmoid"),
                   help="of the mlp's hidden layers (default: relu)")
    p.add_argument("--backend", choices=("auto", *BACKEND_NAMES), default="auto",
                   help="(default: auto)")
    p.add_argument("--convention", choices=("keras", "torch"), default="keras",
                   help="the optimizers' formulas and defaults; one that exists in one "
                        "framework only "
                        f"({own_conventions({n: r.cls for n, r in comparison.OPTIMIZERS.items()})})"
                        " runs under its own (default: keras)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="of the model and optimizer (default: float32)")
    p.add_argument("--state-dtype", choices=("bfloat16", "int8"),
                   help="keep the optimizers' state (Adam's m and v, ...) in bfloat16 or as "
                        "8-bit codes with a scale per 256: float32 parameters, numba backend "
                        "(int8: also cython) (default: the parameters' dtype)")
    p.add_argument("--state-rounding", choices=("nearest", "stochastic"),
                   help="how bfloat16 state is rounded (default: nearest)")
    p.add_argument("--csv", metavar="PATH",
                   help="data: a CSV file with a header row and numeric columns "
                        "(default: the built-in data set)")
    p.add_argument("--target", metavar="COLUMN", help="the CSV column to predict (0/1 labels)")
    p.add_argument("--test-size", type=_number(float, low=0.0, high=1.0, low_open=True,
                                               high_open=True),
                   default=0.3, metavar="FRACTION",
                   help="share of rows held out for validation, split with seed 0 (default: 0.3)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--plot", metavar="PATH",
                       help="write the loss curves to this PNG (default: compare.png when "
                            "matplotlib is installed)")
    where.add_argument("--no-plot", action="store_true", help="write no plot")
    p.add_argument("--json", metavar="PATH", help="write every run's history as JSON")
    p.set_defaults(func=_compare, parser=p)


def main(argv=None):
    """Run the ``fastopt`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns 0 on success, 1 when ``bench`` finds a row that fails its numerics
    check or a ``compare`` run diverges (its loss not finite); bad input raises
    ``SystemExit(2)`` after one line on stderr, before any work.
    """
    parser = _Parser(prog="fastopt", description="Fused optimizer kernels.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_compare(sub)
    _add_bench(sub)
    p = sub.add_parser("info", help="versions, backends, threading")
    p.set_defaults(func=_info)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv[1:]
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
