"""Backend registry: the one place that maps a backend name to its module and
decides what ``backend="auto"`` means.

A backend that cannot be imported (its compiler or package missing) is simply
absent from :func:`available_backends`; asking for it by name raises an
``ImportError`` that says how to get it.  ``import fastopt`` never fails
because of a backend.

``"auto"`` follows the committed table in ``tuning.json`` (written by
``benchmarks/calibrate.py`` from measurements): for each dtype, a list of
``[max_size, backend]`` rows, the first row whose ``max_size`` is at least the
group's size (``null`` = no limit) and whose backend is available wins.  The
same file holds the measured serial/parallel thresholds of the compiled
backends.  Both are measured per *class* of rules (:func:`rule_class`: the
bytes a step moves per element and the element function's costliest
arithmetic): ``rule_classes`` maps each rule to its class,
``auto_by_class`` and ``parallel_threshold_by_class`` hold the class's values,
and a rule missing from ``rule_classes`` (a rule added after the calibration)
gets the per-dtype ``auto`` and ``parallel_threshold`` instead.
CUDA device arrays are a separate case: only the ``"cuda"`` backend takes
them, so for them ``"auto"`` is ``"cuda"``.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np

__all__ = ["available_backends", "get_backend", "resolve_backend", "set_num_threads",
           "get_num_threads", "num_threads_set", "set_parallel_threshold", "get_parallel_threshold",
           "BACKEND_NAMES", "STATE_DTYPES", "resolve_state_backend", "rule_class",
           "tuned_threshold"]

#: Every backend fastopt knows, in order of preference for error messages.
_MODULES = {
    "numpy": "fastopt.backends.numpy_backend",
    "numba": "fastopt.backends.numba_backend",
    "cython": "fastopt.backends.cython_backend",
    "cuda": "fastopt.backends.cuda_backend",
}
_HOW_TO_GET = {
    "numba": "install it with `pip install numba` (a required dependency of fastopt)",
    "cython": "its extension module is built when fastopt is installed: from a source "
              "checkout run `pip install -e .` (or `python setup.py build_ext --inplace`); "
              "this needs a C compiler, Cython>=3 and NumPy, and no FASTOPT_NO_CYTHON=1",
    "cuda": "install it with `pip install 'fastopt[cuda]'` (numba-cuda) on a machine with an "
            "NVIDIA GPU and driver; without a GPU, NUMBA_ENABLE_CUDASIM=1 (set before numba "
            "is imported) runs it on Numba's slow CUDA simulator, for testing",
}
BACKEND_NAMES = tuple(_MODULES)

_loaded: dict = {}
_errors: dict = {}
_num_threads: int | None = None
_threshold_override: dict = {}

TUNING = json.loads((Path(__file__).with_name("tuning.json")).read_text())


def _load(name):
    if name not in _loaded and name not in _errors:
        try:
            module = importlib.import_module(_MODULES[name])
        except Exception as exc:  # a broken optional backend must not break fastopt
            _errors[name] = exc
        else:
            _loaded[name] = module
            _configure(module)
    return _loaded.get(name)


def rule_class(rule):
    """The tuning class of a compiled rule, e.g. ``"28B-heavy"``.

    The bytes one float32 step moves per element (:meth:`Rule.bytes_per_param`:
    the parameter, the gradient, the slots, and a two-phase rule's first
    pass), then the element function's arithmetic, the costliest that
    applies: ``pow`` (a power: an order of magnitude above the rest),
    ``branch`` (a test on the element's values, or ``sign``: loops that do
    not vectorise everywhere), ``heavy`` (a square root or a division),
    ``light``.  Rules of one class share their parallel threshold and
    ``auto`` table in ``tuning.json``; ``benchmarks/calibrate.py`` measures
    one rule per class (docs/performance.md says why this grouping).
    """
    import ast
    fn = rule.element_ast
    nodes = list(ast.walk(fn))
    calls = {_call_name(n) for n in nodes if isinstance(n, ast.Call)}
    if "pow" in calls or any(isinstance(n, ast.Pow) for n in nodes):
        cost = "pow"
    elif "sign" in calls or _branches_on_elements(fn, 2 + len(rule.slots)):
        cost = "branch"
    elif "sqrt" in calls or any(isinstance(n, ast.Div) for n in nodes):
        cost = "heavy"
    else:
        cost = "light"
    return f"{rule.bytes_per_param('float32')}B-{cost}"


def _call_name(node):
    f = node.func
    return getattr(f, "attr", None) or getattr(f, "id", None)


def _branches_on_elements(fn, n_arrays):
    """Whether an ``if`` (or a conditional expression) of the element
    function ``fn`` tests a value computed from the arrays (its first
    ``n_arrays`` arguments), not from the per-step scalars only (a test on a
    scalar is hoisted out of the loop by the compiler)."""
    import ast
    varying = {a.arg for a in fn.args.args[:n_arrays]}

    def reads_varying(node):
        return any(isinstance(n, ast.Name) and n.id in varying for n in ast.walk(node))

    found = False

    def visit(stmts):
        nonlocal found
        for st in stmts:
            if isinstance(st, ast.If):
                found = found or reads_varying(st.test)
                visit(st.body)
                visit(st.orelse)
                continue
            if any(isinstance(n, ast.IfExp) and reads_varying(n.test) for n in ast.walk(st)):
                found = True
            if isinstance(st, (ast.Assign, ast.AugAssign)) and reads_varying(st.value):
                targets = st.targets if isinstance(st, ast.Assign) else [st.target]
                for t in targets:
                    varying.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    # twice: a name assigned from the arrays after a test that reads it earlier
    visit(fn.body)
    visit(fn.body)
    return found


def tuned_threshold(backend, rule_name, dtype, tuning=None):
    """``tuning.json``'s parallel threshold of ``rule_name`` on ``backend``
    (``"numba"`` or ``"cython"``) for ``dtype``: its class's, else (a rule
    not in the file, or a class without a value) the dtype's default; None
    if the file has neither.  ``tuning``: another parsed file (tests)."""
    tuning = TUNING if tuning is None else tuning
    dt = np.dtype(dtype).name
    klass = tuning.get("rule_classes", {}).get(rule_name)
    by_class = tuning.get("parallel_threshold_by_class", {}).get(backend, {}).get(dt, {})
    if klass in by_class:
        return by_class[klass]
    return tuning.get("parallel_threshold", {}).get(backend, {}).get(dt)


def _per_rule_thresholds(backend, tuning=None):
    """``{dtype: {rule: n}}``: the class value of every rule the file lists."""
    tuning = TUNING if tuning is None else tuning
    out = {}
    for dt in ("float32", "float64"):
        by_class = tuning.get("parallel_threshold_by_class", {}).get(backend, {}).get(dt, {})
        out[dt] = {name: by_class[k] for name, k in tuning.get("rule_classes", {}).items()
                   if k in by_class}
    return out


def _configure(module):
    if hasattr(module, "configure_thresholds"):
        module.configure_thresholds(TUNING.get("parallel_threshold", {}).get(module.NAME, {}),
                                    _per_rule_thresholds(module.NAME))
        for dtype, n in _threshold_override.items():
            module.set_parallel_threshold(n, dtype)
    if _num_threads is not None and hasattr(module, "set_num_threads"):
        module.set_num_threads(_num_threads)


def available_backends():
    """Names of the backends that can run here, e.g. ``["numpy", "numba"]``."""
    return [name for name in _MODULES if _load(name) is not None]


def get_backend(name):
    """The backend module called ``name`` (not ``"auto"``).

    Raises ``ValueError`` for an unknown name and ``ImportError`` (saying how
    to get it) for a known backend that cannot be loaded here.
    """
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; known backends: "
                         f"{', '.join(('auto',) + BACKEND_NAMES)}")
    module = _load(name)
    if module is None:
        hint = _HOW_TO_GET.get(name, "")
        raise ImportError(f"backend {name!r} is not available here "
                          f"({type(_errors[name]).__name__}: {_errors[name]}); {hint}")
    return module


#: With ``use_ema``, ``"auto"`` picks the numba backend for groups from this
#: many elements on, whatever the table says: its plans move the average
#: inside the step's pass, where the others add a pass of their own
#: (measured by ``python benchmarks/ema_backends.py``).
EMA_NUMBA_FROM = 32768


def resolve_backend(name, dtype, size, device=False, rule=None, ema=False):
    """The backend module to use for a group of ``size`` elements of ``dtype``;
    ``device=True``: the tensors are CUDA device arrays, which only the
    ``"cuda"`` backend takes (``"auto"`` then means ``"cuda"``).  ``rule``
    (a :class:`~fastopt.rule.Rule`): ``"auto"`` follows its class's table
    when ``tuning.json`` has one, else the dtype's.  ``ema``: the optimizer
    keeps a moving average of the parameters (see :data:`EMA_NUMBA_FROM`)."""
    if device:
        return get_backend("cuda")
    if name != "auto":
        return get_backend(name)
    if ema and size >= EMA_NUMBA_FROM and (rule is None or rule.kind == "elementwise") \
            and _load("numba") is not None:
        return _loaded["numba"]
    for max_size, candidate in auto_table(np.dtype(dtype).name,
                                          None if rule is None else rule.name):
        if (max_size is None or size <= max_size) and _load(candidate) is not None:
            return _loaded[candidate]
    return get_backend("numpy")


def auto_table(dtype, rule_name=None, tuning=None):
    """``"auto"``'s ``[[max_size, backend], ...]`` rows for ``dtype`` (a
    name): the class table of ``rule_name`` if ``tuning.json`` has one, else
    the dtype's.  ``tuning``: another parsed file (tests)."""
    tuning = TUNING if tuning is None else tuning
    klass = tuning.get("rule_classes", {}).get(rule_name)
    table = tuning.get("auto_by_class", {}).get(dtype, {}).get(klass)
    return table if table is not None else tuning["auto"][dtype]


