"""Closed-loop load at a fixed concurrency: `c` workers, each sending its next request when one ends.

A level sends at most `len(requests)` requests (the CLI uses max(4c, 32)); with `max_seconds` no new
request starts after that many seconds and the level ends when the ones in flight finish, so a sweep
to 512 fits a time budget. The level's duration runs from the first send to the last response.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from tqdm.auto import tqdm

from .client import RequestResult, send_request
from .dataset import BenchRequest

__all__ = ["run_level", "wait_for_health", "make_session"]


def make_session(concurrency: int, timeout_s: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency + 8, force_close=False)
    return aiohttp.ClientSession(connector=connector, read_bufsize=1 << 20,
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


async def run_level(url: str, model: str | None, requests: list[BenchRequest], concurrency: int,
                    *, max_seconds: float | None = None, request_timeout_s: float = 600.0,
                    ignore_eos: bool = True, temperature: float = 0.0,
                    extra_body: dict[str, Any] | None = None, desc: str = "",
                    progress: bool = True) -> tuple[list[RequestResult], float]:
    """Returns (results of the requests sent, duration in seconds)."""
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency}: must be >= 1")
    queue = list(reversed(requests))
    results: list[RequestResult] = []
    bar = tqdm(total=len(requests), desc=desc, unit="req", disable=not progress, leave=True)
    t0 = time.perf_counter()
    deadline = t0 + max_seconds if max_seconds else None

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue and (deadline is None or time.perf_counter() < deadline):
            req = queue.pop()
            r = await send_request(session, url, model, req, ignore_eos=ignore_eos,
                                   temperature=temperature, extra_body=extra_body)
            results.append(r)
            bar.update(1)
            if not r.success:
                bar.set_postfix_str(f"failed {sum(not x.success for x in results)}")

    async with make_session(concurrency, request_timeout_s) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    ends = [r.start + r.latency for r in results if r.success]
    duration = (max(ends) if ends else time.perf_counter()) - t0
    if bar.total != len(results):  # stopped by the time bound
        bar.total = len(results)
        bar.refresh()
    bar.close()
    return results, duration


async def wait_for_health(base_url: str, timeout_s: float, proc_alive=None) -> float:
    """Poll GET {base_url}/health until 200; returns seconds waited. proc_alive() False aborts."""
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            try:
                async with session.get(f"{base_url}/health") as resp:
                    if resp.status == 200:
                        return time.perf_counter() - t0
            except (aiohttp.ClientError, TimeoutError):
                pass
            if proc_alive is not None and not proc_alive():
                raise RuntimeError("the server process exited before it became healthy")
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"{base_url}/health not ready after {timeout_s:.0f} s")
            await asyncio.sleep(0.25)
