"""Llama-3.x for mini_engine: GQA attention over the paged KV cache, RMSNorm, SiLU-gated MLP.

Checkpoint names map onto our modules through `linear_shards()` (fused qkv / gate_up shards) and
`plain_params()` (embedding, norms, bf16 lm_head); loader.py drives loading through them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig, QuantConfig
from ..layers.activation import SiluAndMul
from ..layers.attention import Attention, AttentionMetadata
from ..layers.embed_head import LMHead, VocabEmbedding
from ..layers.linear import Linear
from ..layers.norm import RMSNorm
from ..layers.rotary import RotaryEmbedding

__all__ = ["LlamaForCausalLM"]


class _LinearFactory:
    """Builds Linear layers, deciding per checkpoint module whether it is NVFP4."""

    def __init__(self, quant: QuantConfig | None, quantize_on_load: bool, dtype, device,
                 backend: str, mode: str | None):
        self.quant, self.quantize_on_load = quant, quantize_on_load
        self.dtype, self.device, self.backend, self.mode = dtype, device, backend, mode

    def __call__(self, in_features: int, out_features: list[int], names: list[str]) -> Linear:
        flags = {self.quant is not None and not self.quant.is_excluded(n) for n in names}
        if len(flags) != 1:
            raise ValueError(f"exclude_modules: {names} are fused into one GEMM but only some are excluded")
        return Linear(in_features, out_features, names, quantized=flags.pop(), dtype=self.dtype,
                      device=self.device, backend=self.backend, mode=self.mode,
                      quantize_on_load=self.quantize_on_load)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, i: int, make: _LinearFactory, rotary: RotaryEmbedding):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        p = f"model.layers.{i}"
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps, make.dtype, make.device)
        self.qkv_proj = make(h, [nh * d, nkv * d, nkv * d],
                             [f"{p}.self_attn.{x}_proj" for x in ("q", "k", "v")])
        self.attn = Attention(nh, nkv, d, rotary)
        self.o_proj = make(nh * d, [h], [f"{p}.self_attn.o_proj"])
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps, make.dtype, make.device)
        inter = cfg.intermediate_size
        self.gate_up_proj = make(h, [inter, inter], [f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"])
        self.act = SiluAndMul()
        self.down_proj = make(inter, [h], [f"{p}.mlp.down_proj"])

    def forward(self, positions, hidden, residual, meta: AttentionMetadata):
        if residual is None:
            hidden, residual = self.input_layernorm(hidden), hidden
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.o_proj(self.attn(self.qkv_proj(hidden), positions, meta))
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        hidden = self.down_proj(self.act(self.gate_up_proj(hidden)))
        return hidden, residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, *, quant: QuantConfig | None, dtype: torch.dtype,
                 device: torch.device, max_model_len: int, linear_backend: str = "auto",
                 nvfp4_mode: str | None = None, quantize_on_load: bool = False):
        super().__init__()
        self.config = cfg
        make = _LinearFactory(quant, quantize_on_load, dtype, device, linear_backend, nvfp4_mode)
        rotary = RotaryEmbedding(cfg.head_dim, max_model_len, cfg.rope_theta, cfg.rope_scaling, device)
        self.embed_tokens = VocabEmbedding(cfg.vocab_size, cfg.hidden_size, dtype, device)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(cfg, i, make, rotary) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        head = None if cfg.tie_word_embeddings else make(cfg.hidden_size, [cfg.vocab_size], ["lm_head"])
        self.lm_head = LMHead(head, self.embed_tokens)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: (T,) -> final hidden states (T, hidden)."""
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    # ---------------------------------------------------------------- checkpoint name mapping
    def linear_shards(self) -> dict[str, tuple[Linear, int]]:
        """Checkpoint module name -> (our Linear, shard index)."""
        out = {}
        for layer in self.layers:
            for lin in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj):
                out.update({name: (lin, s) for s, name in enumerate(lin.names)})
        if self.lm_head.linear is not None:
            out["lm_head"] = (self.lm_head.linear, 0)
        return out

    def plain_params(self) -> dict[str, torch.Tensor]:
        """Checkpoint tensor name -> our bf16 parameter (embedding, norms)."""
        out = {"model.embed_tokens.weight": self.embed_tokens.weight, "model.norm.weight": self.norm.weight}
        for i, layer in enumerate(self.layers):
            out[f"model.layers.{i}.input_layernorm.weight"] = layer.input_layernorm.weight
            out[f"model.layers.{i}.post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight
        return out

    def linears(self) -> list[Linear]:
        return list(dict.fromkeys(lin for lin, _ in self.linear_shards().values()))
