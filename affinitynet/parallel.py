"""Work spread over CPU processes on one machine (the CRF of make-aff-labels, the masks of
prepare-coco): a function of one item, mapped over items with a progress bar."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_in_processes(fn: Callable[[Any], Any], items: Sequence[Any], processes: int, desc: str,
                     progress: bool = True, chunksize: int = 1) -> None:
    """``fn(item)`` for every item, in this process (``processes`` <= 1 or a single item) or in
    a pool of ``processes`` forked workers, each item exactly once and in any order. ``fn`` must
    be picklable and must not touch torch's thread pool (forked children inherit its locks).
    The bar is closed before an error propagates, so the error line comes after it."""
    with tqdm(total=len(items), desc=desc, dynamic_ncols=True, disable=not progress) as bar:
        if processes <= 1 or len(items) < 2:
            for item in items:
                fn(item)
                bar.update()
        else:
            # fork shares the already-imported modules with the workers
            with mp.get_context("fork").Pool(processes) as pool:
                for _ in pool.imap_unordered(fn, items, chunksize=chunksize):
                    bar.update()
