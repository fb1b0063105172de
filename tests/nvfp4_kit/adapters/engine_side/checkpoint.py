"""Tiny ModelOpt-NVFP4 checkpoint tensors for the engine-side tests (pure torch + nvfp4_kit.reference)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nvfp4_kit import reference


@dataclass(frozen=True)
class Shard:
    """One checkpoint tensor set (e.g. q_proj): ModelOpt names and meanings."""

    weight: torch.Tensor  # (n, K/2) uint8
    weight_scale: torch.Tensor  # (n, K/16) float8_e4m3fn
    weight_scale_2: torch.Tensor  # () fp32 = amax/2688
    input_scale: torch.Tensor  # () fp32 = activation amax/2688


def make_shards(widths, k, *, seed=0, shared_global=True, input_amax=4.0) -> list[Shard]:
    """Random bf16 weights quantized per shard; shared_global=True gives all shards one global scale."""
    gen = torch.Generator().manual_seed(seed)
    dense = [torch.randn(n, k, generator=gen) * (0.02 * (i + 1)) for i, n in enumerate(widths)]
    amaxes = [d.abs().amax() for d in dense]
    shards = []
    for d, amax in zip(dense, amaxes, strict=True):
        amax = max(amaxes) if shared_global else amax
        global_scale = reference.global_scale_from_amax(amax)
        packed, sf = reference.quantize(d.to(torch.bfloat16), global_scale)
        shards.append(Shard(packed, sf, (1.0 / global_scale).reshape(()),
                            torch.tensor(input_amax / 2688.0, dtype=torch.float32)))
    return shards


def activations(m, k, *, seed=1, amax=4.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    return (x / x.abs().amax() * amax * 0.999).to(torch.bfloat16)


def assert_bf16_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """bf16 output vs an fp32 reference: within a couple of bf16 ulps of the output's scale."""
    assert actual.dtype == torch.bfloat16, actual.dtype
    scale = expected.abs().amax().item()
    torch.testing.assert_close(actual.float(), expected.float(), rtol=2**-7, atol=scale * 2**-9)
