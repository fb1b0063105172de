"""CPU tests of the sm90 weight layout: round trip, the kernel's bit tricks (emulated), guards."""

import pytest
import torch

from nvfp4_kit import reference
from nvfp4_kit.formats import pack_e2m1
from nvfp4_kit.kernels import gemm_sm90_layout as L


def _quantized(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return reference.quantize_weight(torch.randn(n, k, generator=g))


@pytest.mark.parametrize("n,k", [(64, 128), (128, 4096), (200, 48), (96, 272), (1, 16), (130, 1040)])
def test_round_trip_and_dequant_exact(n, k):
    q = _quantized(n, k)
    w, s = L.prepare_weight(q["weight"], q["weight_scale"])
    n_pad, k_pad = L.padded_shape(n, k)
    assert w.shape == (n_pad // 64, k_pad // 128, 2, 128, 4) and w.dtype == torch.int32
    assert s.shape == (n_pad // 64, k_pad // 128, 32, 16) and s.dtype == torch.uint8
    w2, s2 = L.unprepare_weight(w, s, n, k)
    assert torch.equal(w2, q["weight"])
    assert torch.equal(s2.view(torch.uint8), q["weight_scale"].view(torch.uint8))
    # What the kernel's registers hold (its own shifts, masks, prmt/shl/add and bf16 multiply),
    # times 2^7, equals the reference dequantization bit for bit.
    deq = L.emulate_dequant(w, s, n, k).float() * 2.0**L.SCALE_BIAS_LOG2
    assert torch.equal(deq, reference.dequantize(q["weight"], q["weight_scale"]))


def test_every_scale_byte_and_special_blocks():
    n, k = 8, 128 * 16  # 128 blocks per row: every non-negative e4m3 byte once
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
    sf = torch.arange(128, dtype=torch.uint8).repeat(n, 1)
    codes[:, :16] &= 8  # the zero-scale block holds +-0 (as quantizers write)
    packed, scales = pack_e2m1(codes), sf.view(torch.float8_e4m3fn)
    w, s = L.prepare_weight(packed, scales)
    deq = L.emulate_dequant(w, s, n, k).float() * 2.0**L.SCALE_BIAS_LOG2
    ref = reference.dequantize(packed, scales)
    assert torch.equal(torch.isnan(deq), torch.isnan(ref))  # the NaN scale (0x7F)
    fin = ~torch.isnan(ref)
    assert torch.equal(deq[fin], ref[fin])
    assert torch.equal(torch.signbit(deq[fin]), torch.signbit(ref[fin]))  # signed zeros too
    w2, s2 = L.unprepare_weight(w, s, n, k)
    assert torch.equal(w2, packed) and torch.equal(s2.view(torch.uint8), sf)


def test_zero_scale_block_codes_are_canonicalized():
    n, k = 4, 32
    codes = torch.full((n, k), 5, dtype=torch.uint8)
    codes[0, :16] = 13  # -3.0 under a zero scale: the reference gives -0.0
    sf = torch.full((n, k // 16), 1.0).to(torch.float8_e4m3fn)
    sf[0, 0] = 0.0
    w, s = L.prepare_weight(pack_e2m1(codes), sf)
    deq = L.emulate_dequant(w, s, n, k).float() * 2.0**L.SCALE_BIAS_LOG2
    ref = reference.dequantize(pack_e2m1(codes), sf)
    assert torch.equal(deq, ref) and torch.equal(torch.signbit(deq), torch.signbit(ref))
    w2, _ = L.unprepare_weight(w, s, n, k)
    expect = codes.clone()
    expect[0, :16] = 8  # sign kept, magnitude zeroed
    assert torch.equal(w2, pack_e2m1(expect))


def test_guards():
    q = _quantized(64, 128)
    with pytest.raises(ValueError, match="w_packed"):
        L.prepare_weight(q["weight"].to(torch.int16), q["weight_scale"])
    with pytest.raises(ValueError, match="w_scale"):
        L.prepare_weight(q["weight"], q["weight_scale"][:, :4])
    with pytest.raises(ValueError, match="w_packed"):
        L.prepare_weight(torch.zeros(4, 12, dtype=torch.uint8), torch.zeros(4, 1, dtype=torch.uint8))
    neg = q["weight_scale"].clone()
    neg[0, 0] = -1.0
    with pytest.raises(ValueError, match="negative"):
        L.prepare_weight(q["weight"], neg)
    w, s = L.prepare_weight(q["weight"], q["weight_scale"])
    with pytest.raises(ValueError, match="w:"):
        L.unprepare_weight(w, s, 64, 256)
    with pytest.raises(ValueError, match="w_scale"):
        L.unprepare_weight(w, s[:, :, :, :8], 64, 128)