#: Optimizer state kept in a narrower dtype than the parameters
#: (``state_dtype=...``): per dtype, the backends that keep it, in the order
#: ``"auto"`` tries them, and each one's plan class (``module:Class``).
_STATE_PLANS = {"bfloat16": {"numba": "fastopt.backends.numba_bf16:Plan"},
                "int8": {"numba": "fastopt.backends.numba_int8:Plan",
                         "cython": "fastopt.backends.cython_backend:Int8Plan",
                         "cuda": "fastopt.backends.cuda_backend:Int8Plan"}}
STATE_DTYPES = tuple(_STATE_PLANS)
#: Host groups up to this many elements take 8-bit state on the cython
#: backend under ``"auto"``, larger ones on numba: Adam and SGD with momentum
#: on Cython's AVX2 copy were 1.3x to 2.2x faster up to 1e5 elements, 8% at
#: 3e5, within 7% either way at 1e6, and Numba 2% to 16% ahead from 3e6
#: (``fastopt bench --state-dtype int8``, 2 threads; results file
#: ``benchmarks/results/int8-bench-auto-epyc-2core.json``).
INT8_CYTHON_UP_TO = 1_000_000


def state_backends(state_dtype):
    """The backends that keep optimizer state in ``state_dtype``."""
    return tuple(_STATE_PLANS[state_dtype])


