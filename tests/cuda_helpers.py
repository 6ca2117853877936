"""Helpers of the cuda backend's tests: device arrays on the simulator or a GPU.

``tests/conftest.py`` switches Numba's CUDA simulator on unless
``NUMBA_ENABLE_CUDASIM=0`` was set, so the same tests run on a GPU machine.
"""
import os

import numpy as np
import pytest

import fastopt

HAVE_CUDA = "cuda" in fastopt.available_backends()
if not HAVE_CUDA and os.environ.get("CI"):  # CI installs numba-cuda: never skip there
    raise RuntimeError("the cuda backend is unavailable in CI: "
                       f"{fastopt.backends._errors.get('cuda')!r}")

needs_cuda = pytest.mark.skipif(
    not HAVE_CUDA, reason="the cuda backend needs numba-cuda (pip install -e '.[test]') and "
    "a GPU or NUMBA_ENABLE_CUDASIM=1 (tests/conftest.py sets it)")

if HAVE_CUDA:
    from numba import cuda

    cb = fastopt.get_backend("cuda")
    SIMULATOR = cb.SIMULATOR
else:  # pragma: no cover - only without numba-cuda
    cuda = cb = None
    SIMULATOR = True


def dev(a):
    """A device copy of the host array ``a``."""
    return cuda.to_device(np.array(a, order="C"))  # a 0-d array stays 0-d


def host(d):
    """A host copy of the device array ``d``."""
    return d.copy_to_host()


class Foreign:
    """Stands for a CuPy array or a PyTorch CUDA tensor: an object that only
    exports ``__cuda_array_interface__`` (here over a device array's memory)."""

    def __init__(self, d, strides=None, readonly=False):
        self.device = d
        if SIMULATOR:  # the simulator's arrays do not export the interface
            a = d._ary
            iface = {"shape": a.shape, "typestr": a.dtype.str, "strides": None,
                     "data": (a.__array_interface__["data"][0], False), "version": 3}
        else:
            iface = dict(d.__cuda_array_interface__)
        iface["data"] = (iface["data"][0], readonly)
        if strides is not None:
            iface["strides"] = strides
        self.__cuda_array_interface__ = iface


def step_launches(monkeypatch):
    """A list that records the kernel behind every launch from now on."""
    seen = []
    launch = cb._launch

    def counting(kernel, blocks, *args, **kwargs):
        seen.append(kernel)
        return launch(kernel, blocks, *args, **kwargs)

    monkeypatch.setattr(cb, "_launch", counting)
    return seen
