"""The NVFP4 format, documented once: e2m1 values, nibble packing, e4m3 block scales and their layouts.

NVFP4 stores a tensor of shape [rows, K] as three parts:

* values: 4-bit e2m1 codes (1 sign, 2 exponent, 1 mantissa bit; no Inf/NaN), packed two per byte
  along K into uint8 [rows, K/2]. Element 2i sits in the LOW nibble, element 2i+1 in the HIGH nibble.
  Magnitude codes 0..7 mean {0, 0.5, 1, 1.5, 2, 3, 4, 6}; bit 3 is the sign.
* block scales: one float8_e4m3fn per 16 consecutive elements along K ("linear": [rows, K/16]);
  always >= 0, so e4m3 and ue4m3 agree.
* a global fp32 scale. The quantizer multiplies by ``global_scale = 448 * 6 / amax`` (the e4m3 maximum
  times the e2m1 maximum), so that the block scales use e4m3's range. Checkpoints (ModelOpt) store the
  inverse: ``weight_scale_2`` and ``input_scale`` = amax / (448 * 6). A GEMM therefore multiplies its
  fp32 accumulator by ``alpha = input_scale * weight_scale_2`` (W4A4) or ``weight_scale_2`` (W4A16).

Scale layouts:

* ``linear``: float8_e4m3fn [rows, K/16], row-major.
* ``swizzled_128x4``: what Blackwell's block-scaled MMA reads (cuBLASLt / CUTLASS "128x4" atoms).
  Rows are padded to a multiple of 128 and scale columns to Kc = round_up(K/16, 4). Each 128x4 tile
  of scales is one 512-byte atom stored as [32 rows][4 row-groups][4 columns]; atoms are ordered
  row-tile-major. The byte offset of scale (m, kb) is
  ``((m // 128) * (Kc // 4) + kb // 4) * 512 + (m % 32) * 16 + ((m % 128) // 32) * 4 + kb % 4``.
  We store it as a 2-D tensor [round_up(rows, 128), Kc] whose flat bytes follow that order; padding is 0
  (stale padding silently corrupts results: FlashInfer issue 3057).

This module has no GPU code; everything runs on CPU or GPU tensors alike.
"""

from __future__ import annotations

import enum

import torch

__all__ = [
    "BLOCK_SIZE",
    "E2M1_MAX",
    "E4M3_MAX",
    "E2M1_VALUES",
    "ScaleLayout",
    "round_up",
    "pack_e2m1",
    "unpack_e2m1",
    "e2m1_to_float",
    "scale_shape",
    "swizzled_offset",
    "swizzle_scales",
    "unswizzle_scales",
]

BLOCK_SIZE = 16  # elements per e4m3 block scale, along K
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


class ScaleLayout(str, enum.Enum):
    """How block scales are laid out in memory."""

    LINEAR = "linear"
    SWIZZLED_128x4 = "swizzled_128x4"

    @classmethod
    def parse(cls, value: str | ScaleLayout) -> ScaleLayout:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ValueError(f"layout={value!r} is not a scale layout; valid: {valid}") from None


def round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """codes: (..., K) uint8 in 0..15 -> (..., K/2) uint8, element 2i in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"codes: last dim {codes.shape[-1]} must be even to pack e2m1 pairs")
    codes = codes.to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """packed: (..., K/2) uint8 -> (..., K) uint8 codes in 0..15."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed: dtype {packed.dtype}, expected torch.uint8")
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def e2m1_to_float(codes: torch.Tensor) -> torch.Tensor:
    """codes: uint8 in 0..15 -> float32 values (-0.0 for code 8).

    Decoded arithmetically, not through a lookup table: a table would be a host->device copy on
    every call, which CUDA-graph capture forbids.
    """
    c = codes.to(torch.int32)
    exponent, mantissa = (c >> 1) & 3, (c & 1).to(torch.float32)
    normal = (1.0 + 0.5 * mantissa) * torch.exp2((exponent - 1).to(torch.float32))
    magnitude = torch.where(exponent == 0, 0.5 * mantissa, normal)  # exponent 0: subnormal 0 / 0.5
    return torch.where((c & 8) != 0, -magnitude, magnitude)


def scale_shape(rows: int, k: int, layout: str | ScaleLayout) -> tuple[int, int]:
    """Shape of the block-scale tensor of a [rows, k] NVFP4 tensor in the given layout."""
    layout = ScaleLayout.parse(layout)
    if layout is ScaleLayout.LINEAR:
        return rows, k // BLOCK_SIZE
    return round_up(rows, 128), round_up(k // BLOCK_SIZE, 4)


def swizzled_offset(m: torch.Tensor | int, kb: torch.Tensor | int, kc: int):
    """Byte offset of block scale (row m, scale column kb) in the swizzled_128x4 layout (Kc columns)."""
    return ((m // 128) * (kc // 4) + kb // 4) * 512 + (m % 32) * 16 + ((m % 128) // 32) * 4 + kb % 4


def _as_bytes(scales: torch.Tensor) -> torch.Tensor:
    if scales.dtype == torch.float8_e4m3fn:
        return scales.view(torch.uint8)
    if scales.dtype == torch.uint8:
        return scales
    raise ValueError(f"scales: dtype {scales.dtype}, expected torch.float8_e4m3fn (or its uint8 bytes)")


def swizzle_scales(scales: torch.Tensor) -> torch.Tensor:
    """scales: (rows, K/16) e4m3 linear -> (round_up(rows,128), round_up(K/16,4)) e4m3 swizzled_128x4."""
    if scales.dim() != 2:
        raise ValueError(f"scales: expected 2-D [rows, K/16], got shape {tuple(scales.shape)}")
    raw = _as_bytes(scales)
    rows, kb = raw.shape
    padded_rows, kc = round_up(rows, 128), round_up(kb, 4)
    padded = torch.zeros(padded_rows, kc, dtype=torch.uint8, device=raw.device)
    padded[:rows, :kb] = raw
    # [row_tile, 4 row-groups of 32, 32, col_tile, 4] -> [row_tile, col_tile, 32, 4 row-groups, 4]
    tiles = padded.view(padded_rows // 128, 4, 32, kc // 4, 4).permute(0, 3, 2, 1, 4)
    out = tiles.contiguous().view(padded_rows, kc)
    return out.view(torch.float8_e4m3fn) if scales.dtype == torch.float8_e4m3fn else out


def unswizzle_scales(swizzled: torch.Tensor, rows: int, k_blocks: int) -> torch.Tensor:
    """Inverse of swizzle_scales: (round_up(rows,128), Kc) swizzled -> (rows, k_blocks) linear."""
    raw = _as_bytes(swizzled)
    padded_rows, kc = round_up(rows, 128), round_up(k_blocks, 4)
    if raw.numel() != padded_rows * kc:
        raise ValueError(
            f"swizzled: {raw.numel()} bytes, expected {padded_rows}x{kc} for rows={rows}, "
            f"k_blocks={k_blocks}"
        )
    tiles = raw.reshape(padded_rows // 128, kc // 4, 32, 4, 4).permute(0, 3, 2, 1, 4)
    out = tiles.contiguous().view(padded_rows, kc)[:rows, :k_blocks].contiguous()
    return out.view(torch.float8_e4m3fn) if swizzled.dtype == torch.float8_e4m3fn else out
