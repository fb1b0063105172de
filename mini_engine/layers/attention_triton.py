"""Triton paged attention for CUDA: fused rope + KV store, split-KV decode (+ reduce), paged prefill.

Kernels (all read the cache through the block table; cache (num_blocks, BS, KVH, D), D a power of 2):

1. `_rope_store_kernel`, grid (T,): rotates the q and k heads of one token of the fused qkv row
   (rotate-half, fp32 math), writes q back in place and k, v into the token's cache slot. One launch
   replaces ~8 eager ops per layer, which matters at batch 1 where every launch is ~2-3 us of
   mostly-idle GPU even inside a CUDA graph.
2. `_decode_kernel`, grid (B, KVH, S): one program per (sequence, kv head, KV split) computes all
   G = H/KVH query heads of the group against its share of the keys (each key tile is read once
   for the group). Online softmax in base 2. S (splits) is chosen per batch size so that B*KVH*S
   covers the GPU twice (at batch 1 with 8 kv heads, 16 splits): a long context at small batch is
   otherwise read by only B*KVH SMs. With S == 1 it writes the output itself; else
   `_reduce_kernel`, grid (B, H), merges the splits' (max, sum, acc). S is static per batch size, so
   the launch is CUDA-graph safe; the split length adapts to each sequence's length in-kernel.
3. `_prefill_kernel`, grid (ceil(max_q/BM), B_prefill, H): flash-attention over the paged cache for
   the chunk's queries, causal with the chunk's offset (key_pos <= seq_len - q_len + i).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = ["TritonAttentionBackend", "rope_store", "paged_decode", "paged_prefill"]

_LOG2E = 1.4426950408889634


@triton.jit
def _rope_store_kernel(qkv_ptr, stride_qkv, pos_ptr, slot_ptr, cos_sin_ptr, k_cache_ptr, v_cache_ptr,
                       H: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr,
                       BLOCK_H: tl.constexpr, BLOCK_KVH: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    HALF: tl.constexpr = D // 2
    half = tl.arange(0, HALF)[None, :]
    pos = tl.load(pos_ptr + t).to(tl.int64)
    cos = tl.load(cos_sin_ptr + pos * D + half)
    sin = tl.load(cos_sin_ptr + pos * D + HALF + half)
    row = qkv_ptr + t * stride_qkv
    # q heads, in place
    h = tl.arange(0, BLOCK_H)[:, None]
    hm = h < H
    q1 = tl.load(row + h * D + half, mask=hm, other=0.0).to(tl.float32)
    q2 = tl.load(row + h * D + HALF + half, mask=hm, other=0.0).to(tl.float32)
    tl.store(row + h * D + half, (q1 * cos - q2 * sin).to(qkv_ptr.dtype.element_ty), mask=hm)
    tl.store(row + h * D + HALF + half, (q2 * cos + q1 * sin).to(qkv_ptr.dtype.element_ty), mask=hm)
    # k (rotated) and v into the cache slot; slot -1 marks CUDA-graph padding
    slot = tl.load(slot_ptr + t).to(tl.int64)
    kh = tl.arange(0, BLOCK_KVH)[:, None]
    km = (kh < KVH) & (slot >= 0)
    k_row = row + H * D
    k1 = tl.load(k_row + kh * D + half, mask=km, other=0.0).to(tl.float32)
    k2 = tl.load(k_row + kh * D + HALF + half, mask=km, other=0.0).to(tl.float32)
    dst = slot * (KVH * D) + kh * D
    tl.store(k_cache_ptr + dst + half, (k1 * cos - k2 * sin).to(k_cache_ptr.dtype.element_ty), mask=km)
    tl.store(k_cache_ptr + dst + HALF + half, (k2 * cos + k1 * sin).to(k_cache_ptr.dtype.element_ty),
             mask=km)
    d = tl.arange(0, D)[None, :]
    v = tl.load(k_row + KVH * D + kh * D + d, mask=km, other=0.0)
    tl.store(v_cache_ptr + dst + d, v.to(v_cache_ptr.dtype.element_ty), mask=km)


@triton.jit
def _decode_kernel(q_ptr, stride_q, k_cache_ptr, v_cache_ptr, bt_ptr, stride_bt, seq_lens_ptr,
                   out_ptr, stride_o, part_acc_ptr, part_m_ptr, part_l_ptr, scale_log2,
                   H: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
                   BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    G: tl.constexpr = H // KVH
    seq_len = tl.load(seq_lens_ptr + b)
    per = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * per
    end = tl.minimum(start + per, seq_len)
    g = tl.arange(0, BLOCK_G)
    gm = g < G
    heads = kvh * G + g
    d = tl.arange(0, D)
    q = tl.load(q_ptr + b * stride_q + heads[:, None] * D + d[None, :], mask=gm[:, None], other=0.0)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nm = n < end
        blk = tl.load(bt_ptr + b * stride_bt + n // BS, mask=nm, other=0).to(tl.int64)
        off = (blk * BS + n % BS)[:, None] * (KVH * D) + kvh * D + d[None, :]
        k = tl.load(k_cache_ptr + off, mask=nm[:, None], other=0.0)
        # (BLOCK_G, BLOCK_N), log2 domain
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        s = tl.where(nm[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        v = tl.load(v_cache_ptr + off, mask=nm[:, None], other=0.0)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    if NUM_SPLITS == 1:
        o = acc / l_i[:, None]
        tl.store(out_ptr + b * stride_o + heads[:, None] * D + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=gm[:, None])
    else:
        part = (b * H + heads) * NUM_SPLITS + split  # (BLOCK_G,)
        tl.store(part_acc_ptr + part[:, None] * D + d[None, :], acc, mask=gm[:, None])
        tl.store(part_m_ptr + part, m_i, mask=gm)
        tl.store(part_l_ptr + part, l_i, mask=gm)


@triton.jit
def _reduce_kernel(part_acc_ptr, part_m_ptr, part_l_ptr, out_ptr, stride_o,
                   H: tl.constexpr, D: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    sm = s < NUM_SPLITS
    base = (b * H + h) * NUM_SPLITS
    m = tl.load(part_m_ptr + base + s, mask=sm, other=float("-inf"))
    lse = tl.load(part_l_ptr + base + s, mask=sm, other=0.0)  # per-split softmax denominators
    m_max = tl.max(m, 0)
    w = tl.where(m > float("-inf"), tl.exp2(m - m_max), 0.0)
    d = tl.arange(0, D)
    acc = tl.load(part_acc_ptr + (base + s)[:, None] * D + d[None, :], mask=sm[:, None], other=0.0)
    o = tl.sum(acc * w[:, None], 0) / tl.sum(lse * w, 0)
    tl.store(out_ptr + b * stride_o + h * D + d, o.to(out_ptr.dtype.element_ty))


@triton.jit
def _prefill_kernel(q_ptr, stride_q, k_cache_ptr, v_cache_ptr, bt_ptr, stride_bt, seq_lens_ptr,
                    qsl_ptr, out_ptr, stride_o, scale_log2,
                    H: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    mt = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2)
    kvh = h // (H // KVH)
    q_start = tl.load(qsl_ptr + b)
    q_len = tl.load(qsl_ptr + b + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + b)
    prefix = seq_len - q_len
    m = mt * BLOCK_M + tl.arange(0, BLOCK_M)
    mm = m < q_len
    qpos = prefix + m
    d = tl.arange(0, D)
    rows = (q_start + m).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * stride_q + h * D + d[None, :], mask=mm[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    # keys up to the tile's last query position; 0 for a tile past this sequence's queries
    hi = tl.where(mt * BLOCK_M < q_len, tl.minimum(seq_len, prefix + (mt + 1) * BLOCK_M), 0)
    for n0 in range(0, hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nm = n < seq_len
        blk = tl.load(bt_ptr + b * stride_bt + n // BS, mask=nm, other=0).to(tl.int64)
        off = (blk * BS + n % BS)[:, None] * (KVH * D) + kvh * D + d[None, :]
        k = tl.load(k_cache_ptr + off, mask=nm[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        s = tl.where((n[None, :] <= qpos[:, None]) & nm[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        v = tl.load(v_cache_ptr + off, mask=nm[:, None], other=0.0)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    o = acc / l_i[:, None]
    tl.store(out_ptr + rows[:, None] * stride_o + h * D + d[None, :], o.to(out_ptr.dtype.element_ty),
             mask=mm[:, None])


def rope_store(qkv, positions, slot_mapping, cos_sin, k_cache, v_cache, num_heads: int) -> None:
    """In place: rotates q (and k) of qkv (T, (H+2KVH)*D) and writes k, v to their cache slots."""
    nkv, d = k_cache.shape[2], k_cache.shape[3]
    _rope_store_kernel[(qkv.shape[0],)](
        qkv, qkv.stride(0), positions, slot_mapping, cos_sin, k_cache, v_cache,
        H=num_heads, KVH=nkv, D=d, BLOCK_H=triton.next_power_of_2(num_heads),
        BLOCK_KVH=triton.next_power_of_2(nkv), num_warps=4,
    )


def _dot_precision(q: torch.Tensor) -> str:
    """fp32 caches (the fp32 check engine) must multiply in IEEE fp32: Triton's default for fp32
    tl.dot is TF32 (10-bit mantissa, ~1e-3 relative), which W4A4 activations' quantizers amplify."""
    return "ieee" if q.dtype == torch.float32 else "tf32"


