"""CPU: the quantize kernels compile for sm_90a and sm_100a; bad arguments raise clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from nvfp4_kit.kernels import quantize
from nvfp4_kit.kernels.quantize import QuantConfig

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU compile path (CUTE_DSL_ARCH)")


@cpu_only
def test_precompile_sm90a_compiles_every_kernel():
    keys = quantize.precompile("sm_90a")
    # 2 dtypes x (2 layouts + quantize-dequantize + amax)
    assert len(keys) == 8 and len(set(keys)) == 8
    assert any("swizzled_128x4" in k and "fp16" in k for k in keys)


@cpu_only
def test_compiles_for_sm100a_in_a_fresh_process(tmp_path):
    code = ("from nvfp4_kit.kernels import quantize, compile_cache\n"
            "keys = quantize.precompile('sm_100a')\n"
            "print('KEYS', len(keys), compile_cache.stats()['compiles'])\n")
    env = {**os.environ, "CUTE_DSL_ARCH": "sm_100a", "NVFP4_KIT_CACHE_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "KEYS 8 8" in res.stdout
    assert len(list((tmp_path / "kernels").glob("quantize_*.o"))) == 8


@cpu_only
def test_precompile_refuses_a_different_arch():
    with pytest.raises(ValueError, match="CUTE_DSL_ARCH=sm_100a"):
        quantize.precompile("sm_100a")


def _outs(m=4, k=32):
    return (torch.ones(1), torch.empty(m, k // 2, dtype=torch.uint8),
            torch.empty(m, k // 16, dtype=torch.float8_e4m3fn))


@pytest.mark.parametrize(
    "x,match",
    [
        (torch.randn(4, 32), "x: dtype torch.float32"),
        (torch.randn(4, 32).to(torch.int8), "x: dtype torch.int8"),
        (torch.randn(4, 40, dtype=torch.bfloat16), "x: K=40 must be a positive multiple of 16"),
        (torch.randn(2, 4, 32, dtype=torch.bfloat16), "x: expected 2-D"),
        (torch.randn(32, 4, dtype=torch.bfloat16).t(), "x: must be contiguous"),
        (torch.randn(4, 32, dtype=torch.bfloat16), "x: on cpu, expected a CUDA device"),
        ("not a tensor", "x: expected a torch.Tensor"),
    ],
)
def test_input_guards_raise_value_error_naming_x(x, match):
    g, packed, sf = _outs()
    with pytest.raises(ValueError, match=match):
        quantize.quantize_out(x, g, "linear", packed, sf)
    with pytest.raises(ValueError, match=match):
        quantize.quantize_dequantize_out(x, g, torch.empty(4, 32, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=match):
        quantize.global_scale_out(x, g)


def test_sizes_beyond_32_bit_indexing_are_rejected():
    quantize._check_size(8192, 16384)  # fine
    with pytest.raises(ValueError, match="too large"):
        quantize._check_size(2**27, 256)  # M*K/16 = 2^31
    with pytest.raises(ValueError, match="too large"):
        quantize._check_size(2**29 - 1, 16)  # padded swizzled scales: 2^29 x 4 bytes


def test_bad_layout_is_named():
    g, packed, sf = _outs()
    with pytest.raises(ValueError, match="layout='blocked'"):
        quantize.quantize_out(torch.randn(4, 32, dtype=torch.bfloat16), g, "blocked", packed, sf)


def test_configs_and_selection():
    assert QuantConfig(2, 8).name == "b2w8" and QuantConfig().to_dict() == {
        "blocks_per_thread": 1, "warps": 4}
    with pytest.raises(ValueError, match="blocks_per_thread=3"):
        QuantConfig(blocks_per_thread=3)
    with pytest.raises(ValueError, match="warps=5"):
        QuantConfig(warps=5)
    assert quantize.select_config(1, 4096) == QuantConfig(1, 4)
    for m in (1, 7, 128, 512, 4096, 32768):
        for k in (16, 128, 4096, 5120, 16384):
            assert quantize.select_config(m, k) in quantize._all_configs()
