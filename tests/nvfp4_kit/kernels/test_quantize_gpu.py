"""GPU: the CuTe DSL quantize kernels are bit-exact to nvfp4_kit.reference (computed on the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from nvfp4_kit import reference
from nvfp4_kit.formats import scale_shape

pytestmark = pytest.mark.gpu
DTYPES = (torch.bfloat16, torch.float16)
LAYOUTS = ("linear", "swizzled_128x4")
# (M, K): M crosses the 128-row atoms; K = 16*odd (16, 48, 272, 4080) and common model widths.
SHAPES = [(1, 16), (1, 4096), (7, 48), (7, 4080), (129, 272), (129, 5120), (300, 16),
          (4096, 272), (4096, 4096)]


def _q():
    from nvfp4_kit.kernels import quantize

    return quantize


def _random(m: int, k: int, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # block magnitudes spread over many binades, so scales cover e4m3's range
    x = torch.randn(m, k, generator=g) * torch.exp(2 * torch.randn(m, k // 16, 1, generator=g)
                                                    ).repeat_interleave(16, 1).reshape(m, k)
    return x.to(dtype)


def _global_for(x: torch.Tensor) -> torch.Tensor:
    amax = torch.nan_to_num(x.float().abs(), nan=0.0, posinf=0.0).amax().clamp(min=1e-30)
    return reference.global_scale_from_amax(amax).reshape(1)


def _run(x_cpu: torch.Tensor, g_cpu: torch.Tensor, layout: str, config=None):
    m, k = x_cpu.shape
    x, g = x_cpu.cuda(), g_cpu.cuda()
    packed = torch.full((m, k // 2), 0xAB, dtype=torch.uint8, device="cuda")  # poison
    sf = torch.full(scale_shape(m, k, layout), 0x5A, dtype=torch.uint8, device="cuda")
    sf = sf.view(torch.float8_e4m3fn)
    _q().quantize_out(x, g, layout, packed, sf, config=config)
    torch.cuda.synchronize()
    return packed.cpu(), sf.cpu()


def _assert_exact(x_cpu, g_cpu, layout, config=None):
    packed, sf = _run(x_cpu, g_cpu, layout, config)
    ref_packed, ref_sf = reference.quantize(x_cpu, g_cpu, layout)
    assert torch.equal(sf.view(torch.uint8), ref_sf.view(torch.uint8)), "scales differ"
    bad = (packed != ref_packed).nonzero()
    assert bad.numel() == 0, f"{bad.shape[0]} packed bytes differ, first at {bad[:4].tolist()}"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("m,k", SHAPES)
def test_random_bit_exact(m, k, dtype, layout):
    x = _random(m, k, dtype, seed=m * 7919 + k)
    _assert_exact(x, _global_for(x), layout)


def _special(k: int, dtype) -> torch.Tensor:
    rows = torch.randn(10, k) * torch.logspace(-2, 2, 10).unsqueeze(1)
    rows[0] = 0.0  # all-zero row (every block scale 0)
    rows[1, :16] = 0.0
    rows[2, 3], rows[2, 20 % k], rows[2, 33 % k] = float("nan"), -float("nan"), float("nan")
    rows[3, 5], rows[3, 40 % k] = float("inf"), -float("inf")
    rows[4, :16] = torch.tensor([6.0, 5.0, 3.5, 2.5, 1.75, 1.25, 0.75, 0.25] * 2)  # e2m1 ties
    rows[5, :16] = -0.0
    rows[6, -16:] = 6e4 if dtype == torch.float16 else 1e30  # saturating block
    rows[7, :16] = 1e-7 if dtype == torch.float16 else 1e-39  # subnormal inputs
    rows[8, 16 % k:] = -rows[8, 16 % k:].abs()
    rows[9, :] = float("nan")  # an all-NaN row
    return rows.to(dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("g", [1.0, 448 * 6 / 3.0, 1e-3, 4.0e4])
def test_special_values_bit_exact(dtype, layout, g):
    # 13 random rows + 10 special ones, tiled past 128 rows so padding rows exist in both tiles.
    x = torch.cat([_random(13, 48, dtype, seed=3), _special(48, dtype)] * 6)  # (138, 48)
    _assert_exact(x, torch.tensor([g]), layout)


def test_saturating_global_scale():
    x = _random(64, 256, torch.bfloat16, seed=5)
    g = _global_for(x) * 1e3  # block scales saturate at 448 and values at +-6
    for layout in LAYOUTS:
        _assert_exact(x, g, layout)


@pytest.mark.parametrize("bpt,warps", [(1, 4), (2, 4), (4, 4), (8, 4), (4, 8), (2, 2)])
def test_every_config_is_exact(bpt, warps):
    from nvfp4_kit.kernels.quantize import QuantConfig

    x = _random(333, 4080, torch.bfloat16, seed=bpt * 10 + warps)
    for layout in LAYOUTS:
        _assert_exact(x, _global_for(x), layout, QuantConfig(bpt, warps))


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("m,k", [(1, 16), (7, 4080), (129, 5120)])
def test_quantize_dequantize_bit_exact(m, k, dtype):
    x = torch.cat([_random(m, k, dtype, seed=11), _special(k, dtype)])
    g = _global_for(x)
    out = torch.full(x.shape, float("nan"), dtype=torch.bfloat16, device="cuda")
    _q().quantize_dequantize_out(x.cuda(), g.cuda(), out)
    want = reference.quantize_dequantize(x, g).to(torch.bfloat16)
    assert torch.equal(out.cpu().view(torch.int16), want.view(torch.int16))


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_global_scale_out(dtype):
    x = _random(513, 272, dtype, seed=2)
    x[3, 7] = float("nan")
    out = torch.full((1,), 123.0, device="cuda")
    _q().global_scale_out(x.cuda(), out)
    amax = torch.nan_to_num(x.float().abs(), nan=0.0).amax()
    want = reference.global_scale_from_amax(amax).reshape(1)
    assert torch.equal(out.cpu(), want)
    _q().global_scale_out(torch.zeros(3, 16, dtype=dtype, device="cuda"), out)
    assert out.item() == float("inf")


def test_cuda_graph_capture_and_replay_with_new_inputs():
    m, k = 100, 4096
    x_static = torch.empty(m, k, dtype=torch.bfloat16, device="cuda")
    g_static = torch.empty(1, device="cuda")
    for layout in LAYOUTS:
        packed = torch.empty(m, k // 2, dtype=torch.uint8, device="cuda")
        sf = torch.empty(scale_shape(m, k, layout), dtype=torch.float8_e4m3fn, device="cuda")
        x0 = _random(m, k, torch.bfloat16, seed=1)
        x_static.copy_(x0)
        g_static.copy_(_global_for(x0))
        _q().quantize_out(x_static, g_static, layout, packed, sf)  # warm-up compiles
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            _q().quantize_out(x_static, g_static, layout, packed, sf)
        for seed in (2, 3):
            x = _random(m, k, torch.bfloat16, seed=seed)
            g = _global_for(x) * (1.5 if seed == 3 else 1.0)
            x_static.copy_(x)
            g_static.copy_(g)
            sf.view(torch.uint8).fill_(0x5A)
            graph.replay()
            torch.cuda.synchronize()
            ref_packed, ref_sf = reference.quantize(x, g, layout)
            assert torch.equal(packed.cpu(), ref_packed)
            assert torch.equal(sf.cpu().view(torch.uint8), ref_sf.view(torch.uint8))


def test_output_guards_name_the_argument():
    q = _q()
    x = torch.randn(4, 32, dtype=torch.bfloat16, device="cuda")
    g = torch.ones(1, device="cuda")
    packed = torch.empty(4, 16, dtype=torch.uint8, device="cuda")
    sf = torch.empty(4, 2, dtype=torch.float8_e4m3fn, device="cuda")
    with pytest.raises(ValueError, match="out_packed"):
        q.quantize_out(x, g, "linear", packed[:, :8], sf)
    with pytest.raises(ValueError, match="out_scale"):
        q.quantize_out(x, g, "swizzled_128x4", packed, sf)  # wants (128, 4)
    with pytest.raises(ValueError, match="out_scale"):
        q.quantize_out(x, g, "linear", packed, sf.view(torch.uint8))
    with pytest.raises(ValueError, match="global_scale"):
        q.quantize_out(x, g.cpu(), "linear", packed, sf)
    with pytest.raises(ValueError, match="global_scale"):
        q.quantize_out(x, torch.ones(2, device="cuda"), "linear", packed, sf)
    with pytest.raises(ValueError, match="x: must be contiguous"):
        q.quantize_out(torch.randn(32, 4, dtype=torch.bfloat16, device="cuda").t(), g, "linear",
                       packed, sf)
    with pytest.raises(ValueError, match="out"):
        q.quantize_dequantize_out(x, g, torch.empty(4, 32, device="cuda"))


_CHILD = textwrap.dedent("""
    import time, torch
    t0 = time.perf_counter()
    from nvfp4_kit import reference
    from nvfp4_kit.kernels import compile_cache, quantize
    x = torch.randn(257, 4080, dtype=torch.bfloat16)
    g = reference.global_scale_from_amax(x.float().abs().amax()).reshape(1)
    p = torch.empty(257, 2040, dtype=torch.uint8, device="cuda")
    s = torch.empty(384, 256, dtype=torch.float8_e4m3fn, device="cuda")
    t1 = time.perf_counter()
    quantize.quantize_out(x.cuda(), g.cuda(), "swizzled_128x4", p, s)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    rp, rs = reference.quantize(x, g, "swizzled_128x4")
    ok = torch.equal(p.cpu(), rp) and torch.equal(s.cpu().view(torch.uint8), rs.view(torch.uint8))
    st = compile_cache.stats()
    print(f"RESULT ok={ok} compiles={st['compiles']} disk_loads={st['disk_loads']} "
          f"first_call_s={t2 - t1:.3f} import_s={t1 - t0:.2f}")
""")


def test_disk_cache_reload_in_a_new_process(tmp_path):
    """First process compiles and writes the cache; a second one loads it and runs it exactly."""
    env = {**os.environ, "NVFP4_KIT_CACHE_DIR": str(tmp_path)}
    env.pop("NVFP4_KIT_DISABLE_DISK_CACHE", None)
    lines = []
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        lines.append(next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")))
    print("\n".join(lines))  # cold vs warm first-call time, shown with -s
    assert "ok=True compiles=1 disk_loads=0" in lines[0]
    assert "ok=True compiles=0 disk_loads=1" in lines[1]
