"""Pure-torch NVFP4 reference: quantize, dequantize and GEMMs. Ground truth for every kernel; CPU backend.

Quantization is FlashInfer's CUDA ``fp4_quantize`` algorithm in its exact-division form. Per block of
16 elements along K, all in fp32 with IEEE round-to-nearest-even:

    amax      = max |x|                                   (NaN ignored, as fmaxf / __hmax2 do)
    sf        = e4m3_rn_satfinite(global * (amax / 6))    (stored block scale)
    out_scale = 1 / (float(sf) / global), or 0 where sf == 0
    q         = e2m1_rne_satfinite(x * out_scale)         (|v| > 6 -> 6; NaN -> signed zero)

FlashInfer computes ``amax / 6`` and both reciprocals with ``rcp.approx.ftz``; that can move ``out_scale``
by an ulp and flip a rare element by one e2m1 step against this reference (rate measured by
``tests/nvfp4_kit/test_reference.py::test_approx_reciprocal_flip_rate``). FlashInfer also reads
``FLASHINFER_NVFP4_4OVER6*`` variables that change its numerics; comparisons need them unset.
e2m1 has no NaN encoding; we map NaN to a zero with the NaN's sign (Blackwell's hardware ``cvt`` was not
run here, so its NaN result is not claimed).
"""

from __future__ import annotations

import torch

from .formats import (
    BLOCK_SIZE,
    E2M1_MAX,
    E4M3_MAX,
    ScaleLayout,
    e2m1_to_float,
    pack_e2m1,
    swizzle_scales,
    unpack_e2m1,
    unswizzle_scales,
)

__all__ = [
    "global_scale_from_amax",
    "quantize",
    "dequantize",
    "quantize_dequantize",
    "gemm_w4a16",
    "gemm_w4a4",
    "quantize_weight",
]

# Midpoints between neighbouring e2m1 magnitudes. A tie rounds to the even code: 0.25 -> 0 (code 0),
# 0.75 -> 1.0 (code 2), 1.25 -> 1.0 (code 2), 1.75 -> 2.0 (code 4), 2.5 -> 2.0 (code 4),
# 3.5 -> 4.0 (code 6), 5.0 -> 4.0 (code 6). So ties go down at odd-ranked midpoints and up at others.
_ROUND_UP_STRICT = (0.25, 1.25, 2.5, 5.0)  # code += 1 only when |v| > midpoint
_ROUND_UP_AT_TIE = (0.75, 1.75, 3.5)  # code += 1 when |v| >= midpoint


def global_scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """Per-tensor global scale 448*6/amax as fp32 (inf where amax is 0, as a quantizer would compute)."""
    return (E4M3_MAX * E2M1_MAX) / amax.float()


def _e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """fp32 values -> e2m1 codes (uint8, 0..15), round-to-nearest-even, saturating to +-6."""
    mag = v.abs()
    code = torch.zeros_like(v, dtype=torch.uint8)
    for t in _ROUND_UP_STRICT:
        code += (mag > t).to(torch.uint8)
    for t in _ROUND_UP_AT_TIE:
        code += (mag >= t).to(torch.uint8)
    # NaN compares false everywhere -> magnitude code 0; the sign bit is kept.
    return code | (torch.signbit(v).to(torch.uint8) << 3)


