"""Transitional test of the "one place per optimizer" redesign: the kernels
generated from the family modules give bit-identical parameters and state to
the hand-written kernels they replace, for all 19 rules of before, float32
and float64, the numba and cython backends (public kernels, serial and
parallel plans), bfloat16 state (both roundings), 2-byte parameters and the
CUDA simulator.

The old kernels come from an installation of the commit before the redesign
(45fa33f): set FASTOPT_OLD_PYTHON to its interpreter.  Dropped with the old
code once the redesign has landed.  Inputs hold zeros, huge and tiny values
but no NaN: AMSGrad's max() now lets a NaN win (np.maximum), on purpose.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

OLD = os.environ.get("FASTOPT_OLD_PYTHON")
WORKER = Path(__file__).with_name("_old_new_worker.py")

pytestmark = pytest.mark.skipif(not OLD, reason="set FASTOPT_OLD_PYTHON to an install "
                                                "of the commit before the redesign")


@pytest.mark.parametrize("mode", ["cpu", "cuda"])
def test_generated_kernels_match_the_hand_written_ones_bit_for_bit(tmp_path, mode):
    extra = ["cuda"] if mode == "cuda" else []
    for python, name in ((OLD, "old"), (sys.executable, "new")):
        subprocess.run([python, str(WORKER), str(tmp_path / f"{name}.npz"), *extra],
                       check=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""}
                       if name == "old" else os.environ)
    old, new = np.load(tmp_path / "old.npz"), np.load(tmp_path / "new.npz")
    assert sorted(old.files) == sorted(new.files)
    assert len(old.files) > 100
    differ = [k for k in old.files if old[k].tobytes() != new[k].tobytes()]
    # the one deliberate change: AMSGrad's max lets a NaN win (v turns NaN after
    # inf - inf); every element that differs must be such a NaN, nothing else
    unexplained = []
    for k in differ:
        a, b = _values(k, old[k]), _values(k, new[k])
        changed = (a.view(np.uint8).reshape(a.size, -1)
                   != b.view(np.uint8).reshape(b.size, -1)).any(axis=1)
        if "amsgrad" not in k or not np.isnan(b[changed]).all():
            unexplained.append(k)
    assert not unexplained, f"{len(unexplained)} of {len(old.files)} arrays differ: " \
                            f"{unexplained[:10]}"


def _values(key, a):
    """The values an array holds (bfloat16 and float16 are stored as uint16)."""
    if a.dtype == np.uint16:
        return a.view(np.float16) if key.startswith("float16") \
            else (a.astype(np.uint32) << 16).view(np.float32)
    return a
