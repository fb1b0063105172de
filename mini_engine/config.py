"""Configuration: EngineConfig (the user's flags), ModelConfig (config.json), QuantConfig (NVFP4 metadata).

All three are frozen dataclasses validated in __post_init__; a bad value raises ValueError naming the
field. EngineConfig field names are vLLM's flag names (`--max-num-seqs` -> max_num_seqs).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EngineConfig", "ModelConfig", "QuantConfig", "DTYPES"]

DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANTIZATIONS = ("auto", "modelopt_fp4", "nvfp4", "none")
LOAD_FORMATS = ("auto", "dummy")
ATTENTION_BACKENDS = ("auto", "torch", "triton")


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r}: must be a positive integer")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")


@dataclass(frozen=True)
class EngineConfig:
    """What the user chose. `model` is a checkpoint directory, a hub id found in the local HF cache,
    or (with load_format="dummy") a preset name such as "tiny" or "llama-3.1-8b"."""

    model: str
    tokenizer: str | None = None  # default: the model's directory (or the preset's tokenizer)
    served_model_name: str | None = None
    dtype: str = "auto"  # activations / bf16 weights: bf16 on CUDA, fp32 on CPU
    quantization: str = "auto"  # auto reads the checkpoint; nvfp4 quantizes a bf16 one on load
    linear_backend: str = "auto"  # nvfp4_kit GEMM backend name (any spelling the kit accepts)
    nvfp4_mode: str | None = None  # "w4a16" | "w4a4" | None (NVFP4_KIT_MODE, default w4a16)
    load_format: str = "auto"
    max_num_seqs: int = 256
    max_model_len: int | None = None  # default: min(max_position_embeddings, 8192)
    max_num_batched_tokens: int = 4096  # token budget per step (chunked prefill splits longer prompts)
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    block_size: int = 16
    device: str = "auto"  # "auto" | "cuda" | "cuda:N" | "cpu"
    seed: int = 0
    kv_cache_blocks: int | None = None  # override the memory-derived KV cache size
    enable_prefix_caching: bool = True
    attention_backend: str = "auto"  # "auto" | "torch" | "triton" (MINI_ENGINE_ATTENTION_BACKEND)
    cuda_graph_max_bs: int | None = None  # default: min(max_num_seqs, 512)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model={self.model!r}: expected a directory, a hub id or a preset name")
        _choice("dtype", self.dtype, DTYPES)
        _choice("quantization", self.quantization, QUANTIZATIONS)
        _choice("load_format", self.load_format, LOAD_FORMATS)
        _choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        if self.nvfp4_mode is not None:
            _choice("nvfp4_mode", self.nvfp4_mode, ("w4a16", "w4a4"))
        _positive_int("max_num_seqs", self.max_num_seqs)
        _positive_int("max_model_len", self.max_model_len, allow_none=True)
        _positive_int("max_num_batched_tokens", self.max_num_batched_tokens)
        _positive_int("kv_cache_blocks", self.kv_cache_blocks, allow_none=True)
        _positive_int("cuda_graph_max_bs", self.cuda_graph_max_bs, allow_none=True)
        if self.block_size not in (8, 16, 32, 64, 128):
            raise ValueError(f"block_size={self.block_size!r}: expected 8, 16, 32, 64 or 128")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens={self.max_num_batched_tokens}: must be >= max_num_seqs="
                f"{self.max_num_seqs} so that every running sequence can decode in one step"
            )
        u = self.gpu_memory_utilization
        if isinstance(u, bool) or not isinstance(u, (int, float)) or not 0.0 < u <= 1.0:
            raise ValueError(f"gpu_memory_utilization={u!r}: must be in (0, 1]")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        ):
            raise ValueError(f"device={self.device!r}: expected auto, cpu, cuda or cuda:N")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed={self.seed!r}: must be an integer")


@dataclass(frozen=True)
class ModelConfig:
    """The Llama architecture fields of a Hugging Face config.json."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            _positive_int(f"config.json {name}", getattr(self, name))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"config.json num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        archs = d.get("architectures") or []
        if d.get("model_type") != "llama" and "LlamaForCausalLM" not in archs:
            raise ValueError(
                f"config.json: model_type={d.get('model_type')!r}, architectures={archs}: mini_engine "
                "serves Llama-architecture models (LlamaForCausalLM) only"
            )
        for flag in ("attention_bias", "mlp_bias"):
            if d.get(flag):
                raise ValueError(f"config.json {flag}=true is not supported (Llama-3 has no biases)")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json hidden_act={d.get('hidden_act')!r}: only silu is supported")
        try:
            heads = int(d["num_attention_heads"])
            eos = d.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
            return cls(
                vocab_size=int(d["vocab_size"]),
                hidden_size=int(d["hidden_size"]),
                intermediate_size=int(d["intermediate_size"]),
                num_hidden_layers=int(d["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(d.get("num_key_value_heads") or heads),
                head_dim=int(d.get("head_dim") or int(d["hidden_size"]) // heads),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
                rope_theta=float(d.get("rope_theta", 10000.0)),
                rope_scaling=d.get("rope_scaling"),
                max_position_embeddings=int(d.get("max_position_embeddings", 8192)),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                bos_token_id=d.get("bos_token_id"),
                eos_token_ids=eos_ids,
                raw=d,
            )
        except KeyError as exc:
            raise ValueError(f"config.json: missing field {exc.args[0]!r}") from None

    @classmethod
    def from_dir(cls, path: Path) -> ModelConfig:
        file = Path(path) / "config.json"
        if not file.is_file():
            raise ValueError(f"model: {path} has no config.json")
        return cls.from_dict(json.loads(file.read_text()))


@dataclass(frozen=True)
class QuantConfig:
    """NVFP4 checkpoint metadata. fmt: "modelopt" (weight/weight_scale/weight_scale_2/input_scale) or
    "compressed-tensors" (weight_packed/weight_scale/weight_global_scale/input_global_scale)."""

    fmt: str
    group_size: int = 16
    exclude_modules: tuple[str, ...] = ("lm_head",)
    kv_cache_quant_algo: str | None = None

    def __post_init__(self) -> None:
        _choice("quantization format", self.fmt, ("modelopt", "compressed-tensors"))
        if self.group_size != 16:
            raise ValueError(f"group_size={self.group_size}: NVFP4 uses 16-element blocks")

    def is_excluded(self, module: str) -> bool:
        """module: e.g. "model.layers.0.self_attn.q_proj" or "lm_head" (patterns may use '*')."""
        for pattern in self.exclude_modules:
            if fnmatch.fnmatchcase(module, pattern) or module == pattern.rstrip(".*"):
                return True
        return False

    @classmethod
    def from_dir(cls, path: Path) -> QuantConfig | None:
        """Reads hf_quant_config.json or config.json's quantization_config; None for a bf16 checkpoint."""
        path = Path(path)
        hf_quant = path / "hf_quant_config.json"
        if hf_quant.is_file():
            q = json.loads(hf_quant.read_text()).get("quantization", {})
            return cls._modelopt(q, "hf_quant_config.json")
        cfg_file = path / "config.json"
        q = json.loads(cfg_file.read_text()).get("quantization_config") if cfg_file.is_file() else None
        if not q:
            return None
        method = str(q.get("quant_method", "")).lower()
        if method == "modelopt":
            return cls._modelopt(q, "config.json quantization_config")
        if method == "compressed-tensors":
            fmt = q.get("format")
            if fmt != "nvfp4-pack-quantized":
                raise ValueError(
                    f"config.json quantization_config: compressed-tensors format {fmt!r} is not "
                    "supported (only nvfp4-pack-quantized)"
                )
            return cls("compressed-tensors", 16, tuple(q.get("ignore") or ()), None)
        raise ValueError(f"config.json quantization_config: quant_method={method!r} is not supported")

    @classmethod
    def _modelopt(cls, q: dict, where: str) -> QuantConfig:
        algo = q.get("quant_algo")
        if algo != "NVFP4":
            raise ValueError(f"{where}: quant_algo={algo!r}; mini_engine loads NVFP4 checkpoints only")
        exclude = q.get("exclude_modules", q.get("ignore")) or ()
        group = q.get("group_size", 16)
        kv_algo = q.get("kv_cache_quant_algo")
        if kv_algo is None and isinstance(q.get("kv_cache_scheme"), dict):
            kv_algo = "FP8"
        return cls("modelopt", int(group), tuple(exclude), kv_algo)
