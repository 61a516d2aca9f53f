"""Helpers shared by the benchmark scripts: the machine line, markdown table headers, CUDA
synchronisation and the ``--quick`` thread setting.

The scripts import this as ``_bench`` after putting their own folder on ``sys.path``, so it
works both for ``python benchmarks/x.py`` and for loading a script by file path (the smoke tests).
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import sys
from collections.abc import Callable

import torch

from affinitynet.parallel import usable_cores  # noqa: F401  (the benchmarks' core count is the package's)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else ``platform.processor()``."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return model


def load_average() -> float:
    """The 1-minute load average: how busy the machine is with other programs."""
    return os.getloadavg()[0]


def cuda_suffix() -> str:
    """``", GPU <name>"`` of the first CUDA device, or ``", no CUDA device"``."""
    return f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no CUDA device"


def machine(gpu: str = "", threads: bool = True) -> str:
    """One line naming the CPU, the usable cores, torch (with its thread count when ``threads``),
    ``gpu`` as given (e.g. ``cuda_suffix()``) and the load average at start."""
    torch_part = f"torch {torch.__version__}"
    if threads:
        torch_part += f" with {torch.get_num_threads()} threads"
    return (f"{cpu_model()}, {usable_cores()} cores usable, {torch_part}{gpu}, "
            f"load average {load_average():.2f} at start")


def quiet(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` with its stdout and stderr swallowed (stages print progress)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


def print_table_header(*columns: str, align: str) -> None:
    """Print a markdown table's header and rule lines; ``align`` holds one ``l`` (left) or ``r``
    (right, for numbers) per column."""
    if len(align) != len(columns):
        raise ValueError(f"{len(columns)} columns but align {align!r}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "".join("---:|" if a == "r" else "---|" for a in align))


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (no-op elsewhere), so wall-clock timings count it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None) -> int:
    """Call ``main(argv)``; with ``--quick`` single-threaded (a smoke test on a busy machine,
    where two OpenMP threads waiting for each other make every small op slow). The thread count
    is restored afterwards."""
    threads = torch.get_num_threads()
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(threads)
