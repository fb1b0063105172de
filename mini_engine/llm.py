"""LLM: the offline API, shaped like vLLM's: LLM(model, **engine options).generate(prompts, params)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import EngineConfig
from .engine.llm_engine import LLMEngine
from .sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "GenerationOutput"]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class GenerationOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


class LLM:
    """Offline batch generation. Engine options are EngineConfig's fields (e.g. load_format="dummy",
    quantization="nvfp4", max_num_seqs=64, enforce_eager=True)."""

    def __init__(self, model: str, **options):
        fields = {f.name for f in dataclasses.fields(EngineConfig)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f"{unknown[0]}: not an engine option; valid: {', '.join(sorted(fields))}")
        self.engine = LLMEngine(EngineConfig(model=model, **options))
        self.tokenizer = self.engine.tokenizer
        self._counter = 0

    def _prompt_ids(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer(prompt).input_ids  # adds BOS, as vLLM does
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return prompt.get("prompt"), list(prompt["prompt_token_ids"])
        raise ValueError(
            f"prompts: expected str or {{'prompt_token_ids': [...]}}, got {type(prompt).__name__}")

    def generate(self, prompts, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[GenerationOutput]:
        """Generates for every prompt (continuous batching) and returns results in prompt order."""
        single = isinstance(prompts, (str, dict))
        prompts = [prompts] if single else list(prompts)
        params = sampling_params if sampling_params is not None else SamplingParams()
        params = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"sampling_params: {len(params)} given for {len(prompts)} prompts")
        staged = [self._prompt_ids(p) for p in prompts]  # validate everything before queueing
        ids: list[str] = []
        final = {}
        from tqdm import tqdm

        try:
            for (_, prompt_ids), p in zip(staged, params, strict=False):
                self._counter += 1
                rid = f"llm-{self._counter}"
                self.engine.add_request(rid, prompt_ids, p)
                ids.append(rid)
            with tqdm(total=len(ids), desc="generating", disable=not use_tqdm) as bar:
                while len(final) < len(ids):
                    for out in self.engine.step():
                        if out.finished:
                            final[out.request_id] = out
                            bar.update(1)
        except BaseException:
            # nothing leaks: a bad prompt, a failing step or Ctrl-C drops every request of this call
            for rid in ids:
                self.engine.abort_request(rid)
            raise
        results = []
        for rid, (text, prompt_ids) in zip(ids, staged, strict=False):
            o = final[rid]
            results.append(GenerationOutput(rid, text, prompt_ids,
                                            [CompletionOutput(0, o.text, o.token_ids, o.finish_reason)]))
        return results
