"""SamplingParams: how one request samples and when it stops (vLLM's names and defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SamplingParams"]


_INT32_MAX = 2**31 - 1
_GREEDY_TEMPERATURE = 1e-5

def _fail(field: str, value: object, why: str) -> None:
    raise ValueError(f"{field}={value!r}: {why}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; validated on construction (ValueError names the field).

    temperature=0 is greedy (top_k/top_p/seed are then irrelevant). top_k=-1 (or 0) and top_p=1
    disable those filters. `stop` strings are matched on the detokenized text and are not included
    in the returned text; `stop_token_ids` (and EOS unless ignore_eos) end generation after the token.
    """

    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            _fail("temperature", t, "must be a finite number >= 0")
        if not _is_int(self.top_k) or not -1 <= self.top_k <= _INT32_MAX:
            _fail("top_k", self.top_k, f"must be an integer in [-1, {_INT32_MAX}] (-1 or 0 disables it)")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 < p <= 1.0):
            _fail("top_p", p, "must be in (0, 1]")
        if self.seed is not None and (not _is_int(self.seed) or not -(2**63) <= self.seed < 2**64):
            _fail("seed", self.seed, "must be None or an integer in [-2**63, 2**64)")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            _fail("max_tokens", self.max_tokens, "must be an integer >= 1")
        if self.stop is not None:
            stop = [self.stop] if isinstance(self.stop, str) else self.stop
            if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
                _fail("stop", self.stop, "must be a list of non-empty strings")
            object.__setattr__(self, "stop", list(stop))
        if self.stop_token_ids is not None:
            ids = self.stop_token_ids
            if not isinstance(ids, (list, tuple)) or not all(_is_int(i) and i >= 0 for i in ids):
                _fail("stop_token_ids", ids, "must be a list of non-negative integers")
            object.__setattr__(self, "stop_token_ids", list(ids))
        if not isinstance(self.ignore_eos, bool):
            _fail("ignore_eos", self.ignore_eos, "must be a bool")

    @property
    def greedy(self) -> bool:
        # Below _GREEDY_TEMPERATURE, logits / temperature overflows fp32: sample the argmax (as vLLM).
        return self.temperature < _GREEDY_TEMPERATURE

    @property
    def uses_top_k(self) -> bool:
        return self.top_k > 0 and not self.greedy

    @property
    def uses_top_p(self) -> bool:
        return self.top_p < 1.0 and not self.greedy
