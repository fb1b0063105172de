"""Paged attention: the per-step metadata, the Attention layer, the torch reference backend, and
the backend choice.

KV cache per layer: k_cache, v_cache of shape (num_blocks, block_size, num_kv_heads, head_dim).
A step's tokens are flat (T rows): first `num_decodes` sequences with one query token each, then
prefill chunks. Every backend (1) rotates q and k, (2) writes k, v to their slots, (3) attends each
query to its sequence's cached keys 0..seq_len-1 with the causal limit
key_pos <= seq_len - query_len + i, reading through the block table.

Backends: "torch" (reference; CPU and GPU; loops over sequences) and "triton" (CUDA: fused
rope+store, split-KV decode, paged prefill; layers/attention_triton.py). "auto" picks triton on CUDA
when triton imports, else torch. (FlashInfer is not wired in: it is not installed anywhere we run.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import env
from .rotary import RotaryEmbedding

__all__ = ["AttentionMetadata", "Attention", "TorchAttentionBackend", "make_attention_backend"]


@dataclass
class AttentionMetadata:
    """Device tensors (int32) + host values for one step. B = sequences, T = tokens."""

    positions: torch.Tensor  # (T,)
    slot_mapping: torch.Tensor  # (T,) cache slot of each token (-1: padding, not written)
    seq_lens: torch.Tensor  # (B,) tokens in the cache after this step
    query_start_loc: torch.Tensor  # (B+1,) token offsets of each sequence's queries
    block_tables: torch.Tensor  # (B, max_blocks_per_seq)
    num_decodes: int  # leading sequences with one query token
    max_query_len: int  # over the prefill sequences (0 when decode-only)
    num_splits: int = 1  # split-KV partitions of the decode kernel
    # host copies for the torch reference (None on the CUDA-graph path, which uses triton)
    seq_lens_host: list[int] | None = None
    query_start_loc_host: list[int] | None = None
    block_tables_host: list[list[int]] | None = None

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]


class TorchAttentionBackend:
    """Pure-torch paged attention, fp32 softmax. Exact reference; loops over sequences in Python."""

    name = "torch"

    def __init__(self, block_size: int):
        self.block_size = block_size

    def forward(self, qkv, positions, rotary: RotaryEmbedding, k_cache, v_cache, scale: float,
                meta: AttentionMetadata) -> torch.Tensor:
        nkv, d = k_cache.shape[2], k_cache.shape[3]
        nh = (qkv.shape[1] - 2 * nkv * d) // d
        q, k, v = qkv.split([nh * d, nkv * d, nkv * d], dim=1)
        q, k = rotary(positions, q, k)
        slots = meta.slot_mapping.long()
        valid = slots >= 0
        k_flat, v_flat = k_cache.view(-1, nkv, d), v_cache.view(-1, nkv, d)
        k_flat.index_copy_(0, slots[valid], k.view(-1, nkv, d)[valid].to(k_cache.dtype))
        v_flat.index_copy_(0, slots[valid], v.view(-1, nkv, d)[valid].to(v_cache.dtype))
        out = torch.empty_like(q)
        qsl, lens, tables = meta.query_start_loc_host, meta.seq_lens_host, meta.block_tables_host
        for i in range(len(lens)):
            s, e, n_ctx = qsl[i], qsl[i + 1], lens[i]
            if e == s:
                continue
            blocks = torch.tensor(tables[i][: -(-n_ctx // self.block_size)], device=q.device)
            keys = k_cache[blocks].reshape(-1, nkv, d)[:n_ctx].float()  # (L, nkv, D)
            vals = v_cache[blocks].reshape(-1, nkv, d)[:n_ctx].float()
            qi = q[s:e].view(e - s, nh, d).float()  # (n, H, D)
            group = nh // nkv
            keys = keys.repeat_interleave(group, dim=1)  # (L, H, D)
            vals = vals.repeat_interleave(group, dim=1)
            scores = torch.einsum("nhd,lhd->hnl", qi, keys) * scale  # (H, n, L)
            qpos = torch.arange(n_ctx - (e - s), n_ctx, device=q.device)
            mask = torch.arange(n_ctx, device=q.device)[None, :] > qpos[:, None]  # (n, L)
            scores.masked_fill_(mask[None], float("-inf"))
            probs = scores.softmax(dim=-1)
            out[s:e] = torch.einsum("hnl,lhd->nhd", probs, vals).reshape(e - s, nh * d).to(q.dtype)
        return out


def make_attention_backend(name: str, device: torch.device, block_size: int, **kwargs):
    """name: "auto" | "torch" | "triton" ("auto" defers to MINI_ENGINE_ATTENTION_BACKEND first)."""
    if name == "auto":
        name = env.attention_backend()
        if name not in ("auto", "torch", "triton"):
            raise ValueError(f"MINI_ENGINE_ATTENTION_BACKEND={name!r}: expected auto, torch or triton")
    if name not in ("auto", "torch", "triton"):
        raise ValueError(f"attention_backend={name!r}: expected auto, torch or triton")
    if name == "auto":
        try:
            import triton  # noqa: F401

            name = "triton" if device.type == "cuda" else "torch"
        except ImportError:
            name = "torch"
    if name == "torch":
        return TorchAttentionBackend(block_size)  # needs no kernel shapes
    if device.type != "cuda":
        raise ValueError("attention_backend='triton' needs a CUDA device")
    from .attention_triton import TritonAttentionBackend

    return TritonAttentionBackend(block_size, device=device, **kwargs)


class Attention(nn.Module):
    """One layer's attention over the paged cache; the backend object is shared by all layers."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, rotary: RotaryEmbedding):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim ** -0.5
        self.rotary = rotary
        self.backend = None  # set by the model runner together with the caches
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, qkv: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """qkv: (T, (H + 2*KVH) * D), the fused projection's output (the triton backend rotates q in
        place) -> (T, H*D)."""
        return self.backend.forward(qkv, positions, self.rotary, self.k_cache, self.v_cache,
                                    self.scale, meta)
