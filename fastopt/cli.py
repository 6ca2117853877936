"""The ``fastopt`` command."""
from __future__ import annotations

import argparse
import platform
import sys


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
              f"{nb.get_parallel_threshold('float32')} (float32) / "
              f"{nb.get_parallel_threshold('float64')} (float64) elements")
        if layer == "workqueue":
            print("         warning: the workqueue layer costs ~100 us per parallel region; "
                  "install an OpenMP runtime (libgomp) or tbb for the omp/tbb layer")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastopt", description="Fused optimizer kernels.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, backends, threading")
    p.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
