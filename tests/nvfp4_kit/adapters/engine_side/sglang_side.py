"""Engine-side tests: the real sglang==0.5.23 sources (patched, or unpatched + plugin) imported on CPU.

Run by tests/nvfp4_kit/adapters/test_engines_on_cpu.py in a subprocess whose sys.path holds the
unpacked wheel (no compiled extensions), a curated set of SGLang's import-time dependencies, and this
repo; torchvision is an import-only placeholder (torchvision_shim.py). NVFP4_KIT_TEST_ENGINE_MODE says
whether the tree was patched ("patched") or the plugin is used on the released tree ("plugin").

How deep: SGLang's CLI parser (ServerArgs), Fp4GemmRunnerBackend and initialize_fp4_gemm_config, its
ModelOpt NVFP4 linear methods and their parameter loaders, and its HookRegistry run for real. The GPU
is faked (SGLang's capability probes and the adapter's are monkeypatched; tensors stay on CPU), so the
kit computes with its pure-torch reference; results are compared with SGLang's own NVFP4 reference
dequantization (sglang/test/quant_ref_utils.py, which reads the 128x4-swizzled scales SGLang builds
with its own swizzle_blockscale).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
from types import SimpleNamespace

import torchvision_shim

torchvision_shim.install()

import pytest  # noqa: E402
import sglang.srt.layers.quantization.modelopt_quant as modelopt  # noqa: E402
import sglang.srt.runtime_context as runtime_context  # noqa: E402
import sglang.test.quant_ref_utils as sglang_ref  # noqa: E402
import torch  # noqa: E402
from checkpoint import activations, assert_bf16_close, make_shards  # noqa: E402
from sglang.srt.layers.quantization import fp4_utils  # noqa: E402
from sglang.srt.layers.quantization.utils import swizzle_blockscale  # noqa: E402
from sglang.srt.plugins.hook_registry import HookRegistry  # noqa: E402

from nvfp4_kit import dispatch, reference  # noqa: E402
from nvfp4_kit.adapters import layer_prep, plugins  # noqa: E402
from nvfp4_kit.adapters import sglang as adapter  # noqa: E402
from nvfp4_kit.backends import Fp4GemmBackend  # noqa: E402

MODE = os.environ["NVFP4_KIT_TEST_ENGINE_MODE"]
PATCHED = MODE == "patched"
K = 256
WIDTHS = [128, 64, 64]
if not PATCHED:  # what sglang.srt.plugins.load_plugins() does with our entry point
    os.environ["NVFP4_KIT_SGLANG"] = "1"
    plugins.sglang_plugin()
    HookRegistry.apply_hooks()


@pytest.fixture
def gpu(monkeypatch):
    """gpu(capability, requested): SGLang initializes its FP4 backend as on that GPU with that flag."""
    def start(capability=(9, 0), requested="nvfp4_kit" if PATCHED else "auto"):
        exec_cfg = SimpleNamespace(kernel=SimpleNamespace(fp4_gemm_runner_backend=requested))
        monkeypatch.setattr(fp4_utils, "get_exec", lambda: exec_cfg)
        monkeypatch.setattr(runtime_context, "get_exec", lambda: exec_cfg)
        monkeypatch.setattr(fp4_utils, "is_cuda", lambda: True)
        monkeypatch.setattr(fp4_utils, "get_device_capability", lambda *a: capability)
        platform = SimpleNamespace(is_sm100=capability[0] == 10)
        monkeypatch.setattr(fp4_utils, "get_platform", lambda: platform)
        monkeypatch.setattr(adapter, "_capability", lambda: capability)
        monkeypatch.setattr(fp4_utils, "FP4_GEMM_RUNNER_BACKEND", None)
        monkeypatch.setattr(adapter, "_decision", None)
        fp4_utils.initialize_fp4_gemm_config()  # hooked: the kit decides right after SGLang
        return fp4_utils.get_fp4_gemm_runner_backend()

    dispatch.reset()
    return start


@pytest.fixture
def flashinfer_importable(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: object() if n == "flashinfer" else real(n, *a))


def _layer(method_cls, shards, k_rank=K, *, rank=0, w4a4=True):
    """A ModelOpt NVFP4 linear created and loaded through SGLang's own parameter loaders."""
    qc = modelopt.ModelOptFp4Config(is_checkpoint_nvfp4_serialized=True, group_size=16)
    method = method_cls(qc)
    layer = torch.nn.Module()
    widths = [s.weight.shape[0] for s in shards]
    method.create_weights(layer, k_rank, widths, K, sum(widths), torch.bfloat16, weight_loader=None)
    offset = 0
    for i, s in enumerate(shards):
        n = s.weight.shape[0]
        if k_rank == K:
            for name, t in (("weight", s.weight), ("weight_scale", s.weight_scale)):
                getattr(layer, name).load_merged_column_weight(
                    t, shard_offset=offset, shard_size=n, tp_rank=0, use_presharded_weights=False)
        else:
            layer.weight.load_row_parallel_weight(s.weight, tp_rank=rank)
            layer.weight_scale.load_row_parallel_weight(s.weight_scale, tp_rank=rank)
        layer.weight_scale_2.load_merged_column_weight(s.weight_scale_2, shard_id=i)
        if w4a4:
            layer.input_scale.load_merged_column_weight(s.input_scale, shard_id=i)
        offset += n
    return method, layer


