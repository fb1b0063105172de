"""Engine-side tests: the real vllm==0.33.0 sources (patched, or unpatched + plugin) imported on CPU.

Run by tests/nvfp4_kit/adapters/test_engines_on_cpu.py in a subprocess whose sys.path holds the
unpacked wheel (no compiled vllm._C), a curated set of vLLM's import-time dependencies, and this repo.
NVFP4_KIT_TEST_ENGINE_MODE=patched|plugin says which tree it is.

How deep: vLLM's own config validation (pydantic KernelConfig), kernel selection
(init_nvfp4_linear_kernel), ModelOpt / compressed-tensors linear methods and their parameter loaders
run for real. The GPU is faked (vLLM's current_platform reports CUDA + a compute capability; tensors
stay on CPU), so the kit computes with its pure-torch reference; outputs are compared with vLLM's own
NVFP4 math (nvfp4_emulation_utils: dequantize_to_dtype, ref_nvfp4_quant).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os

import pytest
import torch

# Import everything while vLLM still sees no GPU: several modules evaluate compiled-op capability
# checks at import time, which must not run against the faked CUDA platform below.
import vllm.config.kernel as kernel_config
import vllm.model_executor.kernels.linear as linear_kernels
import vllm.model_executor.layers.quantization.modelopt as modelopt
import vllm.model_executor.parameter as vllm_parameter
from checkpoint import activations, assert_bf16_close, make_shards
from vllm.config import KernelConfig, VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.quantization.compressed_tensors.schemes import (
    compressed_tensors_w4a4_nvfp4 as ct_nvfp4,
)
from vllm.model_executor.layers.quantization.utils import nvfp4_emulation_utils as vllm_nvfp4
from vllm.platforms import PlatformEnum, current_platform
from vllm.platforms.interface import DeviceCapability

from nvfp4_kit import dispatch, reference
from nvfp4_kit.adapters import plugins
from nvfp4_kit.adapters import vllm as adapter
from nvfp4_kit.backends import Fp4GemmBackend

MODE = os.environ["NVFP4_KIT_TEST_ENGINE_MODE"]
PATCHED = MODE == "patched"
K = 256
WIDTHS = [128, 64, 64]  # a fused qkv: q, k, v shards


@pytest.fixture(autouse=True)
def fake_gpu(monkeypatch):
    """vLLM believes it runs on CUDA SM90; the tensors stay on CPU."""
    def set_cc(major, minor):
        monkeypatch.setattr(current_platform, "get_device_capability",
                            lambda device_id=0: DeviceCapability(major, minor), raising=False)

    monkeypatch.setattr(current_platform, "_enum", PlatformEnum.CUDA, raising=False)
    monkeypatch.setattr(current_platform, "device_type", "cuda", raising=False)
    monkeypatch.setattr(current_platform, "is_cuda", lambda: True, raising=False)
    set_cc(9, 0)
    dispatch.reset()
    if not PATCHED:
        monkeypatch.setenv("NVFP4_KIT_VLLM", "1")
        plugins.vllm_plugin()
    return set_cc


@pytest.fixture(autouse=True)
def tp(monkeypatch):
    """Pretend to be rank `rank` of a tensor-parallel group of `size` (vLLM parameters read both)."""
    def set_rank(rank, size):
        monkeypatch.setattr(vllm_parameter, "get_tensor_model_parallel_rank", lambda: rank)
        monkeypatch.setattr(vllm_parameter, "get_tensor_model_parallel_world_size", lambda: size)

    set_rank(0, 1)
    return set_rank


def _config(linear_backend):
    return set_current_vllm_config(VllmConfig(kernel_config=KernelConfig(linear_backend=linear_backend)))


BACKEND = "nvfp4_kit" if PATCHED else "auto"  # plugin mode: auto + NVFP4_KIT_VLLM=1


def _vllm_dequant(packed, sf, decode_scale):
    """vLLM's own NVFP4 weight dequantization (linear scales)."""
    return vllm_nvfp4.dequantize_to_dtype(packed, sf, decode_scale, torch.float32, swizzle=False)


def _vllm_act_qdq(x, input_scale):
    """vLLM's reference activation quantize -> dequantize (the emulation kernel's math, CPU branch)."""
    global_scale = (1.0 / input_scale).float().reshape(())
    q, sf = vllm_nvfp4.ref_nvfp4_quant(x.float(), global_scale, 16)
    m, k = x.shape
    return (q.reshape(m, k // 16, 16) * (sf.unsqueeze(-1) / global_scale)).reshape(m, k)


def _modelopt_layer(algo, shards, k_rank, *, rank=0, prefix="model.layers.0.self_attn.qkv_proj"):
    """A ModelOpt linear built and loaded the way vLLM's MergedColumn/RowParallel layers do it."""
    qc = modelopt.ModelOptNvFp4Config(quant_method=algo, is_checkpoint_nvfp4_serialized=True, group_size=16)
    method = modelopt.build_linear_method(qc, algo, prefix)
    layer = torch.nn.Module()
    layer.prefix = prefix
    widths = [s.weight.shape[0] for s in shards]
    method.create_weights(layer, k_rank, widths, K, sum(widths), torch.bfloat16, weight_loader=None)
    offset = 0
    for i, s in enumerate(shards):
        n = s.weight.shape[0]
        if k_rank == K:  # column parallel (TP=1 here): one shard after the other along N
            layer.weight.load_merged_column_weight(s.weight, shard_offset=offset, shard_size=n)
            layer.weight_scale.load_merged_column_weight(s.weight_scale, shard_offset=offset, shard_size=n)
        else:  # row parallel: this rank's slice of K
            layer.weight.load_row_parallel_weight(s.weight)
            layer.weight_scale.load_row_parallel_weight(s.weight_scale)
        layer.weight_scale_2.load_merged_column_weight(s.weight_scale_2, shard_id=i)
        if algo == "NVFP4":  # W4A4 checkpoints carry the activation scale
            layer.input_scale.load_merged_column_weight(s.input_scale, shard_id=i)
        offset += n
    return method, layer


def test_backend_value_is_validated_by_vllm():
    if PATCHED:
        assert "nvfp4_kit" in kernel_config.LinearBackend.__args__
        assert KernelConfig(linear_backend="NVFP4-Kit").linear_backend == "nvfp4_kit"
        per_quant = KernelConfig(linear_backend_per_quant={"nvfp4_w4a16": "nvfp4_kit"})
        assert per_quant.linear_backend_per_quant == {"nvfp4_w4a16": "nvfp4_kit"}
    else:  # the plugin cannot add a CLI value: vLLM keeps rejecting it
        with pytest.raises(Exception, match="linear_backend"):
            KernelConfig(linear_backend="nvfp4_kit")
    with pytest.raises(Exception, match="linear_backend"):
        KernelConfig(linear_backend="not_a_backend")


def test_backend_spellings_exist_in_vllm():
    """nvfp4_kit.backends' vLLM names are real --linear-backend values and kernel classes."""
    values = set(kernel_config.LinearBackend.__args__)
    for member in Fp4GemmBackend:
        names = member.names
        if names.vllm and (PATCHED or names.vllm != "nvfp4_kit"):
            assert names.vllm in values, names.vllm
        if names.vllm_kernel and names.vllm_kernel != "NvFp4KitLinearKernel":
            assert isinstance(getattr(linear_kernels, names.vllm_kernel), type), names.vllm_kernel
    assert Fp4GemmBackend.NVFP4_KIT.names.vllm_kernel == adapter.NvFp4KitLinearKernel.__name__


def test_register_wraps_selector_everywhere_once():
    wrapped = linear_kernels.init_nvfp4_linear_kernel
    assert wrapped.__nvfp4_kit_original__ is not None
    assert modelopt.init_nvfp4_linear_kernel is wrapped  # the `from ... import` copy too
    assert ct_nvfp4.init_nvfp4_linear_kernel is wrapped
    adapter.register()
    adapter.register()
    assert linear_kernels.init_nvfp4_linear_kernel is wrapped
    cuda_list = linear_kernels._POSSIBLE_NVFP4_KERNELS[PlatformEnum.CUDA]
    assert cuda_list.count(adapter.NvFp4KitLinearKernel) == (0 if PATCHED else 1)
    if not PATCHED:
        assert cuda_list[0] is adapter.NvFp4KitLinearKernel  # plugin: first in the list


@pytest.mark.parametrize("use_a16", [False, True])
def test_selection_on_sm90(use_a16):
    with _config(BACKEND):
        kernel = linear_kernels.init_nvfp4_linear_kernel(use_a16=use_a16)
    assert type(kernel) is adapter.NvFp4KitLinearKernel
    assert kernel.input_quant_key() is None  # fusion passes never feed it pre-quantized input


@pytest.fixture
def marlin_available(monkeypatch):
    """Let vLLM's own Marlin kernel report itself usable (no compiled kernels on this CPU machine), so
    that a selection the kit leaves to vLLM visibly ends at vLLM's choice."""
    monkeypatch.setattr(linear_kernels.MarlinNvFp4LinearKernel, "is_supported",
                        classmethod(lambda cls, compute_capability=None: (True, None)))


@pytest.mark.parametrize("cc", [(8, 0), (8, 9), (12, 0)])
def test_other_gpus_keep_vllms_own_selection(fake_gpu, marlin_available, caplog, cc):
    fake_gpu(*cc)
    with _config(BACKEND), caplog.at_level(logging.WARNING):
        kernel = linear_kernels.init_nvfp4_linear_kernel(use_a16=True)
    assert type(kernel) is linear_kernels.MarlinNvFp4LinearKernel
    if PATCHED:  # an explicit --linear-backend nvfp4_kit says why it is not used
        assert "nvfp4_kit has no NVFP4 GEMM for this GPU" in caplog.text


def test_w4a16_on_sm100_stays_with_vllm(fake_gpu, marlin_available, monkeypatch):
    """FlashInfer's mm_fp4 is W4A4 only: weight-only layers on Blackwell keep vLLM's kernels."""
    fake_gpu(10, 0)
    monkeypatch.setattr(linear_kernels.FlashInferCuteDslNvFp4W4A16LinearKernel, "is_supported",
                        classmethod(lambda cls, compute_capability=None: (False, "test")))
    with _config(BACKEND):
        kernel = linear_kernels.init_nvfp4_linear_kernel(use_a16=True)
    assert type(kernel) is not adapter.NvFp4KitLinearKernel


def test_auto_without_env_is_vllms_choice(monkeypatch, marlin_available):
    monkeypatch.delenv("NVFP4_KIT_VLLM", raising=False)
    assert adapter.kit_requested("auto", False, (9, 0)) is not None
    with _config("auto"):
        kernel = linear_kernels.init_nvfp4_linear_kernel(use_a16=True)
    assert type(kernel) is linear_kernels.MarlinNvFp4LinearKernel


def test_disabled_kernels_opt_out(monkeypatch, marlin_available):
    import vllm.envs as envs

    monkeypatch.setattr(envs, "VLLM_DISABLED_KERNELS", ["NvFp4KitLinearKernel"], raising=False)
    with _config(BACKEND):
        kernel = linear_kernels.init_nvfp4_linear_kernel(use_a16=True)
    assert type(kernel) is linear_kernels.MarlinNvFp4LinearKernel


@pytest.mark.parametrize("cc,use_a16,served", [
    ((9, 0), False, True), ((9, 0), True, True), ((10, 0), False, True), ((10, 3), False, True),
    ((10, 0), True, False), ((8, 9), False, False), ((12, 0), False, False), ((8, 0), True, False),
])
def test_kit_requested_matrix(monkeypatch, cc, use_a16, served):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: object() if n == "flashinfer" else real(n, *a))
    assert (adapter.kit_requested("nvfp4_kit", use_a16, cc) is None) == served
    assert adapter.kit_requested("marlin", use_a16, cc) is not None


def test_modelopt_w4a16_fused_qkv_matches_vllm_math():
    shards = make_shards(WIDTHS, K)
    with _config(BACKEND):
        method, layer = _modelopt_layer("W4A16_NVFP4", shards, K)
        assert type(method.kernel) is adapter.NvFp4KitLinearKernel
        method.process_weights_after_loading(layer)
    pw = layer.nvfp4_kit_weight
    assert (pw.backend, pw.mode, pw.n, pw.k) == (Fp4GemmBackend.REFERENCE, "w4a16", sum(WIDTHS), K)
    assert pw.weight.data_ptr() == layer.weight.data_ptr()  # held once
    x, bias = activations(7, K), torch.randn(sum(WIDTHS)).to(torch.bfloat16)
    out = method.apply(layer, x, bias)
    w = torch.cat([_vllm_dequant(s.weight, s.weight_scale, s.weight_scale_2) for s in shards])
    assert_bf16_close(out, x.float() @ w.T + bias.float())


@pytest.mark.parametrize("kit_mode", ["w4a4", "w4a16"])
def test_modelopt_w4a4_checkpoint_matches_vllm_math(monkeypatch, kit_mode):
    """NVFP4 (W4A4) checkpoint. NVFP4_KIT_MODE=w4a4 emulates Blackwell: compare with vLLM's emulation
    kernel math; the SM90 default (w4a16) runs weight-only like Marlin: compare with x @ dequant(W)."""
    monkeypatch.setenv("NVFP4_KIT_MODE", kit_mode)
    shards = make_shards(WIDTHS, K, seed=3)
    with _config(BACKEND):
        method, layer = _modelopt_layer("NVFP4", shards, K)
        method.process_weights_after_loading(layer)
    assert layer.nvfp4_kit_weight.mode == kit_mode
    x = activations(5, K, seed=4)
    out = method.apply(layer, x)
    w = torch.cat([_vllm_dequant(s.weight, s.weight_scale, s.weight_scale_2) for s in shards])
    x_ref = _vllm_act_qdq(x, shards[0].input_scale) if kit_mode == "w4a4" else x.float()
    assert_bf16_close(out, x_ref @ w.T)


def test_activation_quantization_agrees_with_vllm_reference():
    """The kit's nvfp4::quantize (what a W4A4 kit layer runs) vs vLLM's ref_nvfp4_quant, code by code.

    Block scales must be identical. Elements may differ only where x * out_scale lies within an fp32
    ulp of an e2m1 rounding midpoint: the kit computes out_scale = 1 / (sf / global) (FlashInfer's
    CUDA algorithm, exact-division form), vLLM 1 / (sf * (1 / global)); those two can differ by one ulp
    and flip a tie to the neighbouring e2m1 value. bf16 inputs with a "round" global scale hit exact
    ties often (measured here: ~0.15% of elements).
    """
    m, k = 64, 1024
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(7)).to(torch.bfloat16) * 3
    global_scale = torch.tensor([2688.0 / 9.0])
    packed, sf = torch.ops.nvfp4.quantize(x, global_scale, "linear", "reference")
    ours = reference.dequantize(packed, sf)  # e2m1 * sf
    q, vsf = vllm_nvfp4.ref_nvfp4_quant(x.float(), global_scale.reshape(()), 16)
    theirs = (q.reshape(m, k // 16, 16) * vsf.unsqueeze(-1)).reshape(m, k)
    assert torch.equal(sf.float(), vsf)
    differ = ours != theirs
    sf_full = sf.float().repeat_interleave(16, dim=1)
    scaled = (x.float() * (1.0 / (sf_full / global_scale))).abs()[differ]
    midpoints = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    distance = (scaled[:, None] - midpoints[None, :]).abs().amin(dim=1)
    assert bool((distance <= 4e-7 * scaled.clamp(min=1)).all()), "a difference that is not a rounding tie"
    step = (ours[differ] - theirs[differ]).abs() / sf_full[differ]
    assert bool((step <= 2.0).all())  # neighbouring e2m1 values (grid spacing 0.5 / 1 / 2)
    assert differ.float().mean().item() < 0.005, differ.float().mean().item()


@pytest.mark.parametrize("tp_size", [2, 4])
def test_row_parallel_ranks_sum_to_the_full_layer(tp, tp_size):
    """o_proj / down_proj: each rank holds K/tp; the engine all-reduces the partial outputs."""
    shard = make_shards([64], K, seed=5)[0]
    x = activations(3, K, seed=6)
    total = torch.zeros(3, 64)
    for rank in range(tp_size):
        tp(rank, tp_size)
        with _config(BACKEND):
            method, layer = _modelopt_layer("W4A16_NVFP4", [shard], K // tp_size, prefix="o_proj")
            method.process_weights_after_loading(layer)
        cols = slice(rank * K // tp_size, (rank + 1) * K // tp_size)
        total += method.apply(layer, x[:, cols]).float()
    expected = x.float() @ _vllm_dequant(shard.weight, shard.weight_scale, shard.weight_scale_2).T
    torch.testing.assert_close(total, expected, rtol=2**-6, atol=expected.abs().max().item() * 2**-7)


def test_rank_k_not_multiple_of_64_is_a_clear_error(tp):
    tp(1, 8)  # K=256 over 8 ranks: 32 per rank
    with _config(BACKEND):
        method, layer = _modelopt_layer("W4A16_NVFP4", make_shards([64], K), K // 8, prefix="down_proj")
        with pytest.raises(ValueError, match=r"layer 'down_proj' has K=32 .* tensor-parallel"):
            method.process_weights_after_loading(layer)


def test_compressed_tensors_nvfp4_scheme_uses_the_kit():
    """compressed-tensors stores encode-side global scales (1/ModelOpt's); vLLM normalizes them."""
    shards = make_shards([96], K, seed=8)
    s = shards[0]
    with _config(BACKEND):
        scheme = ct_nvfp4.CompressedTensorsW4A4Fp4(use_a16=False)
        assert type(scheme.kernel) is adapter.NvFp4KitLinearKernel
        layer = torch.nn.Module()
        scheme.create_weights(layer, [96], K, torch.bfloat16, weight_loader=None)
        layer.weight_packed.data.copy_(s.weight)
        layer.weight_scale.data.copy_(s.weight_scale)
        layer.weight_global_scale.data.fill_(1.0 / s.weight_scale_2.item())
        layer.input_global_scale.data.fill_(1.0 / s.input_scale.item())
        scheme.process_weights_after_loading(layer)
    x = activations(4, K, seed=9)
    out = scheme.apply_weights(layer, x)
    assert_bf16_close(out, x.float() @ _vllm_dequant(s.weight, s.weight_scale, s.weight_scale_2).T)


def test_forward_traces_under_torch_compile():
    """vLLM compiles the model: the kit layer must trace with fullgraph (custom ops + fakes)."""
    shards = make_shards([64], K, seed=10)
    with _config(BACKEND):
        method, layer = _modelopt_layer("W4A16_NVFP4", shards, K, prefix="gate")
        method.process_weights_after_loading(layer)
    x = activations(6, K, seed=11)
    compiled = torch.compile(lambda t: method.apply(layer, t), backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), method.apply(layer, x))


def test_plugin_entry_point(monkeypatch):
    """The `vllm.general_plugins` entry point, loaded by vLLM's own plugin loader."""
    group = importlib.metadata.entry_points(group="vllm.general_plugins")
    eps = [ep for ep in group if ep.name == "nvfp4_kit"]
    if not eps:
        pytest.skip("nvfp4-kit's entry points are not installed (pyproject.toml not yet updated)")
    assert eps[0].load() is plugins.vllm_plugin
    from vllm.plugins import load_general_plugins

    monkeypatch.setenv("NVFP4_KIT_VLLM", "1")
    load_general_plugins()  # vLLM's own loader, as every vLLM process runs it
    assert linear_kernels._POSSIBLE_NVFP4_KERNELS[PlatformEnum.CUDA][0] is adapter.NvFp4KitLinearKernel
