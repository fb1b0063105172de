"""TEST DOUBLE: a tiny deterministic engine implementing the LLMEngine contract (docs/CONTRACT.md).

It lets the server tests exercise what the real engine makes hard to trigger on purpose: a step()
that raises, a queue limit of 2, slow steps for disconnects. Generated token t+1 is a fixed function
of the prompt and t, so answers are checkable; KV blocks are counted like a paged cache
(ceil(tokens / block_size) per running request) so "aborts free KV" is observable.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = ["FakeEngine", "FakeOutput", "fake_token"]


@dataclass
class FakeOutput:
    request_id: str
    new_token_ids: list[int]
    new_text: str
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None
    prompt_token_ids: list[int]
    num_prompt_tokens: int


@dataclass
class _Req:
    rid: str
    prompt: list[int]
    params: object
    out: list[int] = field(default_factory=list)
    text: str = ""


def fake_token(prompt: list[int], generated: list[int], vocab: int) -> int:
    """The deterministic 'model': ids 10..vocab-1, never a special token of the default tokenizer."""
    return 10 + (sum(prompt) * 7 + len(generated) * 13) % (vocab - 10)


class FakeEngine:
    def __init__(self, tokenizer, *, max_model_len: int = 512, max_num_seqs: int = 4,
                 block_size: int = 16, kv_blocks: int = 256, step_delay_s: float = 0.0):
        self.tokenizer = tokenizer
        self.model_name = "fake"
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.block_size = block_size
        self.kv_blocks_total = kv_blocks
        self.step_delay_s = step_delay_s
        self.vocab = len(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.waiting: deque[_Req] = deque()
        self.running: dict[str, _Req] = {}
        self.generated_total = self.prompt_total = 0
        self.fail_next_step = False
        self.thread_ids: set[int] = set()  # which threads called us (must be exactly one)

    def _blocks(self, r: _Req) -> int:
        return -(-(len(r.prompt) + len(r.out)) // self.block_size)

    def _touch(self) -> None:
        self.thread_ids.add(threading.get_ident())

    def add_request(self, request_id: str, prompt_token_ids: list[int], params) -> None:
        self._touch()
        if request_id in self.running or any(r.rid == request_id for r in self.waiting):
            raise ValueError(f"request_id={request_id!r}: duplicate")
        if len(prompt_token_ids) + params.max_tokens > self.max_model_len:
            raise ValueError(f"prompt_token_ids: {len(prompt_token_ids)} tokens + max_tokens "
                             f"exceed max_model_len={self.max_model_len}")
        self.waiting.append(_Req(request_id, list(prompt_token_ids), params))

    def abort_request(self, request_id: str) -> None:
        self._touch()
        self.running.pop(request_id, None)
        self.waiting = deque(r for r in self.waiting if r.rid != request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> list[FakeOutput]:
        self._touch()
        if self.fail_next_step:
            self.fail_next_step = False
            raise RuntimeError("injected step failure")
        while self.waiting and len(self.running) < self.max_num_seqs:
            r = self.waiting.popleft()
            self.running[r.rid] = r
            self.prompt_total += len(r.prompt)
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        outputs = []
        for r in list(self.running.values()):
            tok = fake_token(r.prompt, r.out, self.vocab)
            r.out.append(tok)
            self.generated_total += 1
            text = self.tokenizer.decode(r.out)
            delta, r.text = text[len(r.text):], text
            p = r.params
            finish = None
            if p.stop_token_ids and tok in p.stop_token_ids:
                finish = "stop"
            elif len(r.out) >= p.max_tokens:
                finish = "length"
            if finish:
                del self.running[r.rid]
            outputs.append(FakeOutput(r.rid, [tok], delta, list(r.out), r.text, finish is not None,
                                      finish, r.prompt, len(r.prompt)))
        return outputs

    def stats(self) -> dict:
        self._touch()
        return {
            "running": len(self.running), "waiting": len(self.waiting),
            "kv_blocks_total": self.kv_blocks_total,
            "kv_blocks_used": sum(self._blocks(r) for r in self.running.values()),
            "generated_tokens_total": self.generated_total,
            "prompt_tokens_total": self.prompt_total,
            "kernels": {"model.layers.0.mlp.down_proj": {"1-16": "sm90_w4a16_64x64",
                                                         "17-128": "sm90_w4a16_128x128"}},
        }
