"""Random serving workload: prompts of a fixed token length, as `vllm bench serve --dataset-name random`.

Prompts are token-id lists (OpenAI /v1/completions accepts `prompt: [ids]`; vLLM, SGLang and
mini_engine use them verbatim, with no BOS added), so the server sees exactly `input_len` tokens
whatever its tokenizer. Ids are drawn uniformly from [low, high): by default [16, 4000), which is
ordinary (non-special) vocabulary in every tokenizer we serve (Llama-3: specials at >= 128000; the
built-in model: specials 0-3). With a tokenizer, ids come from its full non-special vocabulary, and
`as_text` decodes them to a string for servers that take text only (its re-tokenized length may
differ by a few tokens, as in vLLM's random dataset).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

__all__ = ["BenchRequest", "random_requests", "vocab_range"]


@dataclass(frozen=True)
class BenchRequest:
    prompt: list[int] | str
    prompt_len: int
    output_len: int


def vocab_range(tokenizer: Any | None, low: int = 16, high: int = 4000
                ) -> tuple[int, int, frozenset[int]]:
    """(low, high, excluded ids) to draw prompt ids from."""
    if tokenizer is None:
        return low, high, frozenset()
    return 0, len(tokenizer), frozenset(getattr(tokenizer, "all_special_ids", ()) or ())


def random_requests(num: int, input_len: int, output_len: int, *, seed: int,
                    range_ratio: float = 0.0, tokenizer: Any | None = None, as_text: bool = False,
                    id_low: int = 16, id_high: int = 4000) -> list[BenchRequest]:
    """`num` requests; lengths uniform in [len*(1-r), len*(1+r)] (r = range_ratio, 0: fixed)."""
    if num < 1 or input_len < 1 or output_len < 1:
        raise ValueError(f"num={num}, input_len={input_len}, output_len={output_len}: must be >= 1")
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"range_ratio={range_ratio}: must be in [0, 1)")
    if as_text and tokenizer is None:
        raise ValueError("as_text: needs a tokenizer (--tokenizer) to turn ids into text")
    low, high, excluded = vocab_range(tokenizer, id_low, id_high)
    if high - low <= len(excluded):
        raise ValueError(f"token id range [{low}, {high}) is empty")
    rng = random.Random(seed)
    out = []
    for _ in range(num):
        n_in = rng.randint(int(input_len * (1 - range_ratio)), int(input_len * (1 + range_ratio)))
        n_out = rng.randint(int(output_len * (1 - range_ratio)),
                            int(output_len * (1 + range_ratio)))
        n_in, n_out = max(1, n_in), max(1, n_out)
        ids = []
        while len(ids) < n_in:
            t = rng.randrange(low, high)
            if t not in excluded:
                ids.append(t)
        if as_text:
            text = tokenizer.decode(ids)
            out.append(BenchRequest(text, len(tokenizer.encode(text, add_special_tokens=False)),
                                    n_out))
        else:
            out.append(BenchRequest(ids, n_in, n_out))
    return out
