"""GPU timing of few-microsecond kernels, shared by the tuner and the benchmarks.

A single launch of a 3 us kernel cannot be timed by events around it (launch overhead and event
resolution dominate), so we capture `launches` calls in one CUDA graph, replay it, and divide. Callers
rotate over several weight copies whose total exceeds L2 (50 MB on H100) so weight-bound kernels read
HBM, not cache.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch

__all__ = ["graph_time_us", "interleaved_graph_times_us", "event_time_us", "copies_to_exceed_l2"]


def copies_to_exceed_l2(bytes_per_copy: int, l2_bytes: int | None = None) -> int:
    """How many copies of an operand make a rotation larger than twice the L2 cache."""
    if l2_bytes is None:
        l2_bytes = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
    return max(1, -(-2 * l2_bytes // max(1, bytes_per_copy)))


def graph_time_us(calls: Sequence[Callable[[], object]], launches: int = 200, reps: int = 15,
                  warmup: int = 3) -> float:
    """Median per-call time (us) of `calls` replayed round-robin inside one CUDA graph.

    `calls` are closures over pre-allocated tensors (different weight copies); each must be
    capturable (no allocation that depends on data, no host sync).
    """
    return interleaved_graph_times_us([calls], [launches], reps, warmup)[0]


def interleaved_graph_times_us(call_sets: Sequence[Sequence[Callable[[], object]]], launches: Sequence[int],
                               reps: int = 15, warmup: int = 3) -> list[float]:
    """graph_time_us of several call sets (e.g. two kernels and their peer), each captured in its own
    graph, with the graphs replayed in turn within every repetition: clock and power drift then
    touch all of them alike. Tensor-bound kernels run near the H100's power limit, where the same
    kernel was seen to move by up to ~15% between runs seconds apart (benchmarks/notes_gemm.md)."""
    graphs = [_capture(calls, n, warmup) for calls, n in zip(call_sets, launches, strict=True)]
    times: list[list[float]] = [[] for _ in graphs]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(reps):
        for graph, n, out in zip(graphs, launches, times, strict=True):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) * 1000.0 / n)
    return [statistics.median(t) for t in times]


def _capture(calls: Sequence[Callable[[], object]], launches: int, warmup: int) -> torch.cuda.CUDAGraph:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):  # compile / autotune / allocate outside capture
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(launches):
            calls[i % len(calls)]()
    graph.replay()
    torch.cuda.synchronize()
    return graph


def event_time_us(call: Callable[[], object], reps: int = 20, warmup: int = 3) -> float:
    """Median time (us) of one eager call, events around it: for calls too slow for a graph loop."""
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0)
    return statistics.median(times)
