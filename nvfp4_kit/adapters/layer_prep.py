"""Engine-independent adapter glue: where the kit serves an engine's NVFP4 linears, and how.

Both engines hand a linear layer to the kit in the same shape after loading a ModelOpt (or
compressed-tensors) NVFP4 checkpoint, per tensor-parallel rank:

    weight          (N, K/2) uint8, e2m1 pairs, low nibble first   (N, K: this rank's partition)
    weight_scale    (N, K/16) float8_e4m3fn, linear layout
    weight_scale_2  fp32, 1 element or one per fused shard (qkv, gate_up): amax/(448*6)
    input_scale     fp32 activation scale amax/(448*6) (W4A4 checkpoints only)

`prepare()` turns these into a PreparedWeight once, `warm_up()` compiles every kernel config the layer
can pick for M <= the engine's largest batch (before CUDA-graph capture: compiling inside a capture
is refused by the kit), and `forward()` is the per-step call. Only the kit's public API is used.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

import torch

from .. import dispatch, ops
from ..backends import arch_family

__all__ = [
    "K_ALIGN",
    "KIT_FAMILIES",
    "unsupported_reason",
    "shard_scale_per_channel",
    "check_partition",
    "prepare",
    "warm_up",
    "forward",
]

log = logging.getLogger("nvfp4_kit.adapters")

# Per-rank K must fill whole 128x4 scale atoms (4 blocks of 16) on SM100, and the kit keeps one rule for
# both archs so that a TP layout that works on Hopper also works on Blackwell.
K_ALIGN = 64
KIT_FAMILIES = ("sm90", "sm100")
# The kernel stack each family needs at run time (module name, pip hint).
_FAMILY_DEPENDENCY = {
    "sm90": ("cutlass", "nvidia-cutlass-dsl (pip install 'nvfp4-kit[cute]')"),
    "sm100": ("flashinfer", "flashinfer-python (pip install 'nvfp4-kit[flashinfer]')"),
}
_logged_shapes: set[tuple] = set()
_warmed: set[tuple] = set()


def unsupported_reason(capability: tuple[int, int] | None, *, w4a16_checkpoint: bool = False) -> str | None:
    """None when the kit serves NVFP4 linears on this GPU inside an engine, else why not.

    SM90: our CuTe DSL kernels (W4A16, or W4A4 emulation). SM100/SM103: the kit's M-aware choice among
    FlashInfer's mm_fp4 backends, which are W4A4 only, so a weight-only (W4A16) checkpoint stays on the
    engine's kernels there. SM80/SM89/SM120 and anything else: the engine's own kernels stay in place.
    """
    family = arch_family(capability)
    if family == "cpu":
        return "no CUDA device"
    if family not in KIT_FAMILIES:
        major, minor = capability
        return f"SM{major}{minor}: nvfp4_kit has no NVFP4 GEMM for this GPU; the engine's own kernels stay"
    if family == "sm100" and w4a16_checkpoint:
        return "SM100: FlashInfer's mm_fp4 is W4A4 only; a weight-only (W4A16) checkpoint stays on the engine"
    module, hint = _FAMILY_DEPENDENCY[family]
    if importlib.util.find_spec(module) is None:
        return f"{family}: the kit's kernels need {hint}"
    return None


def shard_scale_per_channel(scale: torch.Tensor, logical_widths: list[int] | None, n: int) -> torch.Tensor:
    """Per-shard global scales of a fused layer -> one value (all equal) or one per output channel (N,).

    A fused qkv / gate_up layer keeps one weight_scale_2 per checkpoint shard. Expanding them along N
    keeps the layer exact when the shards' scales differ (the engines fall back to their max there).
    """
    flat = scale.detach().reshape(-1).float()
    if flat.numel() == 1 or bool((flat == flat[0]).all()):
        return flat[:1].clone()
    if not logical_widths or len(logical_widths) != flat.numel() or sum(logical_widths) != n:
        raise ValueError(
            f"weight_scale_2: {flat.numel()} per-shard scales, but logical_widths={logical_widths} "
            f"do not split N={n} into that many shards"
        )
    widths = torch.tensor(logical_widths, device=flat.device)
    return torch.repeat_interleave(flat, widths)


def check_partition(name: str, n: int, k: int) -> None:
    """ValueError naming the layer when this rank's (N, K) partition cannot run on the kit."""
    if k % K_ALIGN:
        raise ValueError(
            f"nvfp4_kit: layer {name!r} has K={k} input features on this tensor-parallel rank; the kit "
            f"needs K % {K_ALIGN} == 0 per rank. Pick a tensor-parallel size that splits K into multiples "
            f"of {K_ALIGN}, or run this model on the engine's own NVFP4 backend."
        )
    if n % 8:
        raise ValueError(
            f"nvfp4_kit: layer {name!r} has N={n} output features on this tensor-parallel rank; the kit "
            "needs N % 8 == 0 per rank (FlashInfer's SM100 GEMM)."
        )


