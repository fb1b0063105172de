"""Sampler: next token per row from fp32 logits with per-request temperature, top-k, top-p and seed.

Random rows use the exponential-race form of categorical sampling: argmax(p / q), q ~ Exp(1), which
needs no cumulative sum and is exactly a draw from p. A request with a seed draws its q from its own
torch.Generator, one draw per generated token, so its output depends only on its own logits and
seed: it is reproducible across batch compositions and resumes identically after preemption.
All-greedy batches (the common serving case) cost one argmax.
"""

from __future__ import annotations

import torch

from ..sampling_params import SamplingParams

__all__ = ["Sampler"]


class Sampler:
    def __init__(self, device: torch.device, seed: int):
        self.device = device
        self.generator = torch.Generator(device=device)  # for random rows without a seed
        self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, params: list[SamplingParams],
                 generators: list[torch.Generator | None]) -> torch.Tensor:
        """logits: (S, V) fp32 -> (S,) int64 token ids."""
        greedy_ids = logits.argmax(dim=-1)
        if all(p.greedy for p in params):
            return greedy_ids
        dev = logits.device
        temps = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params],
                             dtype=torch.float32, device=dev)
        x = logits / temps[:, None]
        if any(p.uses_top_k or p.uses_top_p for p in params):
            x = self._filter(x, params)
        probs = x.softmax(dim=-1)
        q = torch.empty_like(probs)
        seeded = [(i, g) for i, (p, g) in enumerate(zip(params, generators, strict=True))
                  if g is not None and not p.greedy]
        if len(seeded) < len(params):  # one launch for all unseeded rows
            q.exponential_(generator=self.generator)
        for i, g in seeded:  # a seeded request draws from its own stream
            q[i].exponential_(generator=g)
        sampled = (probs / q).argmax(dim=-1)
        greedy = torch.tensor([p.greedy for p in params], device=dev)
        return torch.where(greedy, greedy_ids, sampled)

    @staticmethod
    def _filter(x: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """top-k, then top-p over what remains (vLLM's order); at least one token always survives."""
        vocab = x.shape[-1]
        dev = x.device
        sorted_x, order = x.sort(dim=-1, descending=True)
        ks = torch.tensor([min(p.top_k, vocab) if p.uses_top_k else vocab for p in params], device=dev)
        ranks = torch.arange(vocab, device=dev)[None, :]
        sorted_x = sorted_x.masked_fill(ranks >= ks[:, None], float("-inf"))
        ps = torch.tensor([p.top_p if p.uses_top_p else 1.0 for p in params], device=dev)
        probs = sorted_x.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass strictly above each token
        sorted_x = sorted_x.masked_fill((before >= ps[:, None]) & (ranks > 0), float("-inf"))
        return torch.full_like(x, float("-inf")).scatter(1, order, sorted_x)
