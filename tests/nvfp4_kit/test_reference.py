"""reference.py: hand-computed vectors, special blocks, layouts and the GEMM references."""

import math

import pytest
import torch

from nvfp4_kit import formats as F
from nvfp4_kit import reference as R


def _codes(packed):
    return F.unpack_e2m1(packed).flatten().tolist()


def test_round_to_nearest_even_ties_with_unit_scale():
    # amax 6 and global 1 -> sf = 1, out_scale = 1: the codes are the e2m1 rounding of the values.
    values = [0, 0.25, 0.3, 0.75, 1.25, 1.3, 1.75, 2.5, 2.6, 3.5, 5.0, 5.1, 6.0, -0.75, -5.0, -0.1]
    packed, sf = R.quantize(torch.tensor([values]), 1.0)
    assert sf.float().tolist() == [[1.0]]
    assert _codes(packed) == [0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7, 7, 8 | 2, 8 | 6, 8 | 0]


def test_scale_is_448_when_amax_sets_the_global_scale():
    x = torch.tensor([[1.0, 0.5] + [0.0] * 14])
    g = R.global_scale_from_amax(torch.tensor(1.0))  # 2688
    packed, sf = R.quantize(x, g)
    assert sf.float().item() == 448.0
    # out_scale = 1 / (448 / 2688) = 6 (up to one fp32 rounding): 1.0 -> code 7 (6), 0.5 -> code 5 (3)
    assert _codes(packed)[:2] == [7, 5]
    deq = R.dequantize(packed, sf, g)
    assert deq[0, :2].tolist() == pytest.approx([1.0, 0.5], rel=1e-6)


def test_subnormal_block_scale():
    # global 1, amax 6e-3 -> sf = e4m3(1e-3) = 2^-9 (the smallest subnormal), out_scale = 512
    x = torch.tensor([[6e-3, -3e-3] + [0.0] * 14])
    packed, sf = R.quantize(x, 1.0)
    assert sf.float().item() == 2.0**-9
    # 6e-3 * 512 = 3.07 -> 3.0 (code 5); -3e-3 * 512 = -1.54 -> -1.5 (code 11)
    assert _codes(packed)[:2] == [5, 8 | 3]


def test_scale_uses_true_division_by_six():
    # amax/6 = 0.0081380208.. rounds (IEEE) so that 3 * it is exactly 0.0244140625, an e4m3 tie that
    # rounds to even: code 12. amax * fp32(1/6) (what CUDA torch does for `x / 6.0`) lands one ulp
    # above the tie and gives code 13: the reference must divide.
    x = torch.zeros(1, 16)
    x[0, 0] = 0.048828125
    _, sf = R.quantize(x, 3.0)
    assert sf.view(torch.uint8).item() == 12


def test_zero_block_has_zero_scale_and_codes():
    packed, sf = R.quantize(torch.zeros(2, 32), 5.0)
    assert sf.float().abs().sum() == 0 and packed.sum() == 0
    assert R.dequantize(packed, sf, 5.0).abs().sum() == 0


def test_nan_is_ignored_by_amax_and_becomes_signed_zero():
    x = torch.tensor([[float("nan"), 3.0, -float("nan")] + [1.5] * 13])
    packed, sf = R.quantize(x, 2.0)
    assert sf.float().item() == 1.0  # e4m3(2 * 3/6)
    codes = _codes(packed)
    # out_scale = 1 / (1 / 2) = 2: 3.0 -> 6.0 (code 7), 1.5 -> 3.0 (code 5); NaNs -> +0 and -0
    assert codes[:4] == [0, 7, 8, 5]


def test_inf_saturates_scale_and_value():
    x = torch.tensor([[float("inf"), 1.0, -float("inf")] + [0.0] * 13])
    packed, sf = R.quantize(x, 1.0)
    assert sf.float().item() == 448.0  # e4m3 satfinite
    codes = _codes(packed)
    assert codes[0] == 7 and codes[2] == 15 and codes[1] == 0  # 1/448 rounds to 0
    # a tiny global scale does not bring an inf block's scale below saturation (inf is not FLT_MAX)
    assert R.quantize(x, 1e-37)[1].float().item() == 448.0


