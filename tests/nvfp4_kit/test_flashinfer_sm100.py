"""The SM100 path against FlashInfer's real API, on CPU (no Blackwell GPU exists here).

FlashInfer 0.7.2.post1 is imported for real; its GPU entry points are replaced by recorders that bind
every call to the real signature (a wrong keyword or arity fails), check the documented layouts, and
compute the answer with nvfp4_kit.reference. This tests our call contract, not FlashInfer's kernels.
"""

import inspect

import pytest
import torch

from nvfp4_kit import device, dispatch, ops
from nvfp4_kit import formats as F
from nvfp4_kit import reference as R
from tests.wheel_cache import install_target

FLASHINFER = "flashinfer-python==0.7.2.post1"
# What `import flashinfer` needs on a CPU-only machine besides torch (found by importing it in a clean venv)
FLASHINFER_IMPORT_DEPS = ["apache-tvm-ffi>=0.1.11,<0.2", "einops", "tabulate", "nvidia-ml-py", "requests",
                          "urllib3", "certifi", "charset-normalizer", "idna"]


@pytest.fixture(scope="module")
def flashinfer_module():
    target = install_target("flashinfer-0.7.2.post1", [FLASHINFER, *FLASHINFER_IMPORT_DEPS])
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(target))
    import flashinfer

    yield flashinfer
    mp.undo()


