"""tuning.json: its schema, and how the backends look up a rule's parallel
threshold and ``auto`` table in it (per class of rules, the dtype's values as
the fallback, a user's ``set_parallel_threshold`` winning over both).  No
timing here: the values are measured by benchmarks/calibrate.py."""
import numpy as np
import pytest

import fastopt
from fastopt import backends
from fastopt.backends import (BACKEND_NAMES, TUNING, auto_table, rule_class,
                              tuned_threshold)
from fastopt.rule import RULES

COMPILED = [b for b in ("numba", "cython") if b in fastopt.available_backends()]
DTYPES = ("float32", "float64")


@pytest.fixture
def no_override():
    """Every test starts and ends without an override (the tuned values)."""
    for dt in DTYPES:
        fastopt.set_parallel_threshold(None, dt)
    yield
    for dt in DTYPES:
        fastopt.set_parallel_threshold(None, dt)


@pytest.fixture
def retuned():
    """Reconfigure the backends from a tuning dict; restore the file's after."""
    def apply(tuning):
        for b in COMPILED:
            module = fastopt.get_backend(b)
            module.configure_thresholds(tuning["parallel_threshold"][b],
                                        backends._per_rule_thresholds(b, tuning))
    yield apply
    for b in COMPILED:
        backends._configure(fastopt.get_backend(b))


def _plan(backend, rule_name, n=10, dtype=np.float32):
    rule = RULES[rule_name]
    w = np.zeros(n, dtype)
    return fastopt.get_backend(backend).Plan(rule, [w], [[np.zeros(n, dtype)]
                                                         for _ in rule.slots])


def _plan_threshold(backend, plan):
    """The threshold the plan runs by now."""
    if backend == "numba":
        plan._parallel()  # looks again if a threshold changed since it was made
        return plan._threshold
    override = fastopt.get_backend("cython")._ext.get_parallel_override(plan.dtype.name)
    if override >= 0:
        return override
    own = plan._core.threshold
    return own if own >= 0 else fastopt.get_backend("cython").get_parallel_threshold(
        plan.dtype, None)


# ---------------------------------------------------------------------------
# The committed file

def _check_auto_rows(rows, where):
    assert isinstance(rows, list) and rows, where
    sizes = [r[0] for r in rows]
    assert sizes[-1] is None, f"{where}: the last row has no limit"
    assert all(isinstance(n, int) and n > 0 for n in sizes[:-1]), where
    assert sizes[:-1] == sorted(sizes[:-1]), f"{where}: limits increase"
    assert all(r[1] in BACKEND_NAMES and r[1] != "cuda" for r in rows), where


def test_tuning_json_schema():
    for key in ("measured_by", "machine", "date", "parallel_threshold", "auto",
                "rule_classes", "parallel_threshold_by_class", "auto_by_class"):
        assert key in TUNING, key
    classes = set(TUNING["rule_classes"].values())
    for b in ("numba", "cython"):
        for dt in DTYPES:
            n = TUNING["parallel_threshold"][b][dt]
            assert isinstance(n, int) and n >= 0
            # a class may lack a value (its rules then run by the dtype's)
            by_class = TUNING["parallel_threshold_by_class"][b][dt]
            assert set(by_class) <= classes, (b, dt)
            assert all(isinstance(v, int) and v >= 0 for v in by_class.values())
    for dt in DTYPES:
        _check_auto_rows(TUNING["auto"][dt], f"auto[{dt}]")
        assert set(TUNING["auto_by_class"][dt]) <= classes, dt
        for cls, rows in TUNING["auto_by_class"][dt].items():
            _check_auto_rows(rows, f"auto_by_class[{dt}][{cls}]")


def test_tuning_json_covers_every_compiled_rule_with_its_class():
    """calibrate.py --write lists every rule of RULES with the class
    rule_class gives it now (a rule added or changed since: run it again)."""
    assert TUNING["rule_classes"] == {name: rule_class(r) for name, r in RULES.items()}


def test_rule_class_counts_bytes_and_arithmetic():
    assert rule_class(RULES["sgd"]) == "12B-light"
    assert rule_class(RULES["sgd_momentum"]) == "20B-light"
    assert rule_class(RULES["rmsprop"]) == "20B-heavy"       # a sqrt and a division
    assert rule_class(RULES["adam"]) == "28B-heavy"
    assert rule_class(RULES["adamax"]) == "28B-heavy"        # min/max are selects
    assert rule_class(RULES["rprop_torch"]) == "28B-branch"  # tests on the elements
    assert rule_class(RULES["lion"]) == "20B-branch"         # sign()
    assert rule_class(RULES["asgd_torch"]) == "20B-light"    # a test on a scalar only
    assert rule_class(RULES["ftrl"]) == "28B-pow"
    assert rule_class(RULES["ftrl_sqrt"]) == "28B-heavy"
    assert rule_class(RULES["adam_amsgrad"]) == "36B-heavy"
    assert rule_class(RULES["lamb"]) == "44B-heavy"          # its first pass reads again


# ---------------------------------------------------------------------------
# The lookup, on a tuning dict made up for the test

FAKE = {
    "parallel_threshold": {b: {"float32": 1000, "float64": 2000} for b in ("numba", "cython")},
    "rule_classes": {"adam": "28B-heavy", "sgd": "12B-light", "rmsprop": "20B-heavy"},
    "parallel_threshold_by_class": {
        b: {"float32": {"28B-heavy": 111, "12B-light": 333},
            "float64": {"28B-heavy": 222}} for b in ("numba", "cython")},
    "auto": {"float32": [[5, "cython"], [None, "numba"]],
             "float64": [[None, "numba"]]},
    "auto_by_class": {"float32": {"28B-heavy": [[50, "cython"], [None, "numba"]]}},
}


