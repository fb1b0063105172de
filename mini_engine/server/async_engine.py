"""The thread that owns the LLMEngine: runs step() in a loop, takes add/abort from the event loop.

The engine is single-threaded (docs/CONTRACT.md). The HTTP handlers run on the asyncio event loop and
never touch it; they put commands on a thread-safe queue. The engine thread drains that queue between
steps (blocking on it while idle), calls step(), and hands each step's outputs back to the event loop
with one `call_soon_threadsafe` per step (per-output hand-offs would cost the loop one wake-up per
token at 512 concurrent streams).

Items a request's sink (an asyncio.Queue) receives, as (kind, request_id, payload):
    ("ack", rid, None)            the engine accepted the request
    ("error", rid, (status, msg)) it did not (400: ValueError from add_request) or step() failed (500)
    ("output", rid, RequestOutput) progress; payload.finished marks the last one
The thread never dies on one bad request: every engine call is guarded, and if step() itself raises,
all in-flight requests are aborted and failed with a 500 so the next step starts clean.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AsyncEngine", "Overloaded", "EngineDead"]

logger = logging.getLogger("mini_engine.server")


def _current_cuda_device() -> int | None:
    """The CUDA device the engine was built on (set on the constructing thread), if any."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.current_device()


class Overloaded(RuntimeError):
    """More requests are waiting than --max-waiting allows (HTTP 503)."""


class EngineDead(RuntimeError):
    """The engine thread is not running (HTTP 503)."""