def _sglang_dequant(packed, sf_linear, decode_scale):
    """SGLang's reference NVFP4 dequantization (it reads 128x4-swizzled scales)."""
    return sglang_ref.dequantize_nvfp4_to_dtype(
        packed, swizzle_blockscale(sf_linear), (1.0 / decode_scale).float(), torch.float32)


def test_backend_value_and_cli_choice():
    parser = argparse.ArgumentParser()
    from sglang.srt.server_args import ServerArgs

    ServerArgs.add_cli_args(parser)
    if PATCHED:
        assert fp4_utils.Fp4GemmRunnerBackend("nvfp4_kit") is fp4_utils.Fp4GemmRunnerBackend.NVFP4_KIT
        args = parser.parse_args(["--model-path", "m", "--fp4-gemm-backend", "nvfp4_kit"])
        assert args.fp4_gemm_runner_backend == "nvfp4_kit"
        assert Fp4GemmBackend.parse("nvfp4_kit").names.sglang == "nvfp4_kit"
    else:  # without the patch SGLang keeps rejecting the value; the plugin rides on `auto`
        with pytest.raises(ValueError):
            fp4_utils.Fp4GemmRunnerBackend("nvfp4_kit")
        with pytest.raises(SystemExit):
            parser.parse_args(["--model-path", "m", "--fp4-gemm-backend", "nvfp4_kit"])
    sglang_values = {m.value for m in fp4_utils.Fp4GemmRunnerBackend}
    for member in fp4_utils.Fp4GemmRunnerBackend:  # our names match SGLang's spellings, both ways
        assert Fp4GemmBackend.parse(member.value).names.sglang == member.value
    for member in Fp4GemmBackend:
        if member.names.sglang and (PATCHED or member.names.sglang != "nvfp4_kit"):
            assert member.names.sglang in sglang_values, member.names.sglang


def test_hooks_are_in_place():
    for target, _hook in adapter.HOOKS:
        owner_path, attr = target.rsplit(".", 1)
        import pkgutil

        current = vars(pkgutil.resolve_name(owner_path))[attr]
        if PATCHED:
            assert getattr(current, "__nvfp4_kit_hook__", False), target
        else:
            assert target in HookRegistry._patched and hasattr(current, "__wrapped__"), target


@pytest.mark.parametrize("cap", [(9, 0), (10, 0), (10, 3)])
def test_selected_where_the_kit_serves(gpu, flashinfer_importable, cap):
    backend = gpu(cap)
    assert adapter.kit_selected()
    # patched: SGLang's enum says nvfp4_kit; plugin: SGLang keeps its own value, the hooks take over
    expected = "nvfp4_kit" if PATCHED else ("flashinfer_cutedsl" if cap[0] == 10 else "marlin")
    assert backend.value == expected


@pytest.mark.parametrize(
    "cap,fallback", [((8, 0), "marlin"), ((8, 9), "marlin"), ((12, 0), "flashinfer_cutlass")]
)
def test_other_gpus_keep_sglangs_backend(gpu, cap, fallback):
    backend = gpu(cap)
    assert not adapter.kit_selected()
    assert backend.value == fallback  # an explicit nvfp4_kit is replaced by what `auto` picks there


def test_not_selected_without_the_flag(gpu, monkeypatch):
    monkeypatch.delenv("NVFP4_KIT_SGLANG", raising=False)
    backend = gpu((9, 0), requested="marlin")
    assert not adapter.kit_selected() and backend.value == "marlin"
    assert adapter.decide("auto", "auto", (9, 0))[0] is False  # auto without NVFP4_KIT_SGLANG


