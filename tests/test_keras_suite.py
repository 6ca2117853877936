"""Keras's own optimizer tests, run against fastopt.keras.

Keras ships ``keras/src/optimizers/<name>_test.py`` in its wheel.  Each is
loaded here as a fresh module (so Keras's originals are not collected) with
its optimizer class replaced by fastopt's, and its ``unittest`` test case
exposed for pytest to collect.  The same files also run against Keras's own
classes (``keras-*`` below), so a test that fails for fastopt and passes for
Keras is a fastopt bug, never an environment problem.
"""
import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
pytest.importorskip("torch")
pytest.importorskip("absl")  # keras.src.testing's base class needs it
if keras.backend.backend() != "torch":  # pragma: no cover - conftest sets torch
    pytest.skip("fastopt.keras needs KERAS_BACKEND=torch", allow_module_level=True)

import fastopt.keras as fk  # noqa: E402

#: Keras's test file, the class it tests and its unittest case
SUITES = {"sgd": ("SGD", "SGDTest"), "adagrad": ("Adagrad", "AdagradTest"),
          "rmsprop": ("RMSprop", "RMSpropTest"), "adam": ("Adam", "AdamTest"),
          "adamw": ("AdamW", "AdamWTest"), "adamax": ("Adamax", "AdamaxTest"),
          "ftrl": ("Ftrl", "FtrlTest"), "lion": ("Lion", "LionTest"),
          "adadelta": ("Adadelta", "AdadeltaTest"), "nadam": ("Nadam", "NadamTest"),
          "adafactor": ("Adafactor", "AdafactorTest"),
          "muon": ("Muon", "MuonTest"),
          "lamb": ("Lamb", "LambTest")}
# Not run: schedule_free_adamw_test.py.  fastopt.keras.ScheduleFreeAdamW is
# the published method, not Keras's formulas, and is held to the schedulefree
# package in test_keras_schedulefree.py.  Keras's file checks behaviour only,
# and all of it passes but test_weight_decay, which excludes a variable from a
# nonzero weight_decay: the published method's decay is part of the update of
# every variable of a group, and fastopt.keras runs one group, so
# fastopt.keras.ScheduleFreeAdamW refuses that with a clear error
# (test_exclusion_with_weight_decay_refused_and_nothing_changes).

_FOLDER = Path(keras.__file__).parent / "src" / "optimizers"


def _suite(module, cls_name, case, replacement, tag):
    path = _FOLDER / f"{module}_test.py"
    spec = importlib.util.spec_from_file_location(f"_keras_{tag}_{module}_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if replacement is not None:
        assert getattr(mod, cls_name) is getattr(keras.optimizers, cls_name)
        setattr(mod, cls_name, replacement)
    return getattr(mod, case)


for _module, (_cls, _case) in SUITES.items():
    # fastopt's classes under Keras's tests, and Keras's own as the control
    globals()[f"TestFastopt{_cls}Keras"] = _suite(_module, _cls, _case, getattr(fk, _cls),
                                                  "fastopt")
    globals()[f"TestKeras{_cls}Control"] = _suite(_module, _cls, _case, None, "keras")
del _module, _cls, _case


def test_every_suite_tests_a_fastopt_class():
    """The replacement took: each loaded suite's tests see fastopt's class,
    and the control suites Keras's."""
    for cls_name, _ in SUITES.values():
        ours = globals()[f"TestFastopt{cls_name}Keras"].test_config.__globals__
        control = globals()[f"TestKeras{cls_name}Control"].test_config.__globals__
        assert ours[cls_name] is getattr(fk, cls_name)
        assert control[cls_name] is getattr(keras.optimizers, cls_name)