def paged_decode(q, k_cache, v_cache, block_tables, seq_lens, out, scale: float, num_splits: int,
                 partials: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> None:
    """q: (B, H*D) strided rows; out: (B, H*D). partials: fp32 buffers when num_splits > 1."""
    b, nkv, d, bs = seq_lens.shape[0], k_cache.shape[2], k_cache.shape[3], k_cache.shape[1]
    nh = out.shape[1] // d
    acc, pm, pl = partials if num_splits > 1 else (out, out, out)  # unused when num_splits == 1
    _decode_kernel[(b, nkv, num_splits)](
        q, q.stride(0), k_cache, v_cache, block_tables, block_tables.stride(0), seq_lens,
        out, out.stride(0), acc, pm, pl, scale * _LOG2E,
        H=nh, KVH=nkv, D=d, BS=bs, BLOCK_G=max(16, triton.next_power_of_2(nh // nkv)),
        BLOCK_N=64, NUM_SPLITS=num_splits, DOT_PRECISION=_dot_precision(q), num_warps=4,
    )
    if num_splits > 1:
        _reduce_kernel[(b, nh)](acc, pm, pl, out, out.stride(0), H=nh, D=d, NUM_SPLITS=num_splits,
                                BLOCK_S=triton.next_power_of_2(num_splits), num_warps=4)


def paged_prefill(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, out, scale: float,
                  max_query_len: int) -> None:
    """q/out rows are addressed by query_start_loc (absolute token offsets); B = len(seq_lens)."""
    b, nkv, d, bs = seq_lens.shape[0], k_cache.shape[2], k_cache.shape[3], k_cache.shape[1]
    nh = out.shape[1] // d
    block_m = 64
    _prefill_kernel[(triton.cdiv(max_query_len, block_m), b, nh)](
        q, q.stride(0), k_cache, v_cache, block_tables, block_tables.stride(0), seq_lens,
        query_start_loc, out, out.stride(0), scale * _LOG2E,
        H=nh, KVH=nkv, D=d, BS=bs, BLOCK_M=block_m, BLOCK_N=64, DOT_PRECISION=_dot_precision(q),
        num_warps=4, num_stages=2,
    )


class TritonAttentionBackend:
    name = "triton"
    max_splits = 16

    def __init__(self, block_size: int, device: torch.device, num_heads: int, num_kv_heads: int,
                 head_dim: int, max_decode_seqs: int):
        if head_dim & (head_dim - 1) or head_dim < 16:
            raise ValueError(f"head_dim={head_dim}: the Triton backend needs a power of 2 >= 16")
        self.block_size = block_size
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        props = torch.cuda.get_device_properties(device)
        self.target_programs = 2 * props.multi_processor_count
        most = max(b * self.num_splits(b) for b in range(1, max_decode_seqs + 1))
        rows = most * num_heads
        self.partials = (
            torch.empty(rows, head_dim, dtype=torch.float32, device=device),
            torch.empty(rows, dtype=torch.float32, device=device),
            torch.empty(rows, dtype=torch.float32, device=device),
        )

    def num_splits(self, num_decodes: int) -> int:
        """KV splits for a decode batch: enough programs to fill the GPU twice, at most 16."""
        want = math.ceil(self.target_programs / max(1, num_decodes * self.num_kv_heads))
        return max(1, min(self.max_splits, want))

    def forward(self, qkv, positions, rotary, k_cache, v_cache, scale: float, meta) -> torch.Tensor:
        nh, d = self.num_heads, self.head_dim
        rope_store(qkv, positions, meta.slot_mapping, rotary.cos_sin, k_cache, v_cache, nh)
        q = qkv[:, : nh * d]
        out = torch.empty(qkv.shape[0], nh * d, dtype=qkv.dtype, device=qkv.device)
        nd = meta.num_decodes
        if nd:
            paged_decode(q[:nd], k_cache, v_cache, meta.block_tables[:nd], meta.seq_lens[:nd],
                         out[:nd], scale, meta.num_splits, self.partials)
        if nd < meta.num_seqs:
            paged_prefill(q, k_cache, v_cache, meta.block_tables[nd:], meta.seq_lens[nd:],
                          meta.query_start_loc[nd:], out, scale, meta.max_query_len)
        return out
