"""LLMEngine: requests in, incremental outputs out. step() = schedule -> run the model -> update.

Single-threaded by contract: the server's one engine thread calls add_request/abort_request/step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import EngineConfig
from ..sampling_params import SamplingParams
from ..tokenizer import IncrementalDetokenizer, load_tokenizer
from .block_manager import BlockManager
from .model_runner import ModelRunner
from .scheduler import Scheduler
from .sequence import Sequence

__all__ = ["LLMEngine", "RequestOutput"]

log = logging.getLogger("mini_engine")


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]  # sampled this step
    new_text: str  # text delta (incremental detokenization; stop strings cut off)
    token_ids: list[int]  # all generated tokens: filled in the final output only ([] before)
    text: str  # all generated text: filled in the final output only ("" before)
    finished: bool
    finish_reason: str | None  # None | "stop" | "length" | "abort"
    prompt_token_ids: list[int] = field(default_factory=list)
    num_prompt_tokens: int = 0


class LLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.runner = ModelRunner(config)
        self.tokenizer = self._load_tokenizer()
        self.model_name = config.served_model_name or config.model
        self.max_model_len = self.runner.max_model_len
        self.vocab_size = self.runner.model_config.vocab_size
        self.block_manager = BlockManager(self.runner.num_kv_blocks, config.block_size,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs,
                                   config.max_num_batched_tokens, self.max_model_len)
        eos = set(self.runner.model_config.eos_token_ids)
        if getattr(self.tokenizer, "eos_token_id", None) is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos)
        self.seqs: dict[str, Sequence] = {}
        self.prompt_tokens_total = 0
        self.generated_tokens_total = 0
        # Which NVFP4 kernel serves which layer shape and M range, and why (users of vLLM/SGLang
        # cannot tell which NVFP4 kernel ran; here it is in the load log and in /metrics).
        from nvfp4_kit import dispatch

        log.info("%s", dispatch.describe_text(config.max_num_batched_tokens))

    def _load_tokenizer(self):
        c = self.config
        if c.tokenizer is not None:
            return load_tokenizer(c.tokenizer)
        if self.runner.checkpoint_dir is not None:
            return load_tokenizer(self.runner.checkpoint_dir)
        from ..presets import preset_tokenizer

        return preset_tokenizer(Path(c.model).name)

    # ------------------------------------------------------------------------------------ requests
    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Queues a request. ValueError (naming the field) for a duplicate or empty id, bad token ids,
        a prompt that leaves no room to generate within max_model_len, or params of the wrong type."""
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id={request_id!r}: must be a non-empty string")
        if request_id in self.seqs:
            raise ValueError(f"request_id={request_id!r}: a request with this id is already running")
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params: expected SamplingParams, got {type(params).__name__}")
        ids = list(prompt_token_ids) if isinstance(prompt_token_ids, (list, tuple)) else None
        if not ids:
            raise ValueError("prompt_token_ids: expected a non-empty list of token ids")
        bad = next((t for t in ids if not isinstance(t, int) or isinstance(t, bool)
                    or not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"prompt_token_ids: {bad!r} is not a token id in [0, {self.vocab_size})")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt_token_ids: {len(ids)} tokens; max_model_len={self.max_model_len} "
                             "leaves no room to generate (the prompt must be shorter)")
        stop = set(params.stop_token_ids or ())
        if not params.ignore_eos:
            stop |= self.eos_token_ids
        seq = Sequence(request_id, ids, params, stop_ids=frozenset(stop))
        if params.seed is not None and not params.greedy:
            seq.generator = torch.Generator(device=self.runner.device)
            seq.generator.manual_seed(params.seed)
        seq.detokenizer = IncrementalDetokenizer(self.tokenizer)
        self.seqs[request_id] = seq
        self.scheduler.add(seq)
        self.prompt_tokens_total += len(ids)

    def abort_request(self, request_id: str) -> None:
        """Stops a request and frees its KV blocks; an unknown (or finished) id is a no-op."""
        seq = self.seqs.pop(request_id, None)
        if seq is not None:
            self.scheduler.abort(seq)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ------------------------------------------------------------------------------------ step
    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        sampled = self.runner.execute(batch)
        self.scheduler.update(batch, sampled)
        outputs, finished = [], []
        for seq, token in zip(batch.seqs, sampled, strict=False):
            if token is None:
                continue
            self.generated_tokens_total += 1
            delta = self._detokenize(seq, token)
            if seq.finish_reason is not None:
                finished.append(seq)
                self.seqs.pop(seq.request_id, None)
            done = seq.finish_reason is not None
            # The full token list and text are copied only into the final output: per step and
            # sequence the hot path builds O(1) objects (streaming uses new_text / new_token_ids).
            outputs.append(RequestOutput(
                seq.request_id, [token], delta,
                seq.output_token_ids if done else [],
                seq.detokenizer.text[:seq.detokenizer.emitted] if done else "",
                done, seq.finish_reason, seq.prompt_token_ids, seq.num_prompt_tokens,
            ))
        self.scheduler.finish(finished)
        return outputs

    def _detokenize(self, seq: Sequence, token: int) -> str:
        """Text delta for `token`. Ends the request at a stop string (cut from the text); while stop
        strings are set, holds back the last len(longest stop) - 1 characters, which could still turn
        out to start one, so streamed text never has to be taken back."""
        detok = seq.detokenizer
        stops = seq.params.stop
        if seq.finish_reason != "stop":  # EOS / stop_token_ids: that token adds no text
            detok.add(token)
            if stops:
                start = max(0, detok.emitted - max(map(len, stops)))
                hits = [i for i in (detok.text.find(s, start) for s in stops) if i != -1]
                if hits:
                    detok.text = detok.text[:min(hits)]
                    seq.finish_reason = "stop"
        hold = max(map(len, stops)) - 1 if stops and seq.finish_reason is None else 0
        end = max(detok.emitted, len(detok.text) - hold)
        delta = detok.text[detok.emitted:end]
        detok.emitted = end
        return delta

    def stats(self) -> dict:
        from nvfp4_kit import dispatch

        bm = self.block_manager
        return {
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
            "kv_blocks_total": bm.num_blocks,
            "kv_blocks_used": bm.num_used_blocks,
            "generated_tokens_total": self.generated_tokens_total,
            "prompt_tokens_total": self.prompt_tokens_total,
            "prefix_cache_hit_tokens": self.scheduler.num_cached_prompt_tokens,
            "preemptions": self.scheduler.num_preemptions,
            "kernels": dispatch.describe(self.config.max_num_batched_tokens),
        }
