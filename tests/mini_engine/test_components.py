"""Small parts: SamplingParams, EngineConfig, rope scaling vs transformers, sampler, detokenizer,
make_checkpoint layout."""

import json

import pytest
import torch

from mini_engine.config import EngineConfig
from mini_engine.layers.rotary import rope_inv_freq
from mini_engine.layers.sampler import Sampler
from mini_engine.sampling_params import SamplingParams


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": -1}, "temperature"), ({"top_k": -2}, "top_k"), ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"), ({"stop": [""]}, "stop"), ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"seed": 1.5}, "seed"), ({"ignore_eos": "yes"}, "ignore_eos"),
])
def test_sampling_params_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    ({"dtype": "fp8"}, "dtype"), ({"max_num_seqs": 0}, "max_num_seqs"), ({"block_size": 5}, "block_size"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"), ({"load_format": "x"}, "load_format"),
    ({"max_num_seqs": 64, "max_num_batched_tokens": 32}, "max_num_batched_tokens"),
])
def test_engine_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EngineConfig(model="tiny", **kwargs)


def test_llama3_rope_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from mini_engine.presets import preset_config

    cfg = preset_config("llama-3.1-8b")
    hf = LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"})
    expect, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    got = rope_inv_freq(128, cfg["rope_theta"], cfg["rope_scaling"])
    assert torch.allclose(got, expect.float(), rtol=1e-6, atol=0)


def test_sampler_top_k_top_p_and_greedy():
    s = Sampler(torch.device("cpu"), seed=0)
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 1.0]] * 2000)
    greedy = s(logits[:1], [SamplingParams(temperature=0)], [None])
    assert greedy.tolist() == [1]
    topk = s(logits, [SamplingParams(temperature=1.0, top_k=2)] * 2000, [None] * 2000)
    assert set(topk.tolist()) == {1, 2}
    probs = torch.softmax(logits[0], 0)  # top-p 0.6 keeps exactly {1, 2} (0.50 + 0.45 > 0.6)
    assert probs[1] < 0.6 < probs[1] + probs[2]
    topp = s(logits, [SamplingParams(temperature=1.0, top_p=0.6)] * 2000, [None] * 2000)
    assert set(topp.tolist()) == {1, 2}
    free = s(logits, [SamplingParams(temperature=1.0)] * 2000, [None] * 2000)
    freq = torch.bincount(free, minlength=5).float() / 2000
    assert torch.allclose(freq, probs, atol=0.04)  # an unbiased draw from softmax(logits)


def test_detokenizer_streams_what_decode_returns():
    from mini_engine.presets import preset_tokenizer
    from mini_engine.tokenizer import IncrementalDetokenizer

    tok = preset_tokenizer("tiny")
    text = "héllo wörld, 日本語 — done.\n  indented"
    ids = tok(text, add_special_tokens=False).input_ids
    d = IncrementalDetokenizer(tok)
    assert "".join(d.add(i) for i in ids) == text == tok.decode(ids)


def test_llama3_tokenizer_is_the_real_one():
    pytest.importorskip("llama_models")
    from mini_engine.presets import preset_tokenizer

    tok = preset_tokenizer("llama-3.1-8b")
    assert len(tok) == 128256 and tok("Hello world").input_ids == [128000, 9906, 1917]
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    chat = chat["input_ids"] if isinstance(chat, dict) or hasattr(chat, "keys") else chat
    assert chat[:2] == [128000, 128006] and chat[-4:] == [128006, 78191, 128007, 271]


def test_nvfp4_checkpoint_is_the_bf16_model_quantized(tiny_dirs):
    """Same names as the bf16 one plus ModelOpt's scales; dequantized weights within e2m1 error."""
    from safetensors.torch import load_file

    from nvfp4_kit import reference

    bf16 = load_file(str(tiny_dirs["bf16"] / "model.safetensors"))
    fp4 = load_file(str(tiny_dirs["nvfp4"] / "model.safetensors"))
    name = "model.layers.1.mlp.gate_proj"
    w, sf, ws2 = fp4[f"{name}.weight"], fp4[f"{name}.weight_scale"], fp4[f"{name}.weight_scale_2"]
    assert w.dtype == torch.uint8 and sf.dtype == torch.float8_e4m3fn and ws2.shape == ()
    assert fp4[f"{name}.input_scale"].dtype == torch.float32
    w = reference.dequantize(w, sf) * ws2
    ref = bf16[f"{name}.weight"].float()
    assert ((w - ref).norm() / ref.norm()) < 0.15  # 4-bit weights: ~10% relative error
    assert torch.equal(fp4["lm_head.weight"], bf16["lm_head.weight"])
    q = json.loads((tiny_dirs["nvfp4"] / "hf_quant_config.json").read_text())["quantization"]
    assert q["quant_algo"] == "NVFP4" and q["group_size"] == 16 and q["exclude_modules"] == ["lm_head"]


def test_from_conversion_copies_the_tokenizer(tiny_dirs, tmp_path):
    from mini_engine.make_checkpoint import main

    assert main(["--from", str(tiny_dirs["bf16"]), "--out", str(tmp_path / "conv"), "--device", "cpu"]) == 0
    copied = (tmp_path / "conv" / "tokenizer.json").read_bytes()
    assert copied == (tiny_dirs["bf16"] / "tokenizer.json").read_bytes()
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "conv" / "model.safetensors"))
    b = load_file(str(tiny_dirs["nvfp4"] / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(a[q], b[q])
    assert main(["--from", str(tiny_dirs["nvfp4"]), "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2


def test_from_conversion_of_a_config_without_num_key_value_heads(tiny_dirs, tmp_path):
    """LLaMA-1-style configs omit num_key_value_heads (= num_attention_heads), as the loader reads it."""
    import shutil

    from safetensors.torch import load_file, save_file

    from mini_engine.make_checkpoint import main, random_state_dict

    src = tmp_path / "mha"
    shutil.copytree(tiny_dirs["bf16"], src)
    cfg = json.loads((src / "config.json").read_text())
    del cfg["num_key_value_heads"]
    (src / "config.json").write_text(json.dumps(cfg))
    save_file(random_state_dict(cfg, 0, torch.device("cpu")), str(src / "model.safetensors"))
    assert main(["--from", str(src), "--out", str(tmp_path / "conv"), "--device", "cpu"]) == 0
    k = load_file(str(tmp_path / "conv" / "model.safetensors"))["model.layers.0.self_attn.k_proj.weight"]
    assert k.shape == (cfg["num_attention_heads"] * cfg["head_dim"], cfg["hidden_size"] // 2)


def test_tiny_temperature_samples_the_argmax():
    # logits / 1e-50 would overflow fp32 to inf and NaN the softmax; below 1e-5 we take the argmax
    s = Sampler(torch.device("cpu"), seed=0)
    logits = torch.randn(3, 50)
    params = [SamplingParams(temperature=1e-50), SamplingParams(temperature=1e-6), SamplingParams()]
    out = s(logits, params, [None, None, None])
    assert out[:2].tolist() == logits[:2].argmax(-1).tolist()
    with pytest.raises(ValueError, match="top_k=2147483648"):
        SamplingParams(top_k=2**31)


def test_log_level_takes_numbers_and_names_the_variable(monkeypatch):
    from mini_engine import env as engine_env

    monkeypatch.setenv("MINI_ENGINE_LOG_LEVEL", "10")
    assert engine_env.log_level() == 10
    monkeypatch.setenv("MINI_ENGINE_LOG_LEVEL", "verbose")
    with pytest.raises(ValueError, match="MINI_ENGINE_LOG_LEVEL='verbose'"):
        engine_env.log_level()