def test_w4a4_checkpoint_fused_qkv_is_exact_per_shard(gpu):
    """Shards with different weight_scale_2: the kit keeps each exact (per-channel alpha), where
    SGLang's own path takes their max."""
    gpu((9, 0))
    shards = make_shards(WIDTHS, K, shared_global=False)
    method, layer = _layer(modelopt.ModelOptFp4LinearMethod, shards)
    method.process_weights_after_loading(layer)
    pw = layer.nvfp4_kit_weight
    assert (pw.backend, pw.mode, pw.alpha.numel()) == (Fp4GemmBackend.REFERENCE, "w4a16", sum(WIDTHS))
    x = activations(7, K)
    out = method.apply(layer, x)
    exact = torch.cat([_sglang_dequant(s.weight, s.weight_scale, s.weight_scale_2) for s in shards])
    assert_bf16_close(out, x.float() @ exact.T)
    ws2_max = torch.stack([s.weight_scale_2 for s in shards]).max()
    with_max = torch.cat([_sglang_dequant(s.weight, s.weight_scale, ws2_max) for s in shards])
    ref = x.float() @ exact.T
    assert (x.float() @ with_max.T - ref).abs().max() > 0.1 * ref.abs().max()


def test_w4a4_mode_matches_sglang_dequant_of_both_operands(gpu, monkeypatch):
    monkeypatch.setenv("NVFP4_KIT_MODE", "w4a4")
    gpu((9, 0))
    shards = make_shards(WIDTHS, K, seed=3)
    method, layer = _layer(modelopt.ModelOptFp4LinearMethod, shards)
    method.process_weights_after_loading(layer)
    assert layer.nvfp4_kit_weight.mode == "w4a4"
    x, bias = activations(5, K, seed=4), torch.randn(sum(WIDTHS)).to(torch.bfloat16)
    out = method.apply(layer, x, bias)
    in_scale = shards[0].input_scale
    x_packed, x_sf = reference.quantize(x, 1.0 / in_scale)  # what nvfp4::quantize computes on CPU
    x_dq = _sglang_dequant(x_packed, x_sf, in_scale)
    w = torch.cat([_sglang_dequant(s.weight, s.weight_scale, s.weight_scale_2) for s in shards])
    assert_bf16_close(out, x_dq @ w.T + bias.float())


def test_w4a16_checkpoint_runs_on_the_kit_instead_of_marlin(gpu):
    gpu((9, 0))
    shards = make_shards([96], K, seed=5)
    method, layer = _layer(modelopt.ModelOptNvFp4A16LinearMethod, shards, w4a4=False)
    method.process_weights_after_loading(layer)
    assert not hasattr(layer, "workspace")  # Marlin's repack did not run
    x = activations(3, K, seed=6)
    s = shards[0]
    expected = x.float() @ _sglang_dequant(s.weight, s.weight_scale, s.weight_scale_2).T
    assert_bf16_close(method.apply(layer, x), expected)


def test_w4a16_checkpoint_on_sm100_stays_with_sglang(gpu, flashinfer_importable):
    gpu((10, 0))
    method, layer = _layer(modelopt.ModelOptNvFp4A16LinearMethod, make_shards([96], K), w4a4=False)
    calls = []
    adapter._process_hook(lambda m, lyr: calls.append(lyr), method, layer)
    assert calls == [layer] and not hasattr(layer, "nvfp4_kit_weight")


def test_layers_are_sglangs_when_not_selected(gpu, monkeypatch):
    monkeypatch.delenv("NVFP4_KIT_SGLANG", raising=False)
    gpu((8, 9))
    method, layer = _layer(modelopt.ModelOptFp4LinearMethod, make_shards([64], K))
    calls = []
    adapter._process_hook(lambda m, lyr: calls.append("process"), method, layer)
    adapter._apply_hook(lambda m, lyr, x, b=None: calls.append("apply"), method, layer, activations(1, K))
    assert calls == ["process", "apply"]


def test_compressed_tensors_w4a4_scheme_on_sm100_uses_the_kit(gpu, flashinfer_importable):
    """SGLang's compressed-tensors W4A4 NVFP4 scheme (SM100+) calls fp4_gemm with the backend's name:
    the kit takes those layers over too. Its checkpoints hold encode-side global scales."""
    from sglang.srt.layers.quantization.compressed_tensors.schemes.compressed_tensors_w4a4_nvfp4 import (
        CompressedTensorsW4A4Fp4,
    )

    gpu((10, 0))
    shards = make_shards([64, 32], K, seed=12, shared_global=False)
    scheme, layer = CompressedTensorsW4A4Fp4(), torch.nn.Module()
    scheme.create_weights(layer, [64, 32], K, torch.bfloat16, weight_loader=None)
    layer.weight_packed.data.copy_(torch.cat([s.weight for s in shards]))
    layer.weight_scale.data.copy_(torch.cat([s.weight_scale for s in shards]))
    layer.weight_global_scale.data.copy_(torch.stack([1.0 / s.weight_scale_2 for s in shards]))
    layer.input_global_scale.data.copy_(torch.stack([1.0 / s.input_scale for s in shards]))
    scheme.process_weights_after_loading(layer)
    assert layer.nvfp4_kit_weight.alpha.numel() == 96  # per-shard scales kept exact
    x = activations(4, K, seed=13)
    w = torch.cat([_sglang_dequant(s.weight, s.weight_scale, s.weight_scale_2) for s in shards])
    assert_bf16_close(scheme.apply_weights(layer, x), x.float() @ w.T)


