"""Tests of fastopt.schedules against values worked out by hand."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastopt import schedules
from fastopt.schedules import (
    CosineDecay,
    CosineDecayRestarts,
    ExponentialDecay,
    InverseTimeDecay,
    PiecewiseConstantDecay,
    PolynomialDecay,
)


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-300)


def check(schedule, expected):
    """Assert ``schedule(step) == value`` for every ``step: value`` pair."""
    for step, value in expected.items():
        got = schedule(step)
        assert type(got) is float
        assert got == approx(value), (schedule, step)


# ---------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------


def test_exponential_decay():
    check(ExponentialDecay(0.1, 10, 0.5), {
        0: 0.1,
        1: 0.1 * 0.5 ** 0.1,
        5: 0.1 * math.sqrt(0.5),
        10: 0.05,
        15: 0.1 * 0.5 * math.sqrt(0.5),
        20: 0.025,
        1000: 0.1 * 2.0 ** -100,
    })
    assert ExponentialDecay(0.1, 10, 0.5)(20) == 0.025


def test_exponential_decay_staircase():
    check(ExponentialDecay(0.1, 10, 0.5, staircase=True), {
        0: 0.1, 1: 0.1, 9: 0.1, 9.99: 0.1, 10: 0.05, 15: 0.05, 19: 0.05,
        20: 0.025, 1000: 0.1 * 2.0 ** -100,
    })


def test_exponential_decay_rate_above_one_grows():
    check(ExponentialDecay(1.0, 4, 2.0), {0: 1.0, 2: math.sqrt(2), 8: 4.0})


def test_piecewise_constant_decay():
    check(PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1]), {
        0: 1.0, 9: 1.0, 10: 1.0, 10.5: 0.5, 11: 0.5, 20: 0.5, 21: 0.1,
        10**9: 0.1,
    })


def test_piecewise_constant_decay_float_boundaries_and_no_boundaries():
    check(PiecewiseConstantDecay([2.5], [0.3, 0.2]), {2: 0.3, 2.5: 0.3, 3: 0.2})
    check(PiecewiseConstantDecay([], [0.7]), {0: 0.7, 10**6: 0.7})


def test_polynomial_decay():
    # (1.0 - 0.1) * (1 - p) ** 2 + 0.1
    check(PolynomialDecay(1.0, 10, end_learning_rate=0.1, power=2.0), {
        0: 1.0,
        1: 0.9 * 0.81 + 0.1,
        5: 0.9 * 0.25 + 0.1,
        10: 0.1,
        11: 0.1,
        10**6: 0.1,
    })


def test_polynomial_decay_defaults_are_linear_to_1e_4():
    check(PolynomialDecay(0.1, 100), {
        0: 0.1, 50: (0.1 - 0.0001) * 0.5 + 0.0001, 100: 0.0001, 300: 0.0001,
    })


def test_polynomial_decay_increasing_when_end_above_initial():
    check(PolynomialDecay(0.0, 10, end_learning_rate=1.0), {0: 0.0, 5: 0.5, 20: 1.0})


def test_polynomial_decay_cycle():
    s = PolynomialDecay(1.0, 10, end_learning_rate=0.1, power=2.0, cycle=True)
    check(s, {
        0: 1.0,
        5: 0.9 * 0.25 + 0.1,
        10: 0.1,                              # D = 10, p = 1
        15: 0.9 * 0.25 ** 2 + 0.1,            # D = 20, p = 0.75
        20: 0.1,                              # D = 20, p = 1
        25: 0.9 * (1 / 6) ** 2 + 0.1,         # D = 30, p = 25 / 30
        1001: 0.9 * (1 - 1001 / 1010) ** 2 + 0.1,
    })
    # cycle=False would have stayed at the end rate.
    assert PolynomialDecay(1.0, 10, 0.1, 2.0)(15) == approx(0.1)


def test_inverse_time_decay():
    check(InverseTimeDecay(1.0, 10, 0.5), {
        0: 1.0, 1: 1 / 1.05, 10: 1 / 1.5, 15: 1 / 1.75, 20: 0.5, 1000: 1 / 51,
    })


def test_inverse_time_decay_staircase():
    check(InverseTimeDecay(1.0, 10, 0.5, staircase=True), {
        0: 1.0, 9: 1.0, 10: 1 / 1.5, 15: 1 / 1.5, 20: 0.5, 1005: 1 / 51,
    })


def test_cosine_decay():
    a = 0.2
    check(CosineDecay(1.0, 100, alpha=a), {
        0: 1.0,
        25: (1 - a) * 0.5 * (1 + math.cos(math.pi / 4)) + a,
        50: (1 + a) / 2,
        100: a,
        101: a,
        10**7: a,
    })
    assert CosineDecay(0.3, 40)(20) == approx(0.15)
    assert CosineDecay(0.3, 40)(40) == approx(0.0)


def test_cosine_decay_warmup():
    s = CosineDecay(0.1, 100, warmup_target=1.0, warmup_steps=10)
    check(s, {
        0: 0.1,
        5: 0.55,      # warmup midpoint
        10: 1.0,      # end of warmup
        60: 0.5,      # half of the decay
        110: 0.0,
        10**6: 0.0,
    })
    check(CosineDecay(0.0, 100, alpha=0.5, warmup_target=2.0, warmup_steps=20),
          {10: 1.0, 70: 1.5, 120: 1.0, 500: 1.0})


def test_cosine_decay_zero_warmup_steps_starts_at_target():
    check(CosineDecay(0.1, 10, warmup_target=1.0, warmup_steps=0),
          {0: 1.0, 5: 0.5, 10: 0.0})


def test_cosine_decay_restarts_t_mul_2():
    m = 0.5
    s = CosineDecayRestarts(1.0, 10, t_mul=2.0, m_mul=m)
    check(s, {
        0: 1.0,
        5: 0.5,
        10: m,          # start of the 2nd period (length 20)
        20: m * 0.5,    # middle of the 2nd period
        30: m ** 2,     # start of the 3rd period (length 40)
        70: m ** 3,
        150: m ** 4,
        45: m ** 2 * 0.5 * (1 + math.cos(math.pi * 15 / 40)),
    })


def test_cosine_decay_restarts_alpha_floor():
    a, m = 0.1, 0.5
    check(CosineDecayRestarts(2.0, 10, m_mul=m, alpha=a), {
        0: 2.0,
        5: 2.0 * ((1 - a) * 0.5 + a),
        10: 2.0 * ((1 - a) * m + a),
        30: 2.0 * ((1 - a) * m ** 2 + a),
    })


@pytest.mark.parametrize("t_mul, starts", [
    (3.0, [10, 40, 130, 400]),
    (10.0, [10, 110, 1110, 11110]),  # log(1000) / log(10) rounds below 3
    (1.5, [10, 25, 47.5]),
])
def test_cosine_decay_restarts_start_at_m_mul_power(t_mul, starts):
    m = 0.9
    s = CosineDecayRestarts(1.0, 10, t_mul=t_mul, m_mul=m)
    for i, start in enumerate(starts, start=1):
        assert s(start) == approx(m ** i), (t_mul, start)


def test_cosine_decay_restarts_t_mul_1_is_periodic():
    s = CosineDecayRestarts(1.0, 10, t_mul=1.0, m_mul=1.0, alpha=0.3)
    for step in [0, 1, 2.5, 5, 9]:
        expected = 0.7 * 0.5 * (1 + math.cos(math.pi * step / 10)) + 0.3
        for k in [0, 1, 2, 7, 1000]:
            assert s(step + 10 * k) == approx(expected)
    s = CosineDecayRestarts(1.0, 10, t_mul=1.0, m_mul=0.5)
    check(s, {10: 0.5, 25: 0.125, 30: 0.125, 100: 0.5 ** 10})


def test_cosine_decay_restarts_t_mul_below_1():
    # Periods 10, 5, 2.5, ... accumulate at step 20.
    s = CosineDecayRestarts(1.0, 10, t_mul=0.5, m_mul=0.5, alpha=0.2)
    check(s, {
        10: 0.8 * 0.5 + 0.2,
        15: 0.8 * 0.25 + 0.2,
        12.5: 0.8 * 0.5 * 0.5 + 0.2,
        20: 0.2,
        21: 0.2,
        10**6: 0.2,
    })


# ---------------------------------------------------------------------------
# Step argument
# ---------------------------------------------------------------------------


ALL = [
    ExponentialDecay(0.1, 10, 0.5),
    ExponentialDecay(0.1, 7.5, 0.9, staircase=True),
    PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1]),
    PolynomialDecay(0.1, 100),
    PolynomialDecay(0.5, 30, end_learning_rate=0.01, power=0.5, cycle=True),
    InverseTimeDecay(1.0, 10, 0.5),
    InverseTimeDecay(1.0, 10, 0.5, staircase=True),
    CosineDecay(1.0, 100, alpha=0.1),
    CosineDecay(0.0, 100, warmup_target=0.2, warmup_steps=20),
    CosineDecayRestarts(1.0, 10),
    CosineDecayRestarts(1.0, 10, t_mul=1.0, m_mul=0.8, alpha=0.05),
]
IDS = [repr(s) for s in ALL]
STEPS = [0, 1, 2, 5, 7.5, 10, 11, 19, 20, 21, 29, 30, 50, 99, 100, 101, 1234,
         10**6, 10**9]


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_step_accepts_numpy_scalars(schedule):
    for step in [0, 7, 30, 123]:
        expected = schedule(step)
        for value in [float(step), np.int64(step), np.int32(step),
                      np.float32(step), np.float64(step), np.array(step)]:
            got = schedule(value)
            assert type(got) is float
            assert got == expected


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
@pytest.mark.parametrize("step", [-1, -0.5, np.int64(-3), math.inf, math.nan,
                                  -math.inf, 10**400])
def test_bad_step_raises_value_error(schedule, step):
    with pytest.raises(ValueError, match="step"):
        schedule(step)


@pytest.mark.parametrize("step", [True, "3", None, [1]])
def test_non_number_step_raises_type_error(step):
    with pytest.raises(TypeError, match="step"):
        ExponentialDecay(0.1, 10, 0.5)(step)


# ---------------------------------------------------------------------------
# Config and serialization
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_config_round_trip(schedule):
    config = schedule.get_config()
    text = json.dumps(config)
    rebuilt = type(schedule).from_config(json.loads(text))
    assert rebuilt.get_config() == config
    assert [rebuilt(s) for s in STEPS] == [schedule(s) for s in STEPS]


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_serialize_round_trip(schedule):
    data = schedules.serialize(schedule)
    assert data["class_name"] == type(schedule).__name__
    rebuilt = schedules.deserialize(json.loads(json.dumps(data)))
    assert type(rebuilt) is type(schedule)
    assert schedules.serialize(rebuilt) == data
    assert [rebuilt(s) for s in STEPS] == [schedule(s) for s in STEPS]


def test_config_holds_plain_python_values():
    s = CosineDecayRestarts(np.float32(0.5), np.int64(10), t_mul=np.float64(2),
                            m_mul=1, alpha=np.float32(0.25))
    config = s.get_config()
    assert config == {"initial_learning_rate": 0.5, "first_decay_steps": 10,
                      "t_mul": 2.0, "m_mul": 1.0, "alpha": 0.25}
    assert [type(v) for v in config.values()] == [float, int, float, float, float]
    p = PiecewiseConstantDecay(np.array([5, 10]), (1, 0.5, np.float32(0.25)))
    assert p.get_config() == {"boundaries": [5, 10], "values": [1.0, 0.5, 0.25]}
    assert type(p.get_config()["boundaries"][0]) is int
    c = CosineDecay(1, 10.0, warmup_target=2, warmup_steps=5.0)
    assert c.get_config() == {"initial_learning_rate": 1.0, "decay_steps": 10.0,
                              "alpha": 0.0, "warmup_target": 2.0, "warmup_steps": 5}
    assert type(c.get_config()["warmup_steps"]) is int


def test_repr_shows_config():
    assert repr(ExponentialDecay(0.1, 10, 0.5)) == (
        "ExponentialDecay(initial_learning_rate=0.1, decay_steps=10, "
        "decay_rate=0.5, staircase=False)")
    assert "warmup_target=None" in repr(CosineDecay(1.0, 10))


def test_deserialize_unknown_class_lists_known_ones():
    with pytest.raises(ValueError, match="NoSuchDecay") as info:
        schedules.deserialize({"class_name": "NoSuchDecay", "config": {}})
    for name in ["CosineDecay", "ExponentialDecay", "PiecewiseConstantDecay"]:
        assert name in str(info.value)


@pytest.mark.parametrize("bad", [{"config": {}}, {"class_name": "CosineDecay"},
                                 "CosineDecay", None])
def test_deserialize_malformed(bad):
    with pytest.raises(ValueError):
        schedules.deserialize(bad)


def test_serialize_rejects_non_schedule():
    with pytest.raises(TypeError):
        schedules.serialize(0.1)


def test_all_names_exist():
    for name in schedules.__all__:
        assert hasattr(schedules, name)
    assert issubclass(CosineDecayRestarts, schedules.LearningRateSchedule)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

VALUE_ERRORS = [
    (lambda: ExponentialDecay(-0.1, 10, 0.5), "initial_learning_rate"),
    (lambda: ExponentialDecay(math.inf, 10, 0.5), "initial_learning_rate"),
    (lambda: ExponentialDecay(math.nan, 10, 0.5), "initial_learning_rate"),
    (lambda: ExponentialDecay(0.1, 0, 0.5), "decay_steps"),
    (lambda: ExponentialDecay(0.1, -5, 0.5), "decay_steps"),
    (lambda: ExponentialDecay(0.1, math.inf, 0.5), "decay_steps"),
    (lambda: ExponentialDecay(0.1, 10, -0.5), "decay_rate"),
    (lambda: ExponentialDecay(0.1, 10, math.inf), "decay_rate"),
    (lambda: PiecewiseConstantDecay([10, 10], [1.0, 0.5, 0.1]), "boundaries"),
    (lambda: PiecewiseConstantDecay([20, 10], [1.0, 0.5, 0.1]), "boundaries"),
    (lambda: PiecewiseConstantDecay([10, math.nan], [1.0, 0.5, 0.1]), "boundaries"),
    (lambda: PiecewiseConstantDecay([10, 20], [1.0, 0.5]), "values"),
    (lambda: PiecewiseConstantDecay([10], [1.0, 0.5, 0.1]), "values"),
    (lambda: PiecewiseConstantDecay([10], [1.0, -0.5]), "values"),
    (lambda: PiecewiseConstantDecay([10], [1.0, math.inf]), "values"),
    (lambda: PolynomialDecay(-1.0, 10), "initial_learning_rate"),
    (lambda: PolynomialDecay(1.0, 0), "decay_steps"),
    (lambda: PolynomialDecay(1.0, 10, end_learning_rate=-0.1), "end_learning_rate"),
    (lambda: PolynomialDecay(1.0, 10, power=-1.0), "power"),
    (lambda: PolynomialDecay(1.0, 10, power=math.nan), "power"),
    (lambda: InverseTimeDecay(-1.0, 10, 0.5), "initial_learning_rate"),
    (lambda: InverseTimeDecay(1.0, -10, 0.5), "decay_steps"),
    (lambda: InverseTimeDecay(1.0, 10, -0.5), "decay_rate"),
    (lambda: CosineDecay(-1.0, 10), "initial_learning_rate"),
    (lambda: CosineDecay(1.0, 0), "decay_steps"),
    (lambda: CosineDecay(1.0, 10, alpha=-0.1), "alpha"),
    (lambda: CosineDecay(1.0, 10, alpha=1.5), "alpha"),
    (lambda: CosineDecay(1.0, 10, warmup_target=-1.0, warmup_steps=5), "warmup_target"),
    (lambda: CosineDecay(1.0, 10, warmup_target=math.inf), "warmup_target"),
    (lambda: CosineDecay(1.0, 10, warmup_steps=-1), "warmup_steps"),
    (lambda: CosineDecay(1.0, 10, warmup_steps=2.5), "warmup_steps"),
    (lambda: CosineDecay(1.0, 10, warmup_steps=math.inf), "warmup_steps"),
    (lambda: CosineDecayRestarts(-1.0, 10), "initial_learning_rate"),
    (lambda: CosineDecayRestarts(1.0, 0), "first_decay_steps"),
    (lambda: CosineDecayRestarts(1.0, 10, t_mul=0.0), "t_mul"),
    (lambda: CosineDecayRestarts(1.0, 10, t_mul=-2.0), "t_mul"),
    (lambda: CosineDecayRestarts(1.0, 10, t_mul=math.inf), "t_mul"),
    (lambda: CosineDecayRestarts(1.0, 10, m_mul=-0.5), "m_mul"),
    (lambda: CosineDecayRestarts(1.0, 10, alpha=2.0), "alpha"),
]

TYPE_ERRORS = [
    (lambda: ExponentialDecay("0.1", 10, 0.5), "initial_learning_rate"),
    (lambda: ExponentialDecay(True, 10, 0.5), "initial_learning_rate"),
    (lambda: ExponentialDecay(0.1, None, 0.5), "decay_steps"),
    (lambda: ExponentialDecay(0.1, True, 0.5), "decay_steps"),
    (lambda: ExponentialDecay(0.1, 10, [0.5]), "decay_rate"),
    (lambda: ExponentialDecay(0.1, 10, 0.5, staircase=1), "staircase"),
    (lambda: PiecewiseConstantDecay(10, [1.0, 0.5]), "boundaries"),
    (lambda: PiecewiseConstantDecay("ab", [1.0, 0.5, 0.1]), "boundaries"),
    (lambda: PiecewiseConstantDecay([10, "20"], [1.0, 0.5, 0.1]), "boundaries"),
    (lambda: PiecewiseConstantDecay([10], 1.0), "values"),
    (lambda: PiecewiseConstantDecay([10], [1.0, False]), "values"),
    (lambda: PolynomialDecay(1.0, 10, end_learning_rate=None), "end_learning_rate"),
    (lambda: PolynomialDecay(1.0, 10, power="2"), "power"),
    (lambda: PolynomialDecay(1.0, 10, cycle="yes"), "cycle"),
    (lambda: InverseTimeDecay(1.0, 10, False), "decay_rate"),
    (lambda: InverseTimeDecay(1.0, 10, 0.5, staircase=None), "staircase"),
    (lambda: CosineDecay(1.0, 10, alpha=None), "alpha"),
    (lambda: CosineDecay(1.0, 10, warmup_target="1"), "warmup_target"),
    (lambda: CosineDecay(1.0, 10, warmup_steps=True), "warmup_steps"),
    (lambda: CosineDecayRestarts(1.0, "10"), "first_decay_steps"),
    (lambda: CosineDecayRestarts(1.0, 10, t_mul=None), "t_mul"),
    (lambda: CosineDecayRestarts(1.0, 10, m_mul=True), "m_mul"),
    (lambda: CosineDecayRestarts(1.0, 10, alpha=1j), "alpha"),
]


@pytest.mark.parametrize("make, name", VALUE_ERRORS)
def test_value_errors_name_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


@pytest.mark.parametrize("make, name", TYPE_ERRORS)
def test_type_errors_name_the_argument(make, name):
    with pytest.raises(TypeError, match=name):
        make()


def test_value_error_shows_the_value():
    with pytest.raises(ValueError, match=r"decay_steps.*-5"):
        InverseTimeDecay(1.0, -5, 0.5)


def test_edge_values_are_accepted():
    assert ExponentialDecay(0.0, 1e-3, 0.0)(0) == 0.0
    assert ExponentialDecay(1.0, 10, 0.0)(1) == 0.0
    assert PolynomialDecay(1.0, 10, power=0.0)(10) == 1.0  # 0 ** 0 == 1
    assert CosineDecay(1.0, 10, alpha=1.0)(5) == 1.0
    assert CosineDecayRestarts(1.0, 10, m_mul=0.0)(15) == 0.0
    assert CosineDecay(1.0, 10, warmup_steps=3.0).warmup_steps == 3


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

rates = st.floats(0.0, 10.0)
positive = st.one_of(st.integers(1, 10**4), st.floats(1e-3, 1e4))
fractions = st.floats(0.0, 1.0)
steps = st.one_of(st.integers(0, 10**9), st.floats(0.0, 1e9))


@st.composite
def configs(draw):
    """Draw ``(schedule, monotone)``: a valid schedule, and whether it can only decay."""
    kind = draw(st.sampled_from([
        "ExponentialDecay", "InverseTimeDecay", "PiecewiseConstantDecay",
        "PolynomialDecay", "CosineDecay", "CosineDecayRestarts"]))
    if kind in ("ExponentialDecay", "InverseTimeDecay"):
        rate_max = 1.0 if kind == "ExponentialDecay" else 100.0
        cls = getattr(schedules, kind)
        return cls(draw(rates), draw(positive), draw(st.floats(0.0, rate_max)),
                   staircase=draw(st.booleans())), True
    if kind == "PiecewiseConstantDecay":
        bounds = sorted(set(draw(st.lists(st.integers(0, 10**6), max_size=5))))
        values = draw(st.lists(rates, min_size=len(bounds) + 1,
                               max_size=len(bounds) + 1))
        return PiecewiseConstantDecay(bounds, values), False
    if kind == "PolynomialDecay":
        initial, end = draw(rates), draw(rates)
        cycle = draw(st.booleans())
        s = PolynomialDecay(initial, draw(positive), end_learning_rate=end,
                            power=draw(st.floats(0.0, 5.0)), cycle=cycle)
        return s, not cycle and end <= initial
    if kind == "CosineDecay":
        warmup = draw(st.booleans())
        s = CosineDecay(draw(rates), draw(positive), alpha=draw(fractions),
                        warmup_target=draw(rates) if warmup else None,
                        warmup_steps=draw(st.integers(0, 10**4)))
        return s, not warmup
    return CosineDecayRestarts(
        draw(rates), draw(positive), t_mul=draw(st.floats(0.05, 4.0)),
        m_mul=draw(fractions), alpha=draw(fractions)), False


@settings(deadline=None, derandomize=True, max_examples=50)
@given(configs(), steps, steps)
def test_values_finite_non_negative_and_decaying(config, step_a, step_b):
    schedule, monotone = config
    lo, hi = sorted([step_a, step_b])
    v_lo, v_hi = schedule(lo), schedule(hi)
    for v in (v_lo, v_hi):
        assert math.isfinite(v) and v >= 0.0
    if monotone:
        assert v_hi <= v_lo


@settings(deadline=None, derandomize=True, max_examples=50)
@given(configs(), st.lists(steps, min_size=1, max_size=5))
def test_round_trip_property(config, step_list):
    schedule, _ = config
    rebuilt = schedules.deserialize(json.loads(json.dumps(schedules.serialize(schedule))))
    assert [rebuilt(s) for s in step_list] == [schedule(s) for s in step_list]
