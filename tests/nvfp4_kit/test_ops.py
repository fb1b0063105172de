"""ops.py on CPU: results equal the reference, opcheck, torch.compile, and every guard's message."""

import pytest
import torch

from nvfp4_kit import dispatch, ops
from nvfp4_kit import reference as R

N, K = 96, 128


@pytest.fixture(autouse=True)
def _fresh_dispatch():
    dispatch.reset()
    yield
    dispatch.reset()


@pytest.fixture
def weight():
    torch.manual_seed(0)
    return R.quantize_weight(torch.randn(N, K))


def _pw(weight, **kw):
    return ops.prepare_weight(weight["weight"], weight["weight_scale"], weight["weight_scale_2"],
                              torch.tensor(0.02), **kw)


def test_prepare_weight_on_cpu_uses_the_reference(weight):
    pw = _pw(weight)
    assert pw.backend.value == "reference" and pw.layout == "linear" and pw.mode == "w4a16"
    assert (pw.n, pw.k) == (N, K)
    assert pw.alpha.dtype == torch.float32 and pw.alpha.shape == (1,)
    assert pw.input_global_scale.item() == pytest.approx(50.0)


def test_linear_w4a16_equals_reference_with_leading_dims(weight):
    pw = _pw(weight)
    x = torch.randn(2, 3, K, dtype=torch.bfloat16)
    y = ops.linear(x, pw)
    ref = R.gemm_w4a16(x.reshape(6, K), weight["weight"], weight["weight_scale"],
                       weight["weight_scale_2"].reshape(1))
    assert y.shape == (2, 3, N) and torch.equal(y.reshape(6, N), ref)
    out = torch.empty(2, 3, N, dtype=torch.bfloat16)
    assert ops.linear(x, pw, out=out) is out and torch.equal(out, y)
    for shape in ((6, N), (2, 3 * N), (6 * N,), (3, 2, N)):  # M*N elements, not x's leading dims
        with pytest.raises(ValueError, match=r"out: shape"):
            ops.linear(x, pw, out=torch.empty(shape, dtype=torch.bfloat16))


def test_linear_w4a4_equals_the_w4a4_reference(weight):
    pw = _pw(weight, mode="w4a4")
    assert pw.alpha.item() == pytest.approx(weight["weight_scale_2"].item() * 0.02)
    x = torch.randn(7, K, dtype=torch.bfloat16)
    xp, xs = R.quantize(x, pw.input_global_scale)
    ref = R.gemm_w4a4(xp, xs, weight["weight"], weight["weight_scale"], pw.alpha)
    torch.testing.assert_close(ops.linear(x, pw), ref, rtol=0, atol=0)


def test_per_channel_alpha_keeps_fused_shards_exact():
    torch.manual_seed(4)
    a, b = R.quantize_weight(torch.randn(32, K)), R.quantize_weight(torch.randn(64, K) * 40)
    fused = ops.prepare_weight(
        torch.cat([a["weight"], b["weight"]]), torch.cat([a["weight_scale"], b["weight_scale"]]),
        torch.cat([a["weight_scale_2"].expand(32), b["weight_scale_2"].expand(64)]))
    x = torch.randn(4, K, dtype=torch.bfloat16)
    got = ops.linear(x, fused)
    for q, cols in ((a, slice(0, 32)), (b, slice(32, 96))):
        ref = R.gemm_w4a16(x, q["weight"], q["weight_scale"], q["weight_scale_2"].reshape(1))
        assert torch.equal(got[:, cols], ref)


@pytest.mark.parametrize("layout", ["linear", "swizzled_128x4"])
def test_quantize_op_equals_reference(layout):
    x = torch.randn(9, 64, dtype=torch.bfloat16)
    g = torch.tensor([13.0])
    packed, scales = ops.quantize(x, g, layout)
    rp, rs = R.quantize(x, g, layout)
    assert torch.equal(packed, rp) and torch.equal(scales.view(torch.uint8), rs.view(torch.uint8))
    outs = (torch.empty_like(rp), torch.empty_like(rs))
    ops.quantize(x, g, layout, out=outs)
    assert torch.equal(outs[0], rp) and torch.equal(outs[1].view(torch.uint8), rs.view(torch.uint8))