def _as_global(global_scale: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    if isinstance(global_scale, torch.Tensor):
        if global_scale.numel() != 1:
            raise ValueError(f"global_scale: expected one element, got shape {tuple(global_scale.shape)}")
        return global_scale.reshape(()).to(device=device, dtype=torch.float32)
    return torch.tensor(float(global_scale), dtype=torch.float32, device=device)


def _check_x(x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"x: expected 2-D [M, K], got shape {tuple(x.shape)}")
    if x.shape[1] % BLOCK_SIZE:
        raise ValueError(f"x: K={x.shape[1]} must be a multiple of {BLOCK_SIZE}")
    if not x.is_floating_point():
        raise ValueError(f"x: dtype {x.dtype}, expected a floating dtype")


def _block_scales(x: torch.Tensor, global_scale: torch.Tensor | float):
    """Returns (x as fp32 blocks [M, K/16, 16], sf e4m3 [M, K/16], out_scale fp32 [M, K/16, 1])."""
    m, k = x.shape
    g = _as_global(global_scale, x.device)
    blocks = x.float().reshape(m, k // BLOCK_SIZE, BLOCK_SIZE)
    # NaN drops out of the block max (CUDA's fmaxf ignores it) while inf stays inf and saturates the
    # scale; nan_to_num would also turn inf into FLT_MAX, which a tiny global scale brings below 448.
    amax = torch.where(blocks.isnan(), 0.0, blocks.abs()).amax(dim=-1)
    # Divide by a tensor, not a Python scalar: on CUDA, torch turns `x / scalar` into
    # `x * (1 / scalar)`, which is not the IEEE division the contract specifies.
    sf_f32 = g * (amax / torch.full_like(amax, E2M1_MAX))
    # torch's fp32 -> e4m3fn cast rounds to nearest even but does not saturate: clamp first
    # (NaN stays NaN: only a non-finite global scale gets there).
    sf = sf_f32.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
    sf_back = sf.float()
    out_scale = torch.where(sf_back == 0, torch.zeros_like(sf_back), 1.0 / (sf_back / g))
    return blocks, sf, out_scale.unsqueeze(-1)


def quantize(
    x: torch.Tensor, global_scale: torch.Tensor | float, layout: str | ScaleLayout = "linear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (M, K) float, K % 16 == 0 -> (packed (M, K/2) uint8, scales e4m3 in `layout`)."""
    _check_x(x)
    layout = ScaleLayout.parse(layout)
    blocks, sf, out_scale = _block_scales(x, global_scale)
    codes = _e2m1_codes(blocks * out_scale).reshape(x.shape)
    packed = pack_e2m1(codes)
    if layout is ScaleLayout.SWIZZLED_128x4:
        sf = swizzle_scales(sf)
    return packed, sf


def dequantize(
    packed: torch.Tensor,
    scales: torch.Tensor,
    global_scale: torch.Tensor | float | None = None,
    layout: str | ScaleLayout = "linear",
) -> torch.Tensor:
    """(M, K/2) uint8 + e4m3 scales -> fp32 (M, K): e2m1 * sf / global (unscaled if global is None)."""
    if packed.dim() != 2 or packed.dtype != torch.uint8:
        raise ValueError(f"packed: expected 2-D uint8, got {packed.dtype} {tuple(packed.shape)}")
    m, k = packed.shape[0], packed.shape[1] * 2
    if k % BLOCK_SIZE:
        raise ValueError(f"packed: K={k} must be a multiple of {BLOCK_SIZE}")
    if ScaleLayout.parse(layout) is ScaleLayout.SWIZZLED_128x4:
        scales = unswizzle_scales(scales, m, k // BLOCK_SIZE)
    if tuple(scales.shape) != (m, k // BLOCK_SIZE):
        raise ValueError(f"scales: shape {tuple(scales.shape)}, expected {(m, k // BLOCK_SIZE)}")
    values = e2m1_to_float(unpack_e2m1(packed)).reshape(m, k // BLOCK_SIZE, BLOCK_SIZE)
    out = (values * scales.float().unsqueeze(-1)).reshape(m, k)
    if global_scale is not None:
        out = out / _as_global(global_scale, out.device)
    return out


def quantize_dequantize(x: torch.Tensor, global_scale: torch.Tensor | float) -> torch.Tensor:
    """x -> e2m1 * sf as fp32 (unscaled by global): exactly representable in bf16."""
    packed, sf = quantize(x, global_scale)
    return dequantize(packed, sf)


def _check_alpha(alpha: torch.Tensor, n: int) -> torch.Tensor:
    if alpha.numel() not in (1, n):
        raise ValueError(f"alpha: expected 1 or N={n} elements, got shape {tuple(alpha.shape)}")
    return alpha.float().reshape(1, -1)


def gemm_w4a16(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    alpha: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """x (M, K) bf16/fp16 @ NVFP4 weight (N, K/2) + scales (N, K/16) -> (M, N), fp32 math, times alpha."""
    w = dequantize(w_packed, w_scale)  # (N, K) fp32, unscaled
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"x: K={x.shape[-1]} does not match the weight's K={w.shape[1]}")
    return (x.float() @ w.T * _check_alpha(alpha, w.shape[0])).to(out_dtype)


def gemm_w4a4(
    x_packed: torch.Tensor,
    x_scale: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    alpha: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    x_scale_layout: str | ScaleLayout = "linear",
) -> torch.Tensor:
    """NVFP4 activations x NVFP4 weights as Blackwell's block-scaled MMA computes them; fp32 math."""
    x = dequantize(x_packed, x_scale, layout=x_scale_layout)
    w = dequantize(w_packed, w_scale)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x_packed: K={x.shape[1]} does not match the weight's K={w.shape[1]}")
    return (x @ w.T * _check_alpha(alpha, w.shape[0])).to(out_dtype)


def quantize_weight(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """A bf16/fp32 weight (N, K) -> ModelOpt NVFP4 tensors: weight, weight_scale, weight_scale_2."""
    amax = w.float().abs().amax()
    # 2688 / amax overflows fp32 below amax ~7.9e-36: the global scale would be inf and every block
    # scale inf * 0 = NaN. An all-zero weight gets global scale 1 (weight_scale_2 = 1, as a checkpoint
    # would hold), a tinier one the largest finite global scale.
    smallest = E4M3_MAX * E2M1_MAX / torch.finfo(torch.float32).max
    amax = torch.where(amax == 0, E4M3_MAX * E2M1_MAX, amax.clamp(min=smallest))
    global_scale = global_scale_from_amax(amax)
    packed, sf = quantize(w, global_scale)
    return {"weight": packed, "weight_scale": sf, "weight_scale_2": (1.0 / global_scale).reshape(())}