def test_saturating_block_scale_and_values():
    # global * amax / 6 = 1000 > 448 -> sf saturates at 448; values then exceed 6 and saturate to code 7
    x = torch.tensor([[6.0, 5.0, -6.0, 0.3] + [0.0] * 12])
    packed, sf = R.quantize(x, 1000.0)
    assert sf.float().item() == 448.0
    # out_scale = 1/(448/1000) = 2.2321..: 6 -> 13.4 (7), 5 -> 11.2 (7), -6 (15), 0.3 -> 0.67 (code 1: 0.5)
    assert _codes(packed)[:4] == [7, 7, 15, 1]


def test_swizzled_layout_is_the_swizzle_of_linear():
    x = torch.randn(130, 96)
    p_lin, s_lin = R.quantize(x, 10.0, "linear")
    p_sw, s_sw = R.quantize(x, 10.0, "swizzled_128x4")
    assert torch.equal(p_lin, p_sw)
    assert torch.equal(s_sw.view(torch.uint8), F.swizzle_scales(s_lin).view(torch.uint8))
    assert torch.equal(R.dequantize(p_sw, s_sw, 10.0, "swizzled_128x4"), R.dequantize(p_lin, s_lin, 10.0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_round_trip_error_is_within_half_a_step(dtype):
    torch.manual_seed(0)
    x = (torch.randn(64, 256) * 3).to(dtype)
    g = R.global_scale_from_amax(x.float().abs().amax())
    packed, sf = R.quantize(x, g)
    deq = R.dequantize(packed, sf, g)
    # per block the largest e2m1 step is 2 (between 4 and 6), in units of sf/g; plus e4m3 scale rounding
    step = (sf.float() / g).repeat_interleave(16, dim=1)
    assert torch.all((deq - x.float()).abs() <= step * 1.0 + 1e-6)
    rel = (deq - x.float()).norm() / x.float().norm()
    assert rel < 0.12


def test_quantize_dequantize_is_exact_in_bf16():
    x = torch.randn(8, 128, dtype=torch.bfloat16) * 7
    qdq = R.quantize_dequantize(x, 37.0)
    assert torch.equal(qdq.to(torch.bfloat16).float(), qdq)


def test_guards_name_the_argument():
    with pytest.raises(ValueError, match="x: K=24 must be a multiple of 16"):
        R.quantize(torch.zeros(2, 24), 1.0)
    with pytest.raises(ValueError, match="x: expected 2-D"):
        R.quantize(torch.zeros(32), 1.0)
    with pytest.raises(ValueError, match="global_scale: expected one element"):
        R.quantize(torch.zeros(2, 32), torch.ones(2))
    with pytest.raises(ValueError, match="scales: shape"):
        R.dequantize(torch.zeros(2, 16, dtype=torch.uint8), torch.zeros(2, 3).to(torch.float8_e4m3fn))


def _dense(packed, sf):
    """float64 e2m1 * sf, computed independently of reference.dequantize."""
    table = torch.tensor(F.E2M1_VALUES, dtype=torch.float64)
    low, high = (packed & 0xF).long(), (packed >> 4).long()
    vals = torch.stack((table[low], table[high]), -1).flatten(-2)
    return vals * sf.double().repeat_interleave(16, dim=1)


def test_gemm_w4a16_matches_float64():
    torch.manual_seed(1)
    w = R.quantize_weight(torch.randn(48, 64))
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    alpha = torch.rand(48) + 0.5  # per-output-channel alpha
    got = R.gemm_w4a16(x, w["weight"], w["weight_scale"], alpha, torch.float32)
    expect = x.double() @ _dense(w["weight"], w["weight_scale"]).T * alpha.double()
    torch.testing.assert_close(got.double(), expect, rtol=1e-5, atol=1e-5)


def test_gemm_w4a4_matches_float64():
    torch.manual_seed(2)
    w = R.quantize_weight(torch.randn(32, 128))
    x = torch.randn(3, 128)
    xp, xs = R.quantize(x, 20.0, "swizzled_128x4")
    alpha = torch.tensor([0.25])
    got = R.gemm_w4a4(xp, xs, w["weight"], w["weight_scale"], alpha, torch.float32, "swizzled_128x4")
    xd = _dense(xp, F.unswizzle_scales(xs, 3, 8))
    expect = xd @ _dense(w["weight"], w["weight_scale"]).T * 0.25
    torch.testing.assert_close(got.double(), expect, rtol=1e-5, atol=1e-5)


def test_quantize_weight_matches_modelopt_conventions():
    w = torch.randn(16, 32) * 0.02
    q = R.quantize_weight(w)
    assert q["weight"].dtype == torch.uint8 and q["weight"].shape == (16, 16)
    assert q["weight_scale"].dtype == torch.float8_e4m3fn and q["weight_scale"].shape == (16, 2)
    assert q["weight_scale_2"].dtype == torch.float32 and q["weight_scale_2"].dim() == 0
    assert q["weight_scale_2"].item() == pytest.approx(w.abs().max().item() / (448 * 6), rel=1e-6)


@pytest.mark.parametrize("scale", [0.0, 1e-37, 1e-40])
def test_quantize_weight_of_zero_or_tiny_weights_stays_finite(scale):
    """2688 / amax overflows fp32 for amax below ~7.9e-36: the scales must stay finite, not NaN."""
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0)) * scale
    q = R.quantize_weight(w)
    assert torch.isfinite(q["weight_scale"].float()).all()
    assert torch.isfinite(q["weight_scale_2"]) and q["weight_scale_2"] > 0
    back = R.dequantize(q["weight"], q["weight_scale"]).double() * q["weight_scale_2"].double()
    if scale == 0.0:
        assert q["weight_scale_2"].item() == 1.0 and (back == 0).all()
    if scale < torch.finfo(torch.float32).tiny:  # subnormal weights: the block scales fall into
        return  # e4m3's subnormals too (the global scale is at fp32's max), so only finiteness holds
    # e2m1's widest gap (4 -> 6) is a third of the block amax: half of it bounds the rounding error
    blocks_amax = w.abs().reshape(16, 2, 16).amax(-1).repeat_interleave(16, 1).double()
    assert ((back - w.double()).abs() <= blocks_amax * 0.2).all()