def resolve_state_backend(name, state_dtype, device=False, size=None):
    """``(backend module, Plan class)`` for slots kept in ``state_dtype``.

    ``"auto"`` picks, for a group of ``size`` elements, the first backend of
    :func:`state_backends` that loads here -- except that 8-bit state takes
    the cython backend first up to :data:`INT8_CYTHON_UP_TO` elements
    (``device=True``: CUDA device arrays, the ``"cuda"`` backend); a backend
    that does not keep such state is a ``ValueError`` that names those that
    do, and one that cannot load an ``ImportError`` that says how to get it.
    """
    table = _STATE_PLANS[state_dtype]
    if name == "auto":
        if device:
            name = "cuda"
        else:
            order = [b for b in table if b != "cuda"]
            if state_dtype == "int8" and size is not None and size <= INT8_CYTHON_UP_TO:
                order.sort(key=lambda b: b != "cython")
            name = next((b for b in order if _load(b) is not None), order[0])
    if name not in table:
        hosts = [b for b in table if b != "cuda"]
        where = " or ".join(repr(b) for b in hosts)
        raise ValueError(f"state_dtype={state_dtype!r} runs on the {where} backend"
                         f"{'s' if len(hosts) > 1 else ''} only, not {name!r}; pass "
                         f"backend={hosts[0]!r} or 'auto'"
                         + (" (CUDA device arrays: 'cuda')" if "cuda" in table else ""))
    module = get_backend(name)
    path, cls = table[name].split(":")
    return module, getattr(importlib.import_module(path), cls)


