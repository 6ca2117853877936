"""pytest-benchmark's saved JSON names the machine: CPU model, cores, threads,
Python, NumPy, Numba (and its threading layer), fastopt and torch versions."""
from fastopt.bench.runner import describe_machine

try:
    import torch
except ImportError:
    torch = None


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fastopt"] = describe_machine(torch)
