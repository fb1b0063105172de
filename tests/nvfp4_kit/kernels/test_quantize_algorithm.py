"""CPU check of the quantize kernel's arithmetic (quantize_ptx.py) against the reference.

The kernel cannot run without a GPU, so this emulates, op for op in IEEE fp32 (numpy), the PTX
sequence it executes: packed-16-bit abs/NaN->0/max, div.rn/mul.rn/e4m3 satfinite, the magic-add
e2m1 rounding and the prmt sign gather. The GPU tests then check the PTX transcription itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nvfp4_kit import reference
from nvfp4_kit.formats import e2m1_to_float, pack_e2m1
from nvfp4_kit.kernels.quantize_ptx import magic_divisor

F32 = np.float32


def _bits(a: np.ndarray) -> np.ndarray:
    return a.astype(F32).view(np.uint32)


def _f(b: np.ndarray) -> np.ndarray:
    return b.astype(np.uint32).view(F32)


def _prmt(a: int, b: int, sel: int) -> int:
    """PTX prmt.b32 default mode: byte i of d = byte (sel nibble i & 7) of {b, a}, sign-replicated
    when bit 3 of the nibble is set."""
    src = (b << 32) | a
    out = 0
    for i in range(4):
        nib = (sel >> (4 * i)) & 0xF
        byte = (src >> (8 * (nib & 7))) & 0xFF
        if nib & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * i)
    return out


def _emulate(x: torch.Tensor, g: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) bf16 -> (packed, scales) exactly as the kernel computes them."""
    raw = x.contiguous().view(torch.int16).numpy().astype(np.uint16).astype(np.uint32)
    m, k = raw.shape
    g = F32(g)
    f = _f(raw << 16)  # bf16 -> f32 exactly
    mag = np.abs(f)
    mag = np.where(np.isnan(mag), F32(0), mag).astype(F32)  # max.bf16x2(|x|, +0)
    blocks = mag.reshape(m, k // 16, 16)
    amax = blocks.max(axis=-1)
    q = (amax / F32(6)).astype(F32)  # div.rn
    sff = (g * q).astype(F32)  # mul.rn
    sf8 = torch.from_numpy(np.minimum(sff, F32(448))).to(torch.float8_e4m3fn)  # rn satfinite
    sfb = sf8.float().numpy()
    with np.errstate(divide="ignore"):
        d = (sfb / g).astype(F32)
        os_ = np.where(sfb == 0, F32(0), (F32(1) / d).astype(F32)).astype(F32)
    v = (blocks * os_[..., None]).astype(F32)  # mul.rn
    v = np.minimum(v, F32(6))
    e = np.maximum(_bits(v) & 0x7F800000, 0x3F800000)
    mb = (e + (e >> 22) + 0x0AFFFF02).astype(np.uint32)  # M' = M + off*step
    r = _bits((v + _f(mb)).astype(F32)).astype(np.int64)  # add.rn
    r = r.reshape(m, k // 8, 4, 2)
    pairs_b = ((r[..., 1] << 4) + r[..., 0]) & 0xFFFFFFFF  # byte 0 = packed pair
    assert ((pairs_b >> 8) & 0xFF).max() == 0  # bits 3..22 of r are zero
    words = ((pairs_b & 0xFF) << (8 * np.arange(4))).sum(-1).astype(np.uint32)
    pairs = (raw[:, 0::2] | (raw[:, 1::2] << 16)).reshape(m, k // 8, 4)
    for i in range(m):
        for j in range(k // 8):
            w = [int(t) for t in pairs[i, j]]
            sa, sb = _prmt(w[0], w[1], 0xFBD9), _prmt(w[2], w[3], 0xFBD9)
            qe = _prmt(sa, sb, 0x5410) & 0x08080808
            qo = _prmt(sa, sb, 0x7632) & 0x80808080
            words[i, j] |= qe | qo
    packed = torch.from_numpy(words.view(np.uint8).reshape(m, k // 2).copy())
    return packed, sf8


def _special_rows(k: int) -> torch.Tensor:
    rows = torch.randn(8, k) * torch.logspace(-3, 3, 8).unsqueeze(1)
    rows[1, :16] = 0.0  # all-zero block
    rows[2, 3] = float("nan")
    rows[2, 20 % k] = -float("nan")
    rows[3, 5] = float("inf")
    rows[3, 40 % k] = -float("inf")
    rows[4, :16] = torch.tensor([6.0, 5.0, 3.5, 2.5, 1.75, 1.25, 0.75, 0.25] * 2)  # ties
    rows[5, :16] = -0.0
    rows[6, -16:] = 1e30  # saturating block
    rows[7, :16] = 1e-39  # subnormal inputs
    return rows


@pytest.mark.parametrize("k", [16, 48, 256])
@pytest.mark.parametrize("g", [1.0, 448 * 6 / 3.7, 1e-3, 3.0e4])
def test_emulated_kernel_arithmetic_is_bit_exact(k, g):
    torch.manual_seed(k)
    x = torch.cat([torch.randn(5, k) * 3, _special_rows(k)]).to(torch.bfloat16)
    packed, sf = _emulate(x, g)
    ref_packed, ref_sf = reference.quantize(x, torch.tensor([g]))
    assert torch.equal(sf.view(torch.uint8), ref_sf.view(torch.uint8))
    assert torch.equal(packed, ref_packed)


def test_magic_rounding_matches_every_threshold():
    """Every e2m1 midpoint, its fp32 neighbours and the representable values round as the
    reference's threshold table does (the add.rn trick, single element, out_scale 1)."""
    points = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0]
    vals = []
    for p in points:
        b = np.array([p], dtype=F32).view(np.uint32)[0]
        vals += [p, float(_f(np.array([b + 1]))[0])]
        if p > 0:
            vals.append(float(_f(np.array([b - 1]))[0]))
    v = np.minimum(np.array(vals, dtype=F32), F32(6))
    e = np.maximum(_bits(v) & 0x7F800000, 0x3F800000)
    want = reference._e2m1_codes(torch.tensor(vals, dtype=torch.float32))
    # quantize: M' = M + off*step, the code is r's low 3 bits
    r = _bits((v + _f(e + (e >> 22) + 0x0AFFFF02)).astype(F32))
    assert (r & 7).tolist() == want.tolist()
    assert ((r >> 3) & 0xFFFFF).max() == 0
    # quantize-dequantize: plain M, r - M is the e2m1 value
    m_plain = _f(e + 0x0B000000)
    value = ((v + m_plain).astype(F32) - m_plain).astype(F32)
    assert value.tolist() == e2m1_to_float(want).tolist()


def test_magic_divisor_matches_integer_division():
    rng = np.random.default_rng(0)
    for d in list(range(1, 600)) + rng.integers(1, 2**27, 300).tolist():
        mul, shift = magic_divisor(int(d))
        assert 0 < mul < 2**32
        for n in [0, 1, d - 1, d, d + 1, 2**31 - 1] + rng.integers(0, 2**31, 20).tolist():
            assert ((((mul * n) >> 32) + n) >> shift) == n // d


def test_pack_order_matches_formats():
    # Sanity of the emulation itself: low nibble = even element.
    codes = torch.arange(16, dtype=torch.uint8).reshape(1, 16)
    assert pack_e2m1(codes)[0, 0].item() == 0x10