@pytest.mark.parametrize("tp_size", [2, 4])
def test_row_parallel_ranks_sum_to_the_full_layer(gpu, tp_size):
    gpu((9, 0))
    shard = make_shards([64], K, seed=7)[0]
    x = activations(3, K, seed=8)
    total = torch.zeros(3, 64)
    for rank in range(tp_size):
        method, layer = _layer(modelopt.ModelOptFp4LinearMethod, [shard], K // tp_size, rank=rank)
        method.process_weights_after_loading(layer)
        cols = slice(rank * K // tp_size, (rank + 1) * K // tp_size)
        total += method.apply(layer, x[:, cols]).float()
    expected = x.float() @ _sglang_dequant(shard.weight, shard.weight_scale, shard.weight_scale_2).T
    torch.testing.assert_close(total, expected, rtol=2**-6, atol=expected.abs().max().item() * 2**-7)


def test_rank_k_not_multiple_of_64_is_a_clear_error(gpu):
    gpu((9, 0))
    method, layer = _layer(modelopt.ModelOptFp4LinearMethod, make_shards([64], K), K // 8, rank=3)
    with pytest.raises(ValueError, match=r"K=32 .* tensor-parallel"):
        method.process_weights_after_loading(layer)


def test_fused_swiglu_path_is_off_for_kit_layers(gpu, flashinfer_importable):
    cutedsl = fp4_utils.Fp4GemmRunnerBackend.FLASHINFER_CUTEDSL
    gpu((10, 0))
    assert adapter.kit_selected() and cutedsl.supports_swiglu_fusion() is False
    gpu((12, 0), requested="flashinfer_cutedsl")
    assert not adapter.kit_selected() and cutedsl.supports_swiglu_fusion() is True


def test_qwen35_fused_silu_quant_is_off_once_the_kit_is_selected(gpu, monkeypatch):
    """Qwen3.5's dense MLP would hand down_proj an (fp4, scale) tuple; SGLang's kill switch stops it."""
    switch = "SGLANG_DISABLE_SILU_FP4_QUANT_FUSION"
    qwen35 = os.path.join(os.path.dirname(importlib.util.find_spec("sglang").origin), "srt/models/qwen3_5.py")
    with open(qwen35) as f:  # the pinned SGLang reads the switch when it builds the MLP
        assert f'os.environ.get("{switch}", "0") == "1"' in f.read()
    monkeypatch.delenv(switch, raising=False)
    gpu((12, 0), requested="flashinfer_cutedsl")
    assert not adapter.kit_selected() and switch not in os.environ
    gpu((9, 0))
    assert adapter.kit_selected() and os.environ[switch] == "1"


def test_an_explicit_fusion_switch_is_overridden_with_a_warning(gpu, monkeypatch, caplog):
    switch = "SGLANG_DISABLE_SILU_FP4_QUANT_FUSION"
    monkeypatch.setenv(switch, "0")
    with caplog.at_level("WARNING", logger="nvfp4_kit.adapters.sglang"):
        gpu((9, 0))
        assert adapter.kit_selected()
    assert os.environ[switch] == "1" and f"set {switch}=1 (was '0')" in caplog.text


def test_patch_and_plugin_together_compute_once(gpu, monkeypatch):
    """Both install paths active: the outer hook passes through, the kit runs once per call."""
    if not PATCHED:
        pytest.skip("needs the patched tree")
    monkeypatch.setenv("NVFP4_KIT_SGLANG", "1")
    plugins.sglang_plugin()
    HookRegistry.apply_hooks()
    gpu((9, 0))
    method, layer = _layer(modelopt.ModelOptFp4LinearMethod, make_shards([64], K, seed=9))
    method.process_weights_after_loading(layer)
    calls = []
    real = layer_prep.forward
    monkeypatch.setattr(layer_prep, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = activations(2, K)
    assert torch.equal(method.apply(layer, x), real(x, layer.nvfp4_kit_weight)) and calls == [1]


def test_plugin_entry_point(monkeypatch):
    group = importlib.metadata.entry_points(group="sglang.srt.plugins")
    eps = [ep for ep in group if ep.name == "nvfp4_kit"]
    if not eps:
        pytest.skip("nvfp4-kit's entry points are not installed (pyproject.toml not yet updated)")
    assert eps[0].load() is plugins.sglang_plugin
    from sglang.srt.plugins import load_plugins

    monkeypatch.setenv("NVFP4_KIT_SGLANG", "1")
    load_plugins()  # SGLang's own loader (runs our entry point, then HookRegistry.apply_hooks)
    for target, _hook in adapter.HOOKS:
        assert target in HookRegistry._patched, target
