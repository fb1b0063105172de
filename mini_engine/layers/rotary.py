"""Rotary position embedding (rotate-half form, as HF Llama) with Llama-3 frequency scaling.

The cos/sin table is precomputed once for positions [0, max_len): row p = [cos(p*f) | sin(p*f)] over
the head_dim/2 frequencies f, fp32. The torch path applies it here; the Triton attention backend
fuses the same rotation with the KV-cache write (layers/attention_triton.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["RotaryEmbedding", "rope_inv_freq"]


def rope_inv_freq(head_dim: int, base: float, rope_scaling: dict | None) -> torch.Tensor:
    """Inverse frequencies [head_dim/2], fp32, with "llama3" scaling when configured."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
    if kind in (None, "default"):
        return inv_freq
    if kind != "llama3":
        raise ValueError(f"config.json rope_scaling: rope_type={kind!r} is not supported (llama3, default)")
    factor = float(rope_scaling["factor"])
    low, high = float(rope_scaling["low_freq_factor"]), float(rope_scaling["high_freq_factor"])
    old_len = float(rope_scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed down by `factor`, short ones kept, the band between interpolated.
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_len: int, base: float, rope_scaling: dict | None,
                 device: torch.device):
        super().__init__()
        self.head_dim = head_dim
        inv_freq = rope_inv_freq(head_dim, base, rope_scaling)
        freqs = torch.arange(max_len, dtype=torch.float32)[:, None] * inv_freq[None, :]
        self.register_buffer(
            "cos_sin", torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(device), persistent=False
        )  # (max_len, head_dim)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """q: (T, H*D), k: (T, KVH*D) -> rotated copies, same shapes and dtype."""
        half = self.head_dim // 2
        cs = self.cos_sin[positions.long()]  # (T, D)
        cos, sin = cs[:, None, :half], cs[:, None, half:]

        def rotate(x: torch.Tensor) -> torch.Tensor:
            x = x.view(x.shape[0], -1, self.head_dim).float()  # (T, heads, D)
            x1, x2 = x[..., :half], x[..., half:]
            return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

        return rotate(q).flatten(1).to(q.dtype), rotate(k).flatten(1).to(k.dtype)
