"""Torch's CPU threads: the serving thread keeps them all, every other thread uses one.

libgomp, the OpenMP runtime under torch's CPU ops, keeps a team of worker threads for each
thread that ran a parallel op, for as long as that thread lives. Once a process holds more
such workers than it has CPUs, libgomp stops spinning between parallel regions, and every
small op of the serving thread then waits for its workers to wake from sleep: on a 2-core
machine at batch 16 the model's projections took 2-4x longer as soon as one adapter-loading
thread had run a parallel op (`bench.decode_step`, and the step times of `bench.adapters`).

So the background pools (adapter downloads, loads and copies, grammar compiles) start their
threads with `single_threaded`; the model loads in a thread that ends with the load, taking
its workers with it (`in_passing_thread`); and the engine's own thread sets its count
(`serving_threads`), as torch would otherwise give a new thread whatever count was set last
in the process, which a background pool may have set to one.

That count leaves a core to the HTTP server on a CPU (`serving_thread_count`): with as many
torch threads as cores, the event loop and the tokenizers preempt one of the step's workers
and every parallel region waits for it. On the 2-core bench machine the server with two torch
threads was no faster than with one (`bench.adapters --threads 1|2`, base and 8 adapters),
while the same engine in process, alone on the machine, ran 1.3x faster with two.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")


def single_threaded() -> None:
    """A thread pool's initializer: this thread's torch ops run on one thread."""
    torch.set_num_threads(1)


def serving_thread_count(configured: int, device: torch.device) -> int:
    """The serving thread's torch threads: `configured` if set; on a CPU every core but
    one (at least one); elsewhere (the model on a GPU) what torch has now."""
    if configured > 0:
        return configured
    if device.type == "cpu":
        return max(1, len(os.sched_getaffinity(0)) - 1)
    return torch.get_num_threads()


def serving_threads(count: int) -> None:
    """The serving thread's torch ops run on `count` threads (call on that thread)."""
    torch.set_num_threads(count)


async def in_passing_thread(function: Callable[..., T], *args: object) -> T:
    """`await asyncio.to_thread(function, *args)`, in a thread that ends when it returns."""
    executor = ThreadPoolExecutor(1, thread_name_prefix="loraplex-load")
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)
    finally:
        executor.shutdown(wait=False)  # the thread exits once the call is done
