"""The vLLM / SGLang adapters on CPU.

1. The engine-side suites (engine_side/vllm_side.py, engine_side/sglang_side.py) run in a subprocess
   against the real pinned sources: vllm==0.33.0 and sglang==0.5.23 unpacked from their wheels (no
   compiled extensions), plus a curated set of their import-time dependencies, without their torch pins.
   Each runs twice: on the tree patched by scripts/apply_patch.sh ("patched") and on the released tree
   with the plugin enabled by its environment variable ("plugin"). See those files for how deep it goes.
2. Engine-free unit tests of the shared glue (nvfp4_kit.adapters.layer_prep, plugins).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nvfp4_kit import dispatch, reference
from nvfp4_kit.adapters import layer_prep, plugins
from tests.patches.engines import REPO, engine_deps, run_apply_patch, site_packages

ENGINE_SIDE = Path(__file__).parent / "engine_side"


@pytest.fixture(autouse=True)
def _forget_prepared_layers():
    """prepare() registers layers with the process-wide selector (for describe()): leave none behind."""
    yield
    dispatch.reset()


@pytest.mark.parametrize("mode", ["patched", "plugin"])
@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_engine_side_suite(engine, mode, tmp_path):
    site = site_packages(engine, tmp_path / "site-packages")
    if mode == "patched":
        r = run_apply_patch(engine, "--site-packages", str(site))
        assert r.returncode == 0, r.stdout + r.stderr
    deps = engine_deps(engine)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NVFP4_KIT_", "VLLM_", "SGLANG_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(site), str(deps), str(ENGINE_SIDE), str(REPO)]),
        NVFP4_KIT_TEST_ENGINE_MODE=mode,
        NVFP4_KIT_CACHE_DIR=str(tmp_path / "kit_cache"),
        CUTE_DSL_ARCH="sm_90a",
        CUDA_VISIBLE_DEVICES="",  # the engines' own GPU probing must find nothing
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
           "--rootdir", str(ENGINE_SIDE), "--confcutdir", str(ENGINE_SIDE), "-W", "ignore::UserWarning",
           str(ENGINE_SIDE / f"{engine}_side.py")]
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "(no output)"
    print(f"{engine} {mode}: {summary}")
    detail = f"{r.stdout[-8000:]}\n{r.stderr[-3000:]}"
    assert r.returncode == 0, f"{engine} ({mode}) engine-side tests failed:\n{detail}"
    assert " passed" in summary and "failed" not in summary


def test_import_nvfp4_kit_never_imports_an_engine():
    code = (
        "import sys, nvfp4_kit, nvfp4_kit.ops, nvfp4_kit.adapters, nvfp4_kit.adapters.layer_prep, "
        "nvfp4_kit.adapters.plugins\n"
        "nvfp4_kit.adapters.plugins.vllm_plugin(); nvfp4_kit.adapters.plugins.sglang_plugin()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'sglang'))\n"
        "assert not bad, bad\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVFP4_KIT_")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_plugins_are_off_without_their_variable(monkeypatch):
    monkeypatch.delenv("NVFP4_KIT_VLLM", raising=False)
    monkeypatch.delenv("NVFP4_KIT_SGLANG", raising=False)
    assert plugins.vllm_plugin() is None and plugins.sglang_plugin() is None
    assert "nvfp4_kit.adapters.vllm" not in sys.modules and "nvfp4_kit.adapters.sglang" not in sys.modules


@pytest.mark.parametrize("cap,w4a16,expect", [
    (None, False, "no CUDA device"),
    ((8, 0), False, "SM80: nvfp4_kit has no NVFP4 GEMM"),
    ((8, 9), False, "SM89"),
    ((12, 0), False, "SM120"),
    ((10, 0), True, "W4A4 only"),
])
def test_unsupported_reason(cap, w4a16, expect):
    assert expect in layer_prep.unsupported_reason(cap, w4a16_checkpoint=w4a16)


def test_sm90_is_served_when_cutlass_dsl_is_installed():
    pytest.importorskip("cutlass")
    assert layer_prep.unsupported_reason((9, 0)) is None
    assert layer_prep.unsupported_reason((9, 0), w4a16_checkpoint=True) is None


def test_shard_scales_expand_per_output_channel():
    same = layer_prep.shard_scale_per_channel(torch.tensor([0.5, 0.5, 0.5]), [4, 2, 2], 8)
    assert same.tolist() == [0.5]
    per = layer_prep.shard_scale_per_channel(torch.tensor([1.0, 2.0, 3.0]), [4, 2, 2], 8)
    assert per.tolist() == [1.0] * 4 + [2.0] * 2 + [3.0] * 2
    with pytest.raises(ValueError, match="logical_widths"):
        layer_prep.shard_scale_per_channel(torch.tensor([1.0, 2.0]), [4, 2, 2], 8)


@pytest.mark.parametrize("n,k,match", [(64, 96, r"K=96 .* K % 64"), (60, 128, r"N=60 .* N % 8")])
def test_partition_checks_name_the_layer(n, k, match):
    with pytest.raises(ValueError, match=match) as err:
        layer_prep.check_partition("model.layers.3.mlp.down_proj", n, k)
    assert "model.layers.3.mlp.down_proj" in str(err.value)


def _shard(n, k, seed, scale):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * scale
    return reference.quantize_weight(w)


def test_fused_layer_with_different_shard_scales_is_exact():
    """Per-shard weight_scale_2 become a per-output-channel alpha: each shard dequantizes exactly."""
    k = 128
    shards = [_shard(64, k, 0, 0.01), _shard(32, k, 1, 0.1), _shard(32, k, 2, 1.0)]
    weight = torch.cat([s["weight"] for s in shards])
    scale = torch.cat([s["weight_scale"] for s in shards])
    ws2 = torch.stack([s["weight_scale_2"] for s in shards])
    pw = layer_prep.prepare(
        "qkv", weight, scale, layer_prep.shard_scale_per_channel(ws2, [64, 32, 32], 128), None,
        w4a16_checkpoint=True,
    )
    assert pw.alpha.numel() == 128
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    expected = torch.cat(
        [x.float() @ reference.dequantize(s["weight"], s["weight_scale"], 1 / s["weight_scale_2"]).T
         for s in shards], dim=1)
    out = layer_prep.forward(x, pw)
    torch.testing.assert_close(out.float(), expected, rtol=2**-7, atol=1e-4)


def test_forward_keeps_the_activation_dtype_and_adds_bias():
    s = _shard(64, 128, 4, 0.05)
    pw = layer_prep.prepare("o", s["weight"], s["weight_scale"], s["weight_scale_2"], None,
                            w4a16_checkpoint=True)
    x = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(5)).to(torch.float16)
    bias = torch.randn(64).to(torch.float16)
    out = layer_prep.forward(x, pw, bias)
    assert out.dtype == torch.float16 and out.shape == (2, 3, 64)
    w = reference.dequantize(s["weight"], s["weight_scale"], 1 / s["weight_scale_2"])
    # fp16 models: x is rounded to bf16 for the kit's GEMM, the bf16 result cast back, then bias added
    expected = (x.to(torch.bfloat16).float() @ w.T).to(torch.bfloat16).to(torch.float16) + bias
    torch.testing.assert_close(out, expected, rtol=2**-9, atol=2**-14)