@pytest.fixture
def sm100(monkeypatch, flashinfer_module):
    """Pretend the (CPU) device is an SM100 GPU and record FlashInfer calls."""
    monkeypatch.setattr(device, "capability", lambda d: (10, 0))
    dispatch.reset()
    calls = []
    real_mm, real_q = flashinfer_module.mm_fp4, flashinfer_module.fp4_quantize
    sig_mm, sig_q = inspect.signature(real_mm), inspect.signature(real_q)
    backends = sig_mm.parameters["backend"].annotation.__args__

    def mm_fp4(*args, **kwargs):
        bound = sig_mm.bind(*args, **kwargs)
        bound.apply_defaults()
        a, b, a_sf, b_sf, alpha, out = (bound.arguments[k] for k in
                                        ("a", "b", "a_descale", "b_descale", "alpha", "out"))
        assert bound.arguments["backend"] in backends
        assert bound.arguments["block_size"] == 16 and bound.arguments["use_nvfp4"]
        assert not bound.arguments["use_8x4_sf_layout"]
        m, k = a.shape[0], a.shape[1] * 2
        n = b.shape[1]
        assert b.shape == (k // 2, n) and b.stride(0) == 1, "B must be the column-major weight.T view"
        assert a_sf.shape == F.scale_shape(m, k, "swizzled_128x4")
        assert b_sf.shape == tuple(reversed(F.scale_shape(n, k, "swizzled_128x4")))
        assert alpha is None or (alpha.dtype == torch.float32 and alpha.numel() == 1)
        result = R.gemm_w4a4(a, F.unswizzle_scales(a_sf, m, k // 16), b.T, F.unswizzle_scales(b_sf.T, n, k // 16),
                             alpha if alpha is not None else torch.ones(1), out.dtype)
        out.copy_(result)
        calls.append(("mm_fp4", bound.arguments["backend"], alpha is None))
        return out

    def fp4_quantize(*args, **kwargs):
        bound = sig_q.bind(*args, **kwargs)
        bound.apply_defaults()
        args_ = bound.arguments
        assert args_["sf_vec_size"] == 16 and not args_["sf_use_ue8m0"]
        assert args_["nvfp4_4over6"] is None, "must not read FLASHINFER_NVFP4_4OVER6* env vars"
        assert args_["backend"] in ("cuda", "cute-dsl")
        layout = "swizzled_128x4" if args_["is_sf_swizzled_layout"] else "linear"
        calls.append(("fp4_quantize", args_["backend"], layout))
        return R.quantize(args_["input"], args_["global_scale"], layout)

    monkeypatch.setattr(flashinfer_module, "mm_fp4", mm_fp4)
    monkeypatch.setattr(flashinfer_module, "fp4_quantize", fp4_quantize)
    yield calls
    dispatch.reset()


def _weights(n=256, k=128, seed=0):
    torch.manual_seed(seed)
    return R.quantize_weight(torch.randn(n, k))


def test_linear_on_sm100_calls_cute_dsl_with_documented_layouts(sm100):
    q = _weights()
    pw = ops.prepare_weight(q["weight"], q["weight_scale"], q["weight_scale_2"], torch.tensor(0.01))
    assert pw.mode == "w4a4" and pw.layout == "swizzled_128x4"
    assert pw.backend.names.flashinfer == "cute-dsl"
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    y = ops.linear(x, pw)
    xp, xs = R.quantize(x, pw.input_global_scale)
    assert torch.equal(y, R.gemm_w4a4(xp, xs, q["weight"], q["weight_scale"], pw.alpha))
    assert sm100 == [("fp4_quantize", "cute-dsl", "swizzled_128x4"), ("mm_fp4", "cute-dsl", False)]


def test_per_channel_alpha_is_applied_after_mm_fp4(sm100):
    q = _weights()
    ws2 = torch.rand(256) + 0.5
    pw = ops.prepare_weight(q["weight"], q["weight_scale"], ws2, torch.tensor(0.01))
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    y = ops.linear(x, pw)
    xp, xs = R.quantize(x, pw.input_global_scale)
    ref = R.gemm_w4a4(xp, xs, q["weight"], q["weight_scale"], pw.alpha, torch.float32)
    torch.testing.assert_close(y.float(), ref, rtol=2 * 2**-8, atol=1e-3)  # bf16 rounded twice
    assert sm100[-1] == ("mm_fp4", "cute-dsl", True)


def test_sm100_shape_guard(sm100):
    q = _weights(n=100)
    with pytest.raises(ValueError, match="n=100: FlashInfer's cute-dsl FP4 GEMM requires N % 8 == 0"):
        ops.prepare_weight(q["weight"], q["weight_scale"], q["weight_scale_2"], torch.tensor(0.01))


def test_trtllm_preparation_uses_flashinfer_shuffles(sm100, flashinfer_module, monkeypatch):
    seen = {}
    real = {name: inspect.signature(getattr(flashinfer_module, name))
            for name in ("shuffle_matrix_a", "shuffle_matrix_sf_a")}

    def recorder(name):
        def fn(*args, **kwargs):
            bound = real[name].bind(*args, **kwargs)
            seen[name] = bound.arguments
            return args[0]
        return fn

    for name in real:
        monkeypatch.setattr(flashinfer_module, name, recorder(name))
    q = _weights()
    pw = ops.prepare_weight(q["weight"], q["weight_scale"], q["weight_scale_2"], torch.tensor(0.01),
                            backend="trtllm")
    assert pw.layout == "trtllm_128x4"
    assert seen["shuffle_matrix_a"]["epilogue_tile_m"] == 128
    assert seen["shuffle_matrix_sf_a"]["input_tensor"].dtype == torch.uint8


def test_layout_and_backend_must_match(sm100):
    q = _weights()
    pw = ops.prepare_weight(q["weight"], q["weight_scale"], q["weight_scale_2"], torch.tensor(0.01))
    xp, xs = R.quantize(torch.randn(2, 128), pw.input_global_scale, "swizzled_128x4")
    with pytest.raises(ValueError, match="backend='flashinfer_trtllm' cannot run weights prepared as layout='swizzled_128x4'"):
        ops.gemm(xp, pw.weight, pw.weight_scale, pw.alpha, layout=pw.layout, n=pw.n, x_scale=xs, backend="trtllm")
    y = ops.gemm(xp, pw.weight, pw.weight_scale, pw.alpha, layout=pw.layout, n=pw.n, x_scale=xs, backend="auto")
    assert y.shape == (2, 256) and sm100[-1] == ("mm_fp4", "cute-dsl", False)


def test_trtllm_needs_n_multiple_of_128(sm100):
    q = _weights(n=200)
    with pytest.raises(ValueError, match="n=200: FlashInfer's trtllm weight shuffle requires N % 128 == 0"):
        ops.prepare_weight(q["weight"], q["weight_scale"], q["weight_scale_2"], torch.tensor(0.01),
                           backend="trtllm")