def test_tuned_threshold_per_class_with_the_dtype_as_fallback():
    assert tuned_threshold("numba", "adam", "float32", FAKE) == 111
    assert tuned_threshold("numba", "sgd", np.float32, FAKE) == 333
    assert tuned_threshold("cython", "adam", "float64", FAKE) == 222
    # a class without a value for this dtype, a rule not in the file
    assert tuned_threshold("numba", "sgd", "float64", FAKE) == 2000
    assert tuned_threshold("numba", "rmsprop", "float32", FAKE) == 1000
    assert tuned_threshold("numba", "lion", "float32", FAKE) == 1000
    assert tuned_threshold("cuda", "adam", "float32", FAKE) is None


def test_auto_table_per_class_with_the_dtype_as_fallback():
    assert auto_table("float32", "adam", FAKE) == [[50, "cython"], [None, "numba"]]
    assert auto_table("float32", "sgd", FAKE) == FAKE["auto"]["float32"]
    assert auto_table("float32", "lion", FAKE) == FAKE["auto"]["float32"]
    assert auto_table("float32", None, FAKE) == FAKE["auto"]["float32"]
    assert auto_table("float64", "adam", FAKE) == FAKE["auto"]["float64"]


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_plan_runs_by_its_rules_class_threshold(backend, dtype, retuned, no_override):
    retuned(FAKE)
    dt = np.dtype(dtype).name
    for name in ("adam", "sgd", "rmsprop", "lion"):
        plan = _plan(backend, name, dtype=dtype)
        assert _plan_threshold(backend, plan) == tuned_threshold(backend, name, dt, FAKE)
        assert fastopt.get_backend(backend).get_parallel_threshold(dt, name) == \
            tuned_threshold(backend, name, dt, FAKE)
    # passes that are not a rule's (and the public getter without a rule): the dtype's
    assert fastopt.get_backend(backend).get_parallel_threshold(dt) == \
        FAKE["parallel_threshold"][backend][dt]


@pytest.mark.parametrize("backend", COMPILED)
def test_the_committed_file_is_what_plans_run_by(backend, no_override):
    for name in RULES:
        plan = _plan(backend, name)
        assert _plan_threshold(backend, plan) == tuned_threshold(backend, name, "float32")


@pytest.mark.parametrize("backend", COMPILED)
def test_a_users_threshold_wins_and_none_restores_the_tuned_values(backend, retuned,
                                                                   no_override):
    retuned(FAKE)
    before = _plan(backend, "adam")          # made before the override
    fastopt.set_parallel_threshold(7, "float32")
    after = _plan(backend, "adam")
    for plan in (before, after):
        assert _plan_threshold(backend, plan) == 7
    assert fastopt.get_backend(backend).get_parallel_threshold("float32", "sgd") == 7
    assert fastopt.get_backend(backend).get_parallel_threshold("float64", "adam") == 222
    assert fastopt.get_parallel_threshold("float32", RULES["adam"]) == 7
    fastopt.set_parallel_threshold(None, "float32")
    for plan in (before, after):
        assert _plan_threshold(backend, plan) == 111


def test_the_override_holds_for_backends_loaded_later(no_override):
    """An override set before a backend loads is applied when it loads."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import fastopt
        fastopt.set_parallel_threshold(9, "float64")
        nb = fastopt.get_backend("numba")
        assert nb.get_parallel_threshold("float64", "adam") == 9
        assert nb.get_parallel_threshold("float32", "adam") != 9
        fastopt.set_parallel_threshold(None)
        assert nb.get_parallel_threshold("float64", "adam") == \\
            fastopt.backends.tuned_threshold("numba", "adam", "float64")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_numba_plan_follows_the_threshold_without_a_lookup_per_step(retuned, no_override):
    """The numba plan looks its threshold up when made and again only after a
    change (the generation counter), and the driver it picks follows it."""
    if "numba" not in COMPILED:
        pytest.skip("numba backend not available")
    nb = fastopt.get_backend("numba")
    retuned(FAKE)
    plan = _plan("numba", "adam", n=200)
    assert plan._generation == nb._generation and plan._threshold == 111
    assert plan._parallel()              # 200 >= 111
    fastopt.set_parallel_threshold(500, "float32")
    assert not plan._parallel()          # 200 < 500
    assert plan._generation == nb._generation


def test_resolve_backend_follows_the_rules_class_table(no_override, monkeypatch):
    monkeypatch.setattr(backends, "TUNING", FAKE)
    if "cython" not in COMPILED or "numba" not in COMPILED:
        pytest.skip("needs numba and cython")
    adam, sgd = RULES["adam"], RULES["sgd"]
    assert backends.resolve_backend("auto", np.float32, 40, rule=adam).NAME == "cython"
    assert backends.resolve_backend("auto", np.float32, 40, rule=sgd).NAME == "numba"
    assert backends.resolve_backend("auto", np.float32, 40).NAME == "numba"
    assert backends.resolve_backend("auto", np.float32, 4, rule=sgd).NAME == "cython"
    w = np.zeros(40, np.float32)
    assert fastopt.Adam([w]).backends == {"float32": "cython"}
    assert fastopt.SGD([w]).backends == {"float32": "numba"}
