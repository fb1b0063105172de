"""Token embedding and the LM head (bf16 by default: ModelOpt excludes lm_head from NVFP4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VocabEmbedding", "LMHead"]


class VocabEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size, dtype=dtype, device=device),
                                   requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: (T,) int32/int64 -> (T, hidden)."""
        return F.embedding(input_ids, self.weight)


class LMHead(nn.Module):
    """logits = hidden @ W.T in fp32. `linear` is a layers.linear.Linear (bf16 or NVFP4) or, for tied
    embeddings, None (then the embedding's weight is used)."""

    def __init__(self, linear: nn.Module | None, embedding: VocabEmbedding):
        super().__init__()
        self.linear = linear
        self.embedding = embedding if linear is None else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (S, hidden) rows to sample from -> (S, vocab) float32."""
        if self.linear is None:
            return F.linear(hidden, self.embedding.weight).float()
        return self.linear(hidden).float()