def test_approx_reciprocal_flip_rate():
    """How often one ulp of error in out_scale (FlashInfer's rcp.approx) flips an e2m1 code.

    This bounds the disagreement between FlashInfer's default quantizer and this exact-division
    reference; the number is printed and documented in the README, and must stay rare.
    """
    torch.manual_seed(3)
    x = torch.randn(4096, 1024, dtype=torch.bfloat16)
    g = R.global_scale_from_amax(x.float().abs().amax())
    blocks, _, out_scale = R._block_scales(x, g)
    exact = R._e2m1_codes(blocks * out_scale)
    flips = 0
    for direction in (math.inf, 0.0):
        nudged = torch.nextafter(out_scale, torch.full_like(out_scale, direction))
        flips += int((R._e2m1_codes(blocks * nudged) != exact).sum())
    rate = flips / (2 * exact.numel())
    print(f"one-ulp out_scale error flips {rate:.2e} of elements")
    assert 0 < rate < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("global_scale", [11.0, 3.0, 2688.0 / 7.3])
def test_reference_runs_identically_on_gpu(global_scale):
    # every positive bf16 value below 448 as a block amax, plus random blocks
    amax = torch.arange(1, 0x43E0, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    blocks = torch.zeros(amax.numel(), 16, dtype=torch.bfloat16)
    blocks[:, 0] = amax
    blocks[:, 1:] = amax[:, None] * torch.rand(amax.numel(), 15).to(torch.bfloat16)
    x = torch.cat([blocks, torch.randn(64, 16, dtype=torch.bfloat16) * 5])  # (blocks, K=16)
    p_cpu, s_cpu = R.quantize(x, global_scale, "swizzled_128x4")
    g = torch.tensor([global_scale], device="cuda")
    p_gpu, s_gpu = R.quantize(x.cuda(), g, "swizzled_128x4")
    assert torch.equal(s_cpu.view(torch.uint8), s_gpu.cpu().view(torch.uint8))
    assert torch.equal(p_cpu, p_gpu.cpu())
