"""CUDA graphs for decode steps: one graph per padded batch size, captured once, replayed per step.

A decode step at batch 1 is ~300 small kernel launches (8B: 32 layers x ~10); eagerly each costs
~13 us of host time on the H100 box, more than the GPU needs for most of them. A replayed graph
launches them all at once. Each graph reads its inputs from the runner's device staging buffer
(views laid out for its size), so a step only fills that buffer and replays. Batches are padded to the
next captured size; padding rows write no KV (slot -1) and attend to one zeroed slot.

Capture order: every size is first run eagerly (the kit's GEMM configs and Triton kernels compile
there, never during capture), then captured largest first so that smaller graphs reuse the memory
pool of the larger ones.
"""

from __future__ import annotations

import bisect
import logging
import time

import torch

__all__ = ["CudaGraphRunner", "capture_sizes"]

log = logging.getLogger("mini_engine.cuda_graph")


def capture_sizes(max_bs: int) -> list[int]:
    """1, 2, 4, 8, then steps of 8 to 64, 16 to 128, 32 to 256, 64 beyond (<= 12.5% padding)."""
    sizes, b = [1, 2, 4, 8], 8
    while b < max_bs:
        b += 8 if b < 64 else 16 if b < 128 else 32 if b < 256 else 64
        sizes.append(b)
    return [s for s in sizes if s < max_bs] + [max_bs]


class CudaGraphRunner:
    def __init__(self, runner, max_bs: int):
        self.runner = runner
        self.sizes = capture_sizes(max_bs)
        self.max_bs = max_bs
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.pool = None

    def padded_size(self, b: int) -> int:
        return self.sizes[bisect.bisect_left(self.sizes, b)]

    def _forward(self, g: int) -> torch.Tensor:
        ids, pos, _, meta = self.runner.metadata(g, g, 0, num_decodes=g, max_query_len=0)
        model = self.runner.model
        return model.compute_logits(model(ids, pos, meta))

    def _stage_dummy(self, g: int) -> None:
        """Padding-only inputs for size g (token 0 at position 0, no KV write, seq_len 1)."""
        h = self.runner.host_np
        o_ids, _, o_slot, o_lens, o_qsl, _, o_bt, end = self.runner.layout(g, g, 0)
        h[o_ids:o_slot] = 0
        h[o_slot:o_lens] = -1
        h[o_lens:o_qsl] = 1
        h[o_qsl:o_bt] = range(g + 1)
        h[o_bt:end] = 0
        self.runner.dev_buf[:end].copy_(self.runner.host_buf[:end])

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.perf_counter()
        for g in self.sizes:  # warm-up: compile everything each graph will launch
            self._stage_dummy(g)
            self._forward(g)
        torch.cuda.synchronize()
        for g in reversed(self.sizes):
            self._stage_dummy(g)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.logits[g] = self._forward(g)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[g] = graph
        torch.cuda.synchronize()
        log.info("captured %d decode CUDA graphs (batch sizes %s) in %.1f s", len(self.sizes),
                 self.sizes, time.perf_counter() - start)

    def replay(self, g: int) -> torch.Tensor:
        """Runs the graph of padded size g on the staged inputs; returns its (g, vocab) fp32 logits."""
        self.graphs[g].replay()
        return self.logits[g]
