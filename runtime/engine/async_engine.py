"""Drives an `Engine` from one background thread for an asyncio server.

The engine is single-threaded and its steps are blocking tensor work, so it runs in a
thread of its own: requests and aborts go in through a thread-safe queue, events come
back to the event loop with `loop.call_soon_threadsafe` and wait in one asyncio queue
per request. The loop thread never runs model code, so the server stays responsive;
each step's duration is recorded (a bounded deque) so tests can check that. Closing or
cancelling a `generate()` iterator aborts its request and frees its KV blocks;
`interrupt_all` makes every open iterator raise (at shutdown), which aborts them all.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from loraplex.runtime.adapters.manager import AdapterManager
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.engine import ADAPTER_WAIT_S, Engine, EngineStats
from loraplex.runtime.engine.memory_plan import MemoryPlan
from loraplex.runtime.engine.request import GenerationRequest, RequestInterrupted, TokenEvent
from loraplex.runtime.torch_threads import serving_thread_count, serving_threads

logger = logging.getLogger(__name__)

STEP_HISTORY = 4096  # step durations kept
IDLE_POLL_S = 0.5  # how often an idle loop thread wakes to check for shutdown


@dataclass(frozen=True, slots=True)
class _Add:
    request: GenerationRequest


@dataclass(frozen=True, slots=True)
class _Abort:
    request_id: str


class _Stop:
    pass


class AsyncEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.step_durations: deque[float] = deque(maxlen=STEP_HISTORY)  # seconds
        self._commands: queue.SimpleQueue[_Add | _Abort | _Stop] = queue.SimpleQueue()
        self._streams: dict[str, asyncio.Queue[TokenEvent | BaseException]] = {}
        self._stats = engine.stats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._torch_threads = serving_thread_count(engine.config.cpu_threads,
                                                   engine.loaded.device)

    @classmethod
    def from_config(cls, config: EngineConfig) -> AsyncEngine:
        """Load the model and build the engine (blocking: seconds to minutes)."""
        return cls(Engine(config))

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.engine.tokenizer

    @property
    def adapters(self) -> AdapterManager:
        """The engine's adapter manager (register adapters here; safe from any thread)."""
        return self.engine.adapters

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.engine.vocab_size

    @property
    def eos_token_ids(self) -> list[int]:
        return self.engine.eos_token_ids

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.loaded.dtype

    @property
    def device(self) -> torch.device:
        return self.engine.loaded.device

    @property
    def memory_plan(self) -> MemoryPlan:
        return self.engine.memory_plan

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> EngineStats:
        """The engine's counters as of its last step (safe from any thread)."""
        return self._stats

    def validate(self, request: GenerationRequest) -> None:
        """Raise ValueError now if the request can never run."""
        self.engine.validate(request)

    async def start(self) -> None:
        if self.is_running:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="loraplex-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the loop thread; requests still running end with an ABORT event."""
        if not self.is_running:
            return
        self._commands.put(_Stop())
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None
        for request_id in list(self._streams):  # added after the loop had stopped
            self._fail(request_id, RuntimeError("the engine stopped"))

    def interrupt_all(self, reason: str) -> int:
        """End every open `generate()` with `RequestInterrupted(reason)`; return how many.

        Call on the event loop's thread. Each iterator raises at its next event and aborts
        its request, so the caller can still tell its client why it ended.
        """
        open_ids = list(self._streams)
        for request_id in open_ids:
            self._fail(request_id, RequestInterrupted(reason))
        return len(open_ids)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Events of one request, the last with `finished`; ValueError if it cannot run."""
        if not self.is_running:
            raise RuntimeError("the engine is not started (await start() first)")
        if request.request_id in self._streams:
            raise ValueError(f"request id {request.request_id!r} is already running")
        self.engine.validate(request)
        stream: asyncio.Queue[TokenEvent | BaseException] = asyncio.Queue()
        self._streams[request.request_id] = stream
        self._commands.put(_Add(request))
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request.request_id, None)
            if not finished:
                self._commands.put(_Abort(request.request_id))

    # the engine thread

    def _run(self) -> None:
        serving_threads(self._torch_threads)
        try:
            self._loop_until_stopped()
            events = self.engine.abort_all()
        except BaseException as error:  # never leave streams waiting on a dead thread
            logger.exception("engine loop crashed")
            events = self.engine.fail_all(f"engine loop crashed: {error}")
        self._stats = self.engine.stats()
        if events:
            self._loop.call_soon_threadsafe(self._dispatch, events)

    def _loop_until_stopped(self) -> None:
        while self._apply_commands(*self._command_wait()):
            if not self.engine.has_unfinished():
                self.engine.adapters.poll()  # device preloads and copies go on while idle
                continue
            started = time.perf_counter()
            try:
                events = self.engine.step()
            except Exception as error:  # a failed step must not kill the loop
                logger.exception("engine step failed; failing its requests")
                events = self.engine.fail_all(f"engine step failed: {error}")
            self.step_durations.append(time.perf_counter() - started)
            self._stats = self.engine.stats()
            if events:
                self._loop.call_soon_threadsafe(self._dispatch, events)

    def _command_wait(self) -> tuple[bool, float]:
        """(block, timeout) for the next command: idle, or every request waits on a load."""
        if not self.engine.has_unfinished():
            return True, IDLE_POLL_S
        return not self.engine.last_step_ran, ADAPTER_WAIT_S

    def _apply_commands(self, block: bool, timeout: float = IDLE_POLL_S) -> bool:
        """Apply queued commands (waiting up to `timeout` if `block`); False once stopping."""
        try:
            command = self._commands.get(timeout=timeout) if block else (
                self._commands.get_nowait())
        except queue.Empty:
            return True
        while True:
            if isinstance(command, _Stop):
                return False
            if isinstance(command, _Add):
                try:
                    self.engine.add_request(command.request)
                except Exception as error:
                    self._loop.call_soon_threadsafe(self._fail, command.request.request_id,
                                                    error)
            else:
                self.engine.abort(command.request_id)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True

    # the event loop thread

    def _dispatch(self, events: list[TokenEvent]) -> None:
        for event in events:
            stream = self._streams.get(event.request_id)
            if stream is not None:
                stream.put_nowait(event)

    def _fail(self, request_id: str, error: BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.put_nowait(error)
