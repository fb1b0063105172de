"""KV cache sizing and allocation.

One tensor (2, layers, num_blocks, block_size, kv_heads, head_dim) in the activation dtype, zeroed
(CUDA-graph padding rows read block 0, so it must hold finite values). On CUDA the number of blocks is
what is left of gpu_memory_utilization x total memory after the weights and an estimate of the peak
activation memory of one step; on CPU a fixed budget. EngineConfig.kv_cache_blocks overrides both.
"""

from __future__ import annotations

import logging

import torch

from ..config import EngineConfig, ModelConfig

__all__ = ["bytes_per_block", "decide_num_blocks", "allocate_kv_cache"]

log = logging.getLogger("mini_engine.kv_cache")

_CPU_BUDGET = 256 << 20  # bytes of KV cache on CPU unless kv_cache_blocks says otherwise


def bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    elem = torch.tensor([], dtype=dtype).element_size()
    return 2 * cfg.num_hidden_layers * block_size * cfg.num_key_value_heads * cfg.head_dim * elem


def _activation_estimate(config: EngineConfig, cfg: ModelConfig, dtype: torch.dtype) -> int:
    """Peak bytes of one step besides weights and cache: the widest per-token tensors of a full
    token budget, the sampled rows' fp32 logits (x3 for the sampler's sort/softmax temporaries),
    and slack for CUDA graphs, cuBLAS and kernel workspaces."""
    elem = torch.tensor([], dtype=dtype).element_size()
    h, d = cfg.hidden_size, cfg.head_dim
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d
    per_token = (qkv + cfg.num_attention_heads * d + 3 * cfg.intermediate_size + 4 * h) * elem
    logits = config.max_num_seqs * cfg.vocab_size * 4 * 3
    return config.max_num_batched_tokens * per_token + logits + (768 << 20)


def decide_num_blocks(config: EngineConfig, cfg: ModelConfig, device: torch.device,
                      dtype: torch.dtype, max_model_len: int) -> int:
    per_block = bytes_per_block(cfg, config.block_size, dtype)
    needed = -(-max_model_len // config.block_size)  # one sequence of full length must fit
    if config.kv_cache_blocks is not None:
        blocks = config.kv_cache_blocks
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = free - (1.0 - config.gpu_memory_utilization) * total
        budget -= _activation_estimate(config, cfg, dtype)
        blocks = int(budget // per_block)
        log.info("KV cache: %.1f GiB free of %.1f GiB -> %d blocks of %d tokens (%.2f GiB)",
                 free / 2**30, total / 2**30, blocks, config.block_size, blocks * per_block / 2**30)
    else:
        blocks = min(config.max_num_seqs * needed, max(needed, _CPU_BUDGET // per_block))
    if blocks < needed:
        raise ValueError(
            f"kv_cache_blocks: {blocks} blocks of {config.block_size} tokens cannot hold one sequence "
            f"of max_model_len={max_model_len} ({needed} blocks); lower max_model_len or raise "
            "gpu_memory_utilization / kv_cache_blocks"
        )
    return blocks


def allocate_kv_cache(num_blocks: int, cfg: ModelConfig, block_size: int, dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
    shape = (2, cfg.num_hidden_layers, num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
    return torch.zeros(shape, dtype=dtype, device=device)