def test_quantize_dequantize_op():
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    y = ops.quantize_dequantize(x, torch.tensor([3.0]))
    assert y.dtype == torch.bfloat16 and torch.equal(y.float(), R.quantize_dequantize(x, 3.0))


def test_opcheck_all_ops(weight):
    pw = _pw(weight)
    x = torch.randn(3, K, dtype=torch.bfloat16)
    g = torch.tensor([5.0])
    s_bytes = pw.weight_scale.view(torch.uint8)  # opcheck's schema test cannot compare fp8 tensors
    out = torch.empty(3, N, dtype=torch.bfloat16)
    xp, xs = R.quantize(x, g)
    cases = [
        (torch.ops.nvfp4.gemm.default, (x, None, pw.weight, s_bytes, pw.alpha, "linear", N, torch.bfloat16, "reference")),
        (torch.ops.nvfp4.gemm.default, (xp, xs.view(torch.uint8), pw.weight, s_bytes, pw.alpha, "linear", N, torch.bfloat16, "reference")),
        (torch.ops.nvfp4.gemm_out.default, (x, None, pw.weight, s_bytes, pw.alpha, "linear", N, "reference", out)),
        (torch.ops.nvfp4.quantize.default, (x, g, "swizzled_128x4", "auto")),
        (torch.ops.nvfp4.quantize_out.default, (x, g, "linear", "auto", torch.empty_like(xp), torch.empty_like(xs).view(torch.uint8))),
        (torch.ops.nvfp4.quantize_dequantize.default, (x, g, "auto")),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("mode", ["w4a16", "w4a4"])
def test_torch_compile_fullgraph(weight, mode):
    pw = _pw(weight, mode=mode)
    x = torch.randn(4, K, dtype=torch.bfloat16)

    @torch.compile(fullgraph=True)
    def f(x):
        packed, scales = ops.quantize(x, pw.input_global_scale)
        return ops.linear(x, pw), packed, scales

    y, packed, scales = f(x)
    assert torch.equal(y, ops.linear(x, pw))
    assert torch.equal(packed, R.quantize(x, pw.input_global_scale)[0])


def _bad_gemm_cases(pw, x):
    a = dict(x=x, x_scale=None, w=pw.weight, w_scale=pw.weight_scale, alpha=pw.alpha, layout="linear", n=N)
    yield "x: dtype torch.float32", dict(a, x=x.float())
    yield "x: expected 2-D", dict(a, x=x[0])
    yield "x: K=120 must be a multiple of 16", dict(a, x=x[:, :120].contiguous())
    yield "x: must be contiguous", dict(a, x=torch.randn(K, 4, dtype=torch.bfloat16).T)
    yield "w: .* bytes, expected N\\*K/2", dict(a, w=pw.weight[:-1])
    yield "w: dtype", dict(a, w=pw.weight.to(torch.int32))
    yield "w_scale: shape", dict(a, w_scale=pw.weight_scale[:, :-1].contiguous())
    yield "w_scale: dtype", dict(a, w_scale=pw.weight_scale.float())
    yield "alpha: 3 elements, expected 1 or N=96", dict(a, alpha=torch.ones(3))
    yield "alpha: dtype", dict(a, alpha=pw.alpha.double())
    yield "layout='8x4'", dict(a, layout="8x4")
    yield "x_scale: dtype", dict(a, x=torch.zeros(4, K // 2, dtype=torch.uint8), x_scale=torch.zeros(4, 8))
    yield "x_scale: shape", dict(a, x=torch.zeros(4, K // 2, dtype=torch.uint8),
                                 x_scale=torch.zeros(4, 4, dtype=torch.float8_e4m3fn))


def test_gemm_guards_name_the_argument(weight):
    pw = _pw(weight)
    x = torch.randn(4, K, dtype=torch.bfloat16)
    for message, kwargs in _bad_gemm_cases(pw, x):
        with pytest.raises(ValueError, match=message):
            ops.gemm(**kwargs)
    with pytest.raises(ValueError, match="out: shape"):
        ops.gemm(x, pw.weight, pw.weight_scale, pw.alpha, layout="linear", n=N,
                 out=torch.empty(4, N + 1, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="out_dtype"):
        ops.gemm(x, pw.weight, pw.weight_scale, pw.alpha, layout="linear", n=N, out_dtype=torch.float32)


def test_quantize_guards_name_the_argument():
    g = torch.tensor([1.0])
    with pytest.raises(ValueError, match="x: K=40 must be a multiple of 16"):
        ops.quantize(torch.zeros(2, 40, dtype=torch.bfloat16), g)
    with pytest.raises(ValueError, match="x: dtype torch.float32"):
        ops.quantize(torch.zeros(2, 32), g)
    with pytest.raises(ValueError, match="global_scale: dtype"):
        ops.quantize(torch.zeros(2, 32, dtype=torch.bfloat16), torch.tensor([1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="global_scale: expected 1 element"):
        ops.quantize(torch.zeros(2, 32, dtype=torch.bfloat16), torch.ones(2))
    with pytest.raises(ValueError, match="layout="):
        ops.quantize(torch.zeros(2, 32, dtype=torch.bfloat16), g, "8x4")
    x = torch.zeros(2, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="out_scale: shape"):
        ops.quantize(x, g, out=(torch.empty(2, 16, dtype=torch.uint8), torch.empty(2, 3, dtype=torch.float8_e4m3fn)))
    with pytest.raises(ValueError, match="Fp4QuantBackend 'nope'"):
        ops.quantize(x, g, backend="nope")


def test_prepare_weight_guards(weight):
    w, s, s2 = weight["weight"], weight["weight_scale"], weight["weight_scale_2"]
    with pytest.raises(ValueError, match="w_packed: dtype"):
        ops.prepare_weight(w.float(), s, s2)
    with pytest.raises(ValueError, match="w_scale: shape"):
        ops.prepare_weight(w, s[:, :1].contiguous(), s2)
    with pytest.raises(ValueError, match="weight_scale_2: 2 elements"):
        ops.prepare_weight(w, s, torch.ones(2))
    with pytest.raises(ValueError, match="mode='w4a4' needs input_scale"):
        ops.prepare_weight(w, s, s2, mode="w4a4")
    with pytest.raises(ValueError, match="mode='int8'"):
        ops.prepare_weight(w, s, s2, mode="int8")
    with pytest.raises(ValueError, match="cannot run on cpu"):
        ops.prepare_weight(w, s, s2, backend="nvfp4_kit")
    with pytest.raises(ValueError, match="provided by vLLM/SGLang"):
        ops.prepare_weight(w, s, s2, backend="marlin")
    with pytest.raises(ValueError, match="x: last dim 64"):
        ops.linear(torch.zeros(2, 64, dtype=torch.bfloat16), _pw(weight))


def test_uint8_scales_are_accepted_as_e4m3_bytes(weight):
    pw = ops.prepare_weight(weight["weight"], weight["weight_scale"].view(torch.uint8), weight["weight_scale_2"])
    assert pw.weight_scale.dtype == torch.float8_e4m3fn


def test_env_forces_mode(monkeypatch, weight):
    monkeypatch.setenv("NVFP4_KIT_MODE", "w4a4")
    assert _pw(weight).mode == "w4a4"


def test_real_ops_validate_before_allocating(weight):
    pw = _pw(weight)
    x = torch.randn(4, K, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="n=-1"):
        torch.ops.nvfp4.gemm(x, None, pw.weight, pw.weight_scale, pw.alpha, "linear", -1, torch.bfloat16, "reference")
    with pytest.raises(ValueError, match="x: expected 2-D"):
        torch.ops.nvfp4.quantize(torch.zeros(2, 2, 32, dtype=torch.bfloat16), torch.ones(1), "linear", "auto")


def test_env_selects_the_quant_backend(monkeypatch):
    monkeypatch.setenv("NVFP4_KIT_QUANT_BACKEND", "nope")
    with pytest.raises(ValueError, match="Fp4QuantBackend 'nope'"):
        ops.quantize(torch.zeros(2, 32, dtype=torch.bfloat16), torch.ones(1))
    monkeypatch.setenv("NVFP4_KIT_QUANT_BACKEND", "reference")
    packed, _ = ops.quantize(torch.ones(2, 32, dtype=torch.bfloat16), torch.ones(1))
    assert packed.shape == (2, 16)
