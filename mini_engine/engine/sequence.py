"""Sequence: one request's tokens, KV block table and progress. Pure Python (no torch).

A sequence's tokens are prompt + generated so far. `num_computed_tokens` counts those whose K/V are in
the cache; the scheduler gives it `len(token_ids) - num_computed_tokens` more (capped by the step's
token budget: chunked prefill). After preemption it drops to 0 and the whole token list is recomputed
as if it were the prompt, so generation resumes exactly where it stopped.
"""

from __future__ import annotations

import enum
from typing import Any

from ..sampling_params import SamplingParams

__all__ = ["SequenceStatus", "Sequence"]


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    __slots__ = (
        "request_id", "token_ids", "num_prompt_tokens", "params", "status", "block_table",
        "num_computed_tokens", "block_hashes", "num_cached_blocks", "finish_reason", "generator",
        "detokenizer", "stop_ids",
    )

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 stop_ids: frozenset[int] = frozenset()):
        self.request_id = request_id
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_computed_tokens = 0
        self.block_hashes: list[bytes] = []  # digest of each full block's prefix, filled lazily
        self.num_cached_blocks = 0  # leading blocks registered in the prefix cache by this sequence
        self.finish_reason: str | None = None
        self.generator: Any = None  # per-request torch.Generator when params.seed is set
        self.detokenizer: Any = None
        self.stop_ids = stop_ids  # EOS ids (unless ignore_eos) + params.stop_token_ids

    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        return (f"Sequence({self.request_id!r}, {self.status.value}, tokens={len(self.token_ids)}, "
                f"computed={self.num_computed_tokens}, blocks={len(self.block_table)})")

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int, max_model_len: int) -> None:
        """Adds a sampled token and sets finish_reason when a token-level stop condition holds."""
        self.token_ids.append(token_id)
        if token_id in self.stop_ids:
            self.finish_reason = "stop"
        elif self.num_output_tokens >= self.params.max_tokens or len(self.token_ids) >= max_model_len:
            self.finish_reason = "length"
