"""Model presets: config.json contents and tokenizers of the models we synthesize or benchmark.

"llama-3.1-8b" is Llama-3.1-8B-Instruct's exact architecture (for dummy-weight benchmarks and
synthetic checkpoints); "tiny" is a 2-layer Llama with GQA and llama3 rope scaling whose CPU forward
takes milliseconds (CI, unit tests).
"""

from __future__ import annotations

import copy

__all__ = ["PRESETS", "preset_config", "preset_tokenizer", "is_preset"]

_LLAMA3_ROPE = {
    "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192, "rope_type": "llama3",
}

_COMMON = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "initializer_range": 0.02,
    "pretraining_tp": 1, "use_cache": True, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
}

PRESETS: dict[str, dict] = {
    "llama-3.1-8b": {
        **_COMMON,
        "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": _LLAMA3_ROPE, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    },
    "tiny": {
        **_COMMON,
        # 512 ids = the tiny BPE's vocabulary; every linear's N and K are multiples of 64.
        "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        # Scaling applies only to wavelengths beyond 256 positions here, so short CPU tests cover
        # all three branches of the llama3 formula.
        "rope_scaling": {**_LLAMA3_ROPE, "original_max_position_embeddings": 256},
        "bos_token_id": 0, "eos_token_id": [1, 4],
    },
}
PRESETS["llama-3.1-8b-instruct"] = PRESETS["llama-3.1-8b"]


def is_preset(name: str) -> bool:
    return name.lower() in PRESETS


def preset_config(name: str) -> dict:
    """A deep copy of the preset's config.json dict; ValueError listing presets for an unknown name."""
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"preset={name!r}: unknown; valid: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[key])


def preset_tokenizer(name: str):
    """The preset's transformers tokenizer: Llama-3 (from llama-models) or the tiny offline BPE."""
    from .tokenizer import llama3_tokenizer, tiny_tokenizer

    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"preset={name!r}: unknown; valid: {', '.join(sorted(PRESETS))}")
    return tiny_tokenizer(PRESETS[key]["vocab_size"]) if key == "tiny" else llama3_tokenizer()
