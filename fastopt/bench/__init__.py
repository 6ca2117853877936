"""``fastopt bench``: optimizer steps measured against the memory ceiling,
naive NumPy and ``torch.optim``, with a numerics check in the same run.

>>> from fastopt import bench
>>> result = bench.run(bench.Config(optimizers=["adam"], sizes=[10_000], repeats=5))
>>> print(bench.format_report(result))

Modules: :mod:`~fastopt.bench.ceiling` (the rmw and copy kernels, bytes per
parameter, machine description, interleaved timing),
:mod:`~fastopt.bench.naive` (the textbook NumPy steps),
:mod:`~fastopt.bench.cases` (the optimizers and their torch twins, tensor
shapes, inputs), :mod:`~fastopt.bench.numerics` (one step against the
float64 reference) and :mod:`~fastopt.bench.runner` (the grid and the report).
"""
from .cases import CASES, split_shapes
from .ceiling import bytes_per_param, machine_info
from .numerics import TOLERANCE, step_error
from .runner import DEFAULT_SIZES, Config, ConfigError, check, format_report, run

__all__ = ["run", "format_report", "check", "Config", "ConfigError", "CASES", "DEFAULT_SIZES",
           "TOLERANCE", "bytes_per_param", "machine_info", "split_shapes", "step_error"]
