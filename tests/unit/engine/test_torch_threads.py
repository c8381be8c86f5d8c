"""The thread discipline of `torch_threads`: background pools on one torch thread, the
serving thread on its own count, model loading in a thread that does not outlive it."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from loraplex.runtime.config import EngineConfig
from loraplex.runtime.torch_threads import (
    available_cores,
    in_passing_thread,
    serving_thread_count,
    serving_threads,
    single_threaded,
)


def test_a_background_pool_uses_one_thread_and_the_serving_thread_keeps_its_count() -> None:
    serving = torch.get_num_threads()
    with ThreadPoolExecutor(1, initializer=single_threaded) as pool:
        assert pool.submit(torch.get_num_threads).result() == 1
        pool.submit(lambda: torch.ones(1 << 20).add_(1).sum()).result()
    assert torch.get_num_threads() == serving


def test_a_serving_thread_started_after_a_pool_gets_the_count_it_asks_for() -> None:
    wanted = max(2, torch.get_num_threads())
    with ThreadPoolExecutor(1, initializer=single_threaded) as pool:
        pool.submit(torch.get_num_threads).result()  # the last count set in the process: 1
    seen: list[int] = []

    def serve() -> None:
        serving_threads(wanted)
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    assert seen == [wanted]


def _in_new_thread(function):
    """`function()`'s result, run in a thread of its own (a fresh torch thread state)."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(function()))
    thread.start()
    thread.join()
    return result[0]


def test_a_serving_thread_keeps_its_count_when_a_pool_starts_before_its_first_op() -> None:
    wanted = max(2, torch.get_num_threads())
    counted = threading.Event()
    pool_started = threading.Event()

    def serve() -> int:
        serving_threads(wanted)
        counted.set()
        pool_started.wait(10)  # a pool thread sets 1 before this thread's first parallel op
        torch.ones(1 << 20).add_(1).sum()
        return torch.get_num_threads()

    def pool() -> None:
        counted.wait(10)
        with ThreadPoolExecutor(1, initializer=single_threaded) as executor:
            executor.submit(lambda: None).result()
        pool_started.set()

    other = threading.Thread(target=pool)
    other.start()
    assert _in_new_thread(serve) == wanted
    other.join()


def test_a_pool_thread_stays_on_one_thread_when_a_serving_count_is_set_after_it() -> None:
    wanted = max(2, torch.get_num_threads())
    with ThreadPoolExecutor(1, initializer=single_threaded) as executor:
        executor.submit(lambda: None).result()  # the initializer has run
        _in_new_thread(lambda: serving_threads(wanted))
        assert executor.submit(torch.get_num_threads).result() == 1


def test_a_passing_thread_returns_raises_and_ends_with_its_call() -> None:
    def load_names() -> set[str]:
        return {thread.name for thread in threading.enumerate() if "loraplex-load" in thread.name}

    async def run() -> None:
        assert await in_passing_thread(sum, [1, 2, 3]) == 6
        with pytest.raises(ValueError, match="bad checkpoint"):
            await in_passing_thread(_raise, ValueError("bad checkpoint"))

    asyncio.run(run())
    deadline = time.monotonic() + 10
    while load_names() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not load_names()


def _raise(error: Exception) -> None:
    raise error


def test_the_serving_thread_takes_every_available_core_on_a_cpu() -> None:
    assert serving_thread_count(0, torch.device("cpu")) == available_cores()
    assert serving_thread_count(3, torch.device("cpu")) == 3
    assert serving_thread_count(0, torch.device("meta")) == torch.get_num_threads()


def test_a_negative_thread_count_is_refused() -> None:
    with pytest.raises(ValueError, match="cpu_threads must not be negative"):
        EngineConfig(cpu_threads=-1)


def test_a_cgroup_cpu_limit_caps_the_cores(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    assert available_cores(tmp_path) == cores  # no cgroup files: the affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cores(tmp_path) == cores
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a 1.5-CPU limit
    assert available_cores(tmp_path) == min(cores, 2)
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")  # cgroup v1, half a CPU
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cores(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1 without a limit
    assert available_cores(tmp_path) == cores