def set_num_threads(n):
    """Set the number of threads the compiled backends use, process-wide.

    As ``torch.set_num_threads``: the count holds in every thread, including
    threads started before or after the call.  (Numba's own
    ``numba.set_num_threads`` is per thread; the Numba backend applies this
    count in whichever thread runs a parallel step.)
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive integer, got {n!r}")
    numba_backend = _load("numba")
    limit = numba_backend.max_threads() if numba_backend else None
    if limit is not None and n > limit:
        raise ValueError(f"set_num_threads: n={n} exceeds the {limit} threads "
                         "Numba was started with (NUMBA_NUM_THREADS)")
    _num_threads = int(n)
    for module in _loaded.values():
        if hasattr(module, "set_num_threads"):
            module.set_num_threads(_num_threads)


def num_threads_set():
    """Whether :func:`set_num_threads` has been called (adapters such as
    ``fastopt.torch`` then keep the user's choice instead of their default)."""
    return _num_threads is not None


def get_num_threads():
    """The number of threads the compiled backends use (the same in every thread)."""
    if _num_threads is not None:
        return _num_threads
    numba_backend = _load("numba")
    if numba_backend is not None:
        return numba_backend.get_num_threads()
    return 1


def set_parallel_threshold(n, dtype=None):
    """Set the group size (elements) from which kernels run multi-threaded.

    Below it a serial kernel runs: entering a parallel region costs more than
    small steps.  Results do not depend on it.  ``dtype=None`` sets both.

    The tuned thresholds in ``tuning.json`` are per class of rules (an SGD
    step goes parallel later than an Adam step); ``n`` overrides all of them
    for the dtype, on every compiled backend, for plans made before and
    after the call.  ``n=None`` removes the override: back to the tuned
    per-rule values.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer))
                          or n < 0):
        raise ValueError(f"set_parallel_threshold: n must be an integer >= 0 or None, "
                         f"got {n!r}")
    dtypes = ("float32", "float64") if dtype is None else (np.dtype(dtype).name,)
    for dt in dtypes:
        if n is None:
            _threshold_override.pop(dt, None)
        else:
            _threshold_override[dt] = int(n)
    for module in _loaded.values():
        if hasattr(module, "configure_thresholds"):
            for dt in dtypes:
                module.set_parallel_threshold(None if n is None else int(n), dt)


def get_parallel_threshold(dtype="float32", rule=None):
    """The Numba backend's parallel threshold for ``dtype``: the override if
    one is set, else ``rule``'s tuned value (``rule``: a rule or its name),
    else the dtype's default (``rule=None``: passes that are not a rule's,
    such as the sums of squares of clipping, and rules not in
    ``tuning.json``)."""
    name = getattr(rule, "name", rule)
    return get_backend("numba").get_parallel_threshold(dtype, name)
