"""Scheduler: continuous batching with chunked prefill and recompute preemption. Pure Python (no torch).

Each step has a token budget (max_num_batched_tokens). Running sequences come first, oldest first:
a decoding sequence takes 1 token, a sequence still in its prompt takes the next chunk. Waiting
sequences are then admitted (FCFS, prefix-cache hits skipped) while budget, max_num_seqs and free
blocks allow. When a running sequence needs a block and none is free, the most recently admitted
running sequence is preempted: its blocks are freed and it goes back to the front of the queue with
all its tokens (prompt + generated) to recompute, so it resumes exactly where it was.

The step's batch lists sequences with one new token first (the decode kernel's part), then the
prefill chunks. A pure-decode batch is what the CUDA graphs replay.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, SequenceStatus

__all__ = ["Scheduler", "ScheduledBatch"]


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    num_new_tokens: list[int]  # tokens computed for each sequence this step
    num_decodes: int  # the first num_decodes sequences have exactly one new token
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def is_decode_only(self) -> bool:
        return self.num_decodes == len(self.seqs)

    def samples(self, i: int) -> bool:
        """Does sequence i reach its last token this step (so its next token is sampled)?"""
        seq = self.seqs[i]
        return seq.num_computed_tokens + self.num_new_tokens[i] == len(seq)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, watermark: float = 0.01):
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        # Keep a few blocks free when admitting, so new arrivals don't force immediate preemptions.
        self.watermark_blocks = int(watermark * block_manager.num_blocks)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_cached_prompt_tokens = 0  # prefix-cache hits, for stats

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------------------------------ schedule
    def schedule(self) -> ScheduledBatch:
        budget = self.max_num_batched_tokens
        chosen: list[tuple[Sequence, int]] = []
        preempted: list[Sequence] = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            while not self.bm.can_allocate(seq, seq.num_computed_tokens + n):
                victim = self.running.pop()  # lowest priority: the latest admitted
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                break
            self.bm.allocate(seq, seq.num_computed_tokens + n)
            chosen.append((seq, n))
            budget -= n
            i += 1
        if not preempted:
            budget = self._admit(chosen, budget)
        decodes = [(s, n) for s, n in chosen if n == 1]
        others = [(s, n) for s, n in chosen if n != 1]
        ordered = decodes + others
        return ScheduledBatch([s for s, _ in ordered], [n for _, n in ordered], len(decodes), preempted)

    def _admit(self, chosen: list[tuple[Sequence, int]], budget: int) -> int:
        bm = self.bm
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hits = bm.get_computed_blocks(seq)
            cached = len(hits) * bm.block_size
            n = min(len(seq) - cached, budget)
            need = bm.num_blocks_to_allocate(seq, cached + n, hits)
            if need > bm.num_free_blocks - (self.watermark_blocks if self.running else 0):
                break
            self.waiting.popleft()
            bm.allocate(seq, cached + n, hits)
            seq.num_computed_tokens = cached
            seq.status = SequenceStatus.RUNNING
            self.num_cached_prompt_tokens += cached
            self.running.append(seq)
            chosen.append((seq, n))
            budget -= n
        return budget

    def _preempt(self, seq: Sequence) -> None:
        self.bm.free_seq(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    # ------------------------------------------------------------------------------------ update
    def update(self, batch: ScheduledBatch, sampled: list[int | None]) -> None:
        """Records the step: computed tokens (registering full blocks in the prefix cache) and the
        sampled token of each sequence that reached its end (None for mid-prompt chunks)."""
        for seq, n, token in zip(batch.seqs, batch.num_new_tokens, sampled, strict=False):
            seq.num_computed_tokens += n
            self.bm.cache_blocks(seq)
            if token is not None:
                seq.append_token(token, self.max_model_len)

    def finish(self, seqs: list[Sequence]) -> None:
        """Removes finished sequences (finish_reason set by the caller) and frees their blocks."""
        if not seqs:
            return
        done = set(map(id, seqs))
        for seq in seqs:
            self.bm.free_seq(seq)
            seq.status = SequenceStatus.FINISHED
        self.running = [s for s in self.running if id(s) not in done]

    def abort(self, seq: Sequence) -> None:
        """Drops a waiting or running sequence and frees its blocks; finished ones are left alone."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        else:
            self.running.remove(seq)
        self.bm.free_seq(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = "abort"
