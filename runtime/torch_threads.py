"""Torch's CPU threads: the serving thread keeps them all, every other thread uses one.

libgomp, the OpenMP runtime under torch's CPU ops, keeps a team of worker threads for each
thread that ran a parallel op, for as long as that thread lives. Once a process holds more
such workers than it has CPUs, libgomp stops spinning between parallel regions, and every
small op of the serving thread then waits for its workers to wake from sleep: on a 2-core
machine at batch 16 the model's projections took 2-4x longer as soon as one adapter-loading
thread had run a parallel op (`bench.decode_step`, and the step times of `bench.adapters`).

So the background pools (adapter downloads, loads and copies, grammar compiles) are all
made by `background_pool`, whose threads start `single_threaded`; the model loads in a
thread that ends with the load, taking its workers with it (`in_passing_thread`); and the
engine's own thread sets its count (`serving_threads`), as torch would otherwise give a new
thread whatever count was set last in the process, which a background pool may have set to
one.

On a CPU the serving thread's count is every core the process may use, counting the cores a
pod's CPU limit allows rather than the node's (`serving_thread_count`). The event loop and
the tokenizers take little beside it: on the 2-core bench machine the server with two torch
threads ran 1.5x faster than with one and as fast as the same engine in process
(`bench.adapters --threads 1|2`, base and 8 adapters).
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def single_threaded() -> None:
    """A thread pool's initializer: this thread's torch ops run on one thread."""
    _set_this_threads_count(1)


def background_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A pool for work beside serving (loads, copies, compiles), on one torch thread each."""
    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=single_threaded)


def serving_thread_count(configured: int, device: torch.device) -> int:
    """The serving thread's torch threads: `configured` if set; on a CPU every available
    core; elsewhere (the model on a GPU) what torch has now."""
    if configured > 0:
        return configured
    if device.type == "cpu":
        return available_cores()
    return torch.get_num_threads()


def available_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup CPU quota (a pod's
    CPU limit), which the affinity does not show."""
    cores = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup_root)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def _cgroup_quota(root: Path) -> float | None:
    """CPUs' worth of the cgroup's quota (v2 `cpu.max`, else v1 CFS files), None if unset."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def serving_threads(count: int) -> None:
    """The serving thread's torch ops run on `count` threads (call on that thread)."""
    _set_this_threads_count(count)


def _set_this_threads_count(count: int) -> None:
    """Set the calling thread's count for good.

    torch keeps one process-wide count (the last `set_num_threads`, from any thread) and
    copies it into a thread's own OpenMP setting at that thread's first parallel op or
    `get_num_threads`. Set without that first, a thread's count is overwritten by whatever
    another thread set in between: a serving thread that set 2 ran its whole life on 1 once
    an adapter pool had started before its first step (`bench.adapters --threads 2`, 8
    adapters registered first: the server at the speed of one thread), and a pool thread
    that set 1 could run on the serving thread's count, its workers then stopping the
    serving thread's from spinning.
    """
    torch.get_num_threads()  # this thread's copy of the process-wide count, taken now
    torch.set_num_threads(count)


async def in_passing_thread(function: Callable[..., T], *args: object) -> T:
    """`await asyncio.to_thread(function, *args)`, in a thread that ends when it returns."""
    executor = ThreadPoolExecutor(1, thread_name_prefix="loraplex-load")
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)
    finally:
        executor.shutdown(wait=False)  # the thread exits once the call is done