@dataclass
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: Any
    sink: asyncio.Queue


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Call:
    fn: Callable[[Any], Any]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class AsyncEngine:
    """Runs `engine.step()` on a dedicated thread; the async side submits, aborts and reads stats.

    engine: any object with the LLMEngine contract (add_request, abort_request, step,
        has_unfinished_requests, stats). max_waiting: submissions beyond this many requests not yet
        running are refused with Overloaded.
    """

    def __init__(self, engine: Any, *, max_waiting: int = 4096, stats_interval_s: float = 0.25):
        if max_waiting < 1:
            raise ValueError(f"max_waiting: must be >= 1, got {max_waiting}")
        self.engine = engine
        self.max_waiting = max_waiting
        self._stats_interval_s = stats_interval_s
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Engine-thread state.
        self._sinks: dict[str, asyncio.Queue] = {}
        self._pending: list[tuple[asyncio.Queue, tuple]] = []
        self._last_stats_t = 0.0
        # Event-loop-thread state.
        self._in_flight: set[str] = set()
        self.running_snapshot = 0  # engine's running count, refreshed by the engine thread
        self.step_failures = 0
        # torch's current CUDA device is per thread: the step thread must use the engine's.
        self._cuda_device = _current_cuda_device()

    # ---------------------------------------------------------------- event-loop side
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="mini-engine-step", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._commands.put(None)  # wake the thread if it is blocked on the queue
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    @property
    def num_in_flight(self) -> int:
        return len(self._in_flight)

    def num_waiting_estimate(self) -> int:
        return max(0, len(self._in_flight) - self.running_snapshot)

    def submit(self, request_id: str, prompt_token_ids: list[int], params: Any,
               sink: asyncio.Queue) -> None:
        """Queue a request for the engine. Call on the event loop; answers come through `sink`."""
        if not self.alive:
            raise EngineDead("the engine thread is not running")
        if self.num_waiting_estimate() >= self.max_waiting:
            raise Overloaded(
                f"server overloaded: {self.num_waiting_estimate()} requests waiting "
                f"(--max-waiting {self.max_waiting}); retry later")
        self._in_flight.add(request_id)
        self._commands.put(_Add(request_id, prompt_token_ids, params, sink))

    def abort(self, request_id: str) -> None:
        """Abort a request (client gone); frees its KV. Unknown or finished ids are a no-op."""
        if request_id in self._in_flight:
            self._in_flight.discard(request_id)
            self._commands.put(_Abort(request_id))

    async def call(self, fn: Callable[[Any], Any], timeout: float = 30.0) -> Any:
        """Run fn(engine) on the engine thread between steps and return its result."""
        if not self.alive:
            raise EngineDead("the engine thread is not running")
        cmd = _Call(fn)
        self._commands.put(cmd)
        return await asyncio.wait_for(asyncio.wrap_future(cmd.future), timeout)

    async def stats(self) -> dict:
        return await self.call(lambda engine: engine.stats())

    def _dispatch(self, batch: list[tuple[asyncio.Queue, tuple]]) -> None:
        for sink, item in batch:
            kind, rid, payload = item
            if kind == "error" or (kind == "output" and payload.finished):
                self._in_flight.discard(rid)
            sink.put_nowait(item)

    # ---------------------------------------------------------------- engine-thread side
    def _run(self) -> None:
        if self._cuda_device is not None:
            sys.modules["torch"].cuda.set_device(self._cuda_device)
        logger.info("engine thread started")
        while not self._stop.is_set():
            try:
                self._drain_commands(block=not self._has_work())
                self._flush()  # acks go out before the (possibly long) step
                if self._has_work():
                    self._step()
                self._refresh_running()
            except Exception:  # never let the loop die; the guarded calls below should catch all
                logger.exception("engine thread: unexpected error (continuing)")
            self._flush()
        logger.info("engine thread stopped")

    def _has_work(self) -> bool:
        try:
            return bool(self.engine.has_unfinished_requests())
        except Exception:
            logger.exception("has_unfinished_requests() failed")
            return False

    def _drain_commands(self, block: bool) -> None:
        try:
            cmd = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            if cmd is not None:  # None only wakes the thread (shutdown)
                self._handle(cmd)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return

    def _handle(self, cmd: _Add | _Abort | _Call) -> None:
        if isinstance(cmd, _Add):
            try:
                self.engine.add_request(cmd.request_id, cmd.prompt_token_ids, cmd.params)
            except ValueError as exc:
                self._pending.append((cmd.sink, ("error", cmd.request_id, (400, str(exc)))))
                return
            except Exception as exc:
                logger.exception("add_request(%s) failed", cmd.request_id)
                self._pending.append((cmd.sink, ("error", cmd.request_id, (500, repr(exc)))))
                return
            self._sinks[cmd.request_id] = cmd.sink
            self._pending.append((cmd.sink, ("ack", cmd.request_id, None)))
        elif isinstance(cmd, _Abort):
            self._sinks.pop(cmd.request_id, None)
            try:
                self.engine.abort_request(cmd.request_id)
            except Exception:
                logger.exception("abort_request(%s) failed", cmd.request_id)
        else:
            if not cmd.future.set_running_or_notify_cancel():
                return  # the caller timed out and cancelled; nobody waits for the result
            try:
                cmd.future.set_result(cmd.fn(self.engine))
            except Exception as exc:
                cmd.future.set_exception(exc)

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:
            self.step_failures += 1
            logger.exception("engine.step() failed; failing %d in-flight requests", len(self._sinks))
            for rid, sink in list(self._sinks.items()):
                try:
                    self.engine.abort_request(rid)
                except Exception:
                    logger.exception("abort_request(%s) after a failed step", rid)
                self._pending.append((sink, ("error", rid, (500, f"engine step failed: {exc!r}"))))
            self._sinks.clear()
            return
        for out in outputs:
            sink = self._sinks.get(out.request_id)
            if sink is None:  # aborted by the client meanwhile
                continue
            if out.finished:
                del self._sinks[out.request_id]
            self._pending.append((sink, ("output", out.request_id, out)))

    def _refresh_running(self) -> None:
        now = time.monotonic()
        if now - self._last_stats_t < self._stats_interval_s:
            return
        self._last_stats_t = now
        try:
            self.running_snapshot = int(self.engine.stats().get("running", 0))
        except Exception:
            logger.exception("stats() failed")

    def _flush(self) -> None:
        if not self._pending or self._loop is None:
            return
        batch, self._pending = self._pending, []
        try:
            self._loop.call_soon_threadsafe(self._dispatch, batch)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass
