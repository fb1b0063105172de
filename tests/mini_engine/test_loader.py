"""Checkpoint loading: ModelOpt NVFP4, compressed-tensors NVFP4, bf16; errors name the tensor."""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mini_engine import LLM, SamplingParams
from mini_engine.layers.linear import Linear
from mini_engine.loader import resolve_model_path


def _copy_with(src, dst, edit):
    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    edit(sd)
    save_file(sd, str(dst / "model.safetensors"))
    return dst


def _greedy(path, **kw):
    llm = LLM(str(path), max_model_len=64, **kw)
    out = llm.generate({"prompt_token_ids": [0, 5, 9, 7]}, SamplingParams(temperature=0, max_tokens=5))
    return out[0].outputs[0].token_ids


@pytest.mark.parametrize("edit, needle", [
    (lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight_scale"), "model.layers.1.mlp.up_proj.weight_scale"),
    (lambda sd: sd.pop("model.norm.weight"), "model.norm.weight"),
    (lambda sd: sd.__setitem__("model.layers.0.self_attn.k_proj.weight_scale",
                               sd["model.layers.0.self_attn.k_proj.weight_scale"].float()),
     "model.layers.0.self_attn.k_proj.weight_scale: dtype"),
    (lambda sd: sd.__setitem__("model.layers.0.self_attn.o_proj.weight",
                               sd["model.layers.0.self_attn.o_proj.weight"][:, :64].contiguous()),
     "model.layers.0.self_attn.o_proj.weight: shape"),
    (lambda sd: sd.__setitem__("model.layers.0.mlp.down_proj.weight_scale_2", torch.tensor(-1.0)),
     "model.layers.0.mlp.down_proj.weight_scale_2"),
])
def test_bad_checkpoint_names_the_tensor(tiny_dirs, tmp_path, edit, needle):
    bad = _copy_with(tiny_dirs["nvfp4"], tmp_path / "bad", edit)
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        LLM(str(bad), max_model_len=64)


def test_missing_input_scale_names_the_tensor_or_layer(tiny_dirs, tmp_path):
    one_shard = _copy_with(tiny_dirs["nvfp4"], tmp_path / "one",
                           lambda sd: sd.pop("model.layers.0.self_attn.k_proj.input_scale"))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.input_scale: missing"):
        LLM(str(one_shard), max_model_len=64)
    whole_layer = _copy_with(tiny_dirs["nvfp4"], tmp_path / "whole",
                             lambda sd: sd.pop("model.layers.1.self_attn.o_proj.input_scale"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.o_proj: .*needs input_scale"):
        LLM(str(whole_layer), max_model_len=64, nvfp4_mode="w4a4")
    assert _greedy(whole_layer, nvfp4_mode="w4a16") == _greedy(tiny_dirs["nvfp4"], nvfp4_mode="w4a16")


def test_fp8_kv_scales_and_extras_are_ignored_with_a_warning(tiny_dirs, tmp_path, caplog):
    def add(sd):
        sd["model.layers.0.self_attn.k_proj.k_scale"] = torch.tensor(1.0)
        sd["model.layers.0.self_attn.v_proj.v_scale"] = torch.tensor(1.0)
    extra = _copy_with(tiny_dirs["nvfp4"], tmp_path / "extra", add)
    with caplog.at_level(logging.WARNING, logger="mini_engine"):
        toks = _greedy(extra)
    assert "k_scale" in caplog.text
    assert toks == _greedy(tiny_dirs["nvfp4"])


def _compressed_tensors(tiny_dirs, dst, edit=None):
    """The tiny NVFP4 checkpoint in llm-compressor's form (names, reciprocal global scales)."""
    def convert(sd):
        for name in [n for n in sd if n.endswith(".weight_scale_2")]:
            module = name[: -len(".weight_scale_2")]
            sd[f"{module}.weight_packed"] = sd.pop(f"{module}.weight")
            sd[f"{module}.weight_global_scale"] = (1.0 / sd.pop(name)).reshape(1)
            sd[f"{module}.input_global_scale"] = (1.0 / sd.pop(f"{module}.input_scale")).reshape(1)
        if edit is not None:
            edit(sd)
    ct = _copy_with(tiny_dirs["nvfp4"], dst, convert)
    (ct / "hf_quant_config.json").unlink()
    cfg = json.loads((ct / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
                                  "ignore": ["lm_head"]}
    (ct / "config.json").write_text(json.dumps(cfg))
    return ct


def test_compressed_tensors_form_loads_the_same_model(tiny_dirs, tmp_path):
    """llm-compressor names and inverse global scales; same numbers -> same generation."""
    assert _greedy(_compressed_tensors(tiny_dirs, tmp_path / "ct")) == _greedy(tiny_dirs["nvfp4"])


@pytest.mark.parametrize("edit, needle", [
    (lambda sd: sd.pop("model.layers.0.self_attn.v_proj.weight_packed"), "v_proj.weight_packed: missing"),
    (lambda sd: sd.pop("model.layers.0.self_attn.o_proj.weight_packed"), "o_proj.weight_packed: missing"),
    (lambda sd: sd.pop("model.layers.1.mlp.down_proj.weight_global_scale"),
     "down_proj.weight_global_scale: missing"),  # single-shard layers too
    (lambda sd: sd.__setitem__("model.layers.0.self_attn.k_proj.weight_global_scale", torch.zeros(1)),
     "k_proj.weight_global_scale: 0.0 must give a finite scale"),
    (lambda sd: sd.__setitem__("model.layers.0.self_attn.k_proj.weight_global_scale",
                               torch.tensor([7], dtype=torch.int32)),
     "k_proj.weight_global_scale: expected one float32 value, got torch.int32"),
])
def test_bad_compressed_tensors_checkpoint_names_its_tensor(tiny_dirs, tmp_path, edit, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        LLM(str(_compressed_tensors(tiny_dirs, tmp_path / "ct", edit)), max_model_len=64)


def test_fused_layer_is_exact_when_shard_global_scales_differ():
    from nvfp4_kit import reference

    torch.manual_seed(0)
    k, sizes = 64, [32, 16, 16]
    ws = [torch.randn(n, k) * s for n, s in zip(sizes, (0.02, 0.5, 3.0), strict=True)]  # very different amax
    lin = Linear(k, sizes, ["q", "k", "v"], quantized=True, dtype=torch.float32, device=torch.device("cpu"))
    refs = []
    for i, w in enumerate(ws):
        q = reference.quantize_weight(w)
        for kind in ("weight", "weight_scale", "weight_scale_2"):
            lin.load(i, kind, q[kind])
        lin.load(i, "input_scale", torch.tensor(0.01 * (i + 1)))
        refs.append(reference.dequantize(q["weight"], q["weight_scale"]) * q["weight_scale_2"])
    lin.finalize()
    assert lin.pw.alpha.numel() == sum(sizes) and float(lin.input_scale) == pytest.approx(0.03)
    x = torch.randn(3, k).bfloat16().float()
    expect = x @ torch.cat(refs).T
    assert torch.allclose(lin(x), expect, rtol=1e-2, atol=1e-3)


def test_unknown_model_error_says_how_to_get_one():
    with pytest.raises(ValueError, match="make_checkpoint"):
        resolve_model_path("nobody/not-a-cached-model")
    with pytest.raises(ValueError, match="not found"):
        resolve_model_path("/no/such/dir")


def test_quantize_on_load_matches_the_nvfp4_checkpoint(tiny_dirs):
    """--quantization nvfp4 on the bf16 checkpoint == the converted NVFP4 checkpoint (W4A16)."""
    assert _greedy(tiny_dirs["bf16"], quantization="nvfp4") == _greedy(tiny_dirs["nvfp4"])
    with pytest.raises(ValueError, match="modelopt_fp4"):
        LLM(str(tiny_dirs["bf16"]), quantization="modelopt_fp4")