def _log_new_shape(pw: ops.PreparedWeight) -> None:
    key = pw.layer_key
    ident = (key, pw.backend)
    if ident in _logged_shapes:
        return
    _logged_shapes.add(ident)
    for row in dispatch.describe():
        if (row["arch"], row["n"], row["k"], row["mode"]) == (key.family, key.n, key.k, key.mode):
            log.info(
                "nvfp4_kit: %s N=%d K=%d %s M=%d-%d -> %s [%s] (%s: %s)", row["arch"], row["n"], row["k"],
                row["mode"], row["m_min"], row["m_max"], row["backend"], row["config"], row["source"],
                row["why"],
            )


def prepare(
    name: str,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_scale_2: torch.Tensor,
    input_scale: torch.Tensor | None,
    *,
    w4a16_checkpoint: bool,
) -> ops.PreparedWeight:
    """One layer's checkpoint tensors (this rank's partition) -> PreparedWeight, on the weight's device.

    The mode follows the checkpoint: W4A16 checkpoints run W4A16; W4A4 checkpoints run what the kit
    picks for the arch (SM90: NVFP4_KIT_MODE, default w4a16 = weight-only like Marlin; SM100: w4a4).
    The backend is the kit's choice (NVFP4_KIT_GEMM_BACKEND may force one; CPU tensors: the reference).
    """
    n, k = weight.shape[0], weight.shape[1] * 2
    check_partition(name, n, k)
    in_scale = None
    if input_scale is not None and not w4a16_checkpoint:
        in_scale = input_scale.detach().reshape(-1).float().max().reshape(1)  # one activation global
    pw = ops.prepare_weight(
        weight.detach(), weight_scale.detach(), weight_scale_2, in_scale,
        mode="w4a16" if w4a16_checkpoint else None, name=name,
    )
    _log_new_shape(pw)
    return pw


def warm_up(pw: ops.PreparedWeight, max_m: int) -> None:
    """Compile the configs this layer can pick for M <= max_m. GPU only (the reference compiles nothing).

    Choices depend only on the layer shape (dispatch.LayerKey) and backend, so a shape warmed up once
    (e.g. the same projection in every decoder layer) is not run again.
    """
    ident = (pw.layer_key, pw.backend, dispatch.m_bucket(max(1, int(max_m))))
    if not pw.weight.is_cuda or ident in _warmed:
        return
    ops.warmup(pw, max(1, int(max_m)))
    _warmed.add(ident)


def forward(x: torch.Tensor, pw: ops.PreparedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) -> (..., N) in x's dtype. The kit computes in bf16 (fp16 models pay two casts)."""
    dtype = x.dtype
    y = ops.linear(x if dtype == torch.bfloat16 else x.to(torch.bfloat16), pw)
    if dtype != torch.bfloat16:
        y = y.to(dtype)
    if bias is not None:
        y = y + bias
    return y


def rebind_imported_names(original: object, replacement: object) -> None:
    """Point every loaded module's `from ... import name` copy of `original` at `replacement`
    (an engine function wrapped in place is otherwise still reached through those copies)."""
    for mod in list(sys.modules.values()):
        try:
            names = [k for k, v in vars(mod).items() if v is original]
        except TypeError:
            continue
        for k in names:
            setattr(mod, k, replacement)
