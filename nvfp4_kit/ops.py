"""The torch boundary: NVFP4 custom ops (with fake implementations) and their thin Python wrappers.

Everything outside the kit (mini_engine, the vLLM/SGLang adapters) reaches a kernel through here:

    pw  = prepare_weight(w_packed, w_scale, weight_scale_2, input_scale)   # once, at load
    out = linear(x, pw)                                                    # every forward

Custom ops (namespace ``nvfp4``), usable under torch.compile(fullgraph=True) and CUDA-graph capture:

    gemm(x, x_scale?, w, w_scale, alpha, layout, n, out_dtype, backend) -> Tensor
    gemm_out(x, x_scale?, w, w_scale, alpha, layout, n, backend, out!) -> ()
    quantize(x, global_scale, layout, backend) -> (packed, scales)
    quantize_out(x, global_scale, layout, backend, out_packed!, out_scale!) -> ()
    quantize_dequantize(x, global_scale, backend) -> bf16

``x`` is bf16/fp16 [M, K] (W4A16, or the "dequantized, unscaled" activations of the W4A4 emulation) or
packed e2m1 uint8 [M, K/2] with ``x_scale`` (W4A4 with real NVFP4 activations). ``layout`` is the weight
layout a backend prepared: "linear" (reference), "sm90" (our Hopper kernels), "swizzled_128x4"
(FlashInfer cute-dsl/cutlass/cudnn on SM100), "trtllm_128x4" (FlashInfer trtllm, row-shuffled).
``alpha`` is fp32 with 1 or N elements. The ``_out`` variants allocate nothing on SM90 (the FlashInfer
path allocates inside FlashInfer).
Every argument is validated (device, dtype, shape, contiguity, K % 16) before any launch; a bad one
raises ValueError naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from . import device as device_mod
from . import dispatch, env, reference
from .backends import CAPABILITIES, Fp4GemmBackend, Fp4QuantBackend
from .formats import BLOCK_SIZE, ScaleLayout, scale_shape, swizzle_scales
from .validate import (
    SCALE_DTYPES,
    WEIGHT_LAYOUTS,
    as_e4m3,
    check,
    check_tensor,
    validate_gemm,
    validate_quantize,
)

__all__ = [
    "PreparedWeight",
    "prepare_weight",
    "linear",
    "gemm",
    "quantize",
    "quantize_dequantize",
    "warmup",
    "WEIGHT_LAYOUTS",
]


def _quant_backend(requested: str, x: torch.Tensor) -> Fp4QuantBackend:
    """The activation quantizer: as requested, else NVFP4_KIT_QUANT_BACKEND, else the arch's first
    choice (backends.CAPABILITIES); the exact reference where the kit has no kernel (a small op)."""
    backend = Fp4QuantBackend.parse(requested)
    if backend is Fp4QuantBackend.AUTO:
        backend = Fp4QuantBackend.parse(env.quant_backend())
    if backend is not Fp4QuantBackend.AUTO:
        return backend
    choices = CAPABILITIES[device_mod.family(x.device)].quant
    return choices[0] if choices else Fp4QuantBackend.REFERENCE


# ----------------------------------------------------------------------------------------------
# Real implementations
# ----------------------------------------------------------------------------------------------
def _gemm_into(x, x_scale, w, w_scale, alpha, layout, n, backend, out) -> None:
    k = validate_gemm(x, x_scale, w, w_scale, alpha, layout, n, out.dtype, out)
    x_scale = as_e4m3(x_scale)
    if layout != "sm90":
        w_scale = as_e4m3(w_scale)
    if layout == "linear":
        if x_scale is None:
            out.copy_(reference.gemm_w4a16(x, w, w_scale, alpha, out.dtype))
        else:
            out.copy_(reference.gemm_w4a4(x, x_scale, w, w_scale, alpha, out.dtype))
    elif layout == "sm90":
        from .kernels import gemm_sm90

        if out.dtype != torch.bfloat16:
            raise ValueError(f"out_dtype: {out.dtype}; the SM90 kernel writes bfloat16")
        if x_scale is not None:  # packed NVFP4 activations: e2m1*sf is exact in bf16
            x = reference.dequantize(x, x_scale).to(torch.bfloat16)
        if x.dtype != torch.bfloat16:
            raise ValueError(f"x: dtype {x.dtype}; the SM90 kernel takes bfloat16")
        config = dispatch.sm90_kernel_config(n, k, x.shape[0])
        gemm_sm90.gemm_w4a16_out(x, w, w_scale, alpha, out, config, prevalidated=True)
    else:
        from .kernels import flashinfer_sm100

        check(x_scale is not None, "x_scale: FlashInfer's mm_fp4 needs NVFP4 activations (W4A4)")
        requested = flashinfer_sm100.backend_for_layout(layout, Fp4GemmBackend.parse(backend))
        key = dispatch.LayerKey("sm100", n, k, "bfloat16", "w4a4")
        choice = dispatch.choose(key, requested, x.shape[0])
        flashinfer_sm100.gemm_out(x, x_scale, w, w_scale, alpha, out, choice.backend)


@torch.library.custom_op("nvfp4::gemm", mutates_args=())
def _gemm_op(
    x: torch.Tensor, x_scale: Optional[torch.Tensor], w: torch.Tensor, w_scale: torch.Tensor,
    alpha: torch.Tensor, layout: str, n: int, out_dtype: torch.dtype, backend: str,
) -> torch.Tensor:
    validate_gemm(x, x_scale, w, w_scale, alpha, layout, n, out_dtype)  # before allocating
    out = torch.empty((x.shape[0], n), dtype=out_dtype, device=x.device)
    _gemm_into(x, x_scale, w, w_scale, alpha, layout, n, backend, out)
    return out


@_gemm_op.register_fake
def _(x, x_scale, w, w_scale, alpha, layout, n, out_dtype, backend):
    validate_gemm(x, x_scale, w, w_scale, alpha, layout, n, out_dtype)
    return x.new_empty((x.shape[0], n), dtype=out_dtype)


@torch.library.custom_op("nvfp4::gemm_out", mutates_args=("out",))
def _gemm_out_op(
    x: torch.Tensor, x_scale: Optional[torch.Tensor], w: torch.Tensor, w_scale: torch.Tensor,
    alpha: torch.Tensor, layout: str, n: int, backend: str, out: torch.Tensor,
) -> None:
    _gemm_into(x, x_scale, w, w_scale, alpha, layout, n, backend, out)


@_gemm_out_op.register_fake
def _(x, x_scale, w, w_scale, alpha, layout, n, backend, out):
    validate_gemm(x, x_scale, w, w_scale, alpha, layout, n, out.dtype, out)


def _quantize_into(x, global_scale, layout, backend, out_packed, out_scale) -> None:
    scale_layout = validate_quantize(x, global_scale, layout)
    m, k = x.shape
    check_tensor("out_packed", out_packed, dtypes=(torch.uint8,), device=x.device)
    if tuple(out_packed.shape) != (m, k // 2):
        raise ValueError(f"out_packed: shape {tuple(out_packed.shape)}, expected {(m, k // 2)}")
    check_tensor("out_scale", out_scale, dtypes=SCALE_DTYPES, device=x.device)
    expect = scale_shape(m, k, scale_layout)
    if tuple(out_scale.shape) != expect:
        raise ValueError(f"out_scale: shape {tuple(out_scale.shape)}, expected {expect}")
    out_scale = as_e4m3(out_scale)
    chosen = _quant_backend(backend, x)
    if chosen is Fp4QuantBackend.NVFP4_KIT:
        from .kernels import quantize as quantize_kernels

        quantize_kernels.quantize_out(x, global_scale, scale_layout.value, out_packed, out_scale)
    elif chosen in (Fp4QuantBackend.FLASHINFER_CUTEDSL, Fp4QuantBackend.FLASHINFER_CUDA):
        from .kernels import flashinfer_sm100

        flashinfer_sm100.quantize_out(x, global_scale, scale_layout, out_packed, out_scale, chosen)
    else:
        packed, sf = reference.quantize(x, global_scale, scale_layout)
        out_packed.copy_(packed)
        out_scale.copy_(sf)


def _quantize_new(x, global_scale, layout, backend) -> tuple[torch.Tensor, torch.Tensor]:
    validate_quantize(x, global_scale, layout)  # before allocating
    m, k = x.shape
    packed = torch.empty((m, k // 2), dtype=torch.uint8, device=x.device)
    scales = torch.empty(scale_shape(m, k, layout), dtype=torch.float8_e4m3fn, device=x.device)
    _quantize_into(x, global_scale, layout, backend, packed, scales)
    return packed, scales


@torch.library.custom_op("nvfp4::quantize", mutates_args=())
def _quantize_op(
    x: torch.Tensor, global_scale: torch.Tensor, layout: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize_new(x, global_scale, layout, backend)


@_quantize_op.register_fake
def _(x, global_scale, layout, backend):
    scale_layout = validate_quantize(x, global_scale, layout)
    m, k = x.shape
    return (x.new_empty((m, k // 2), dtype=torch.uint8),
            x.new_empty(scale_shape(m, k, scale_layout), dtype=torch.float8_e4m3fn))


@torch.library.custom_op("nvfp4::quantize_out", mutates_args=("out_packed", "out_scale"))
def _quantize_out_op(
    x: torch.Tensor, global_scale: torch.Tensor, layout: str, backend: str,
    out_packed: torch.Tensor, out_scale: torch.Tensor,
) -> None:
    _quantize_into(x, global_scale, layout, backend, out_packed, out_scale)


@_quantize_out_op.register_fake
def _(x, global_scale, layout, backend, out_packed, out_scale):
    validate_quantize(x, global_scale, layout)


def _qdq_new(x, global_scale, backend) -> torch.Tensor:
    validate_quantize(x, global_scale, "linear")
    out = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
    if _quant_backend(backend, x) is Fp4QuantBackend.NVFP4_KIT:
        from .kernels import quantize as quantize_kernels

        quantize_kernels.quantize_dequantize_out(x, global_scale, out)
    else:
        out.copy_(reference.quantize_dequantize(x, global_scale))
    return out


@torch.library.custom_op("nvfp4::quantize_dequantize", mutates_args=())
def _qdq_op(x: torch.Tensor, global_scale: torch.Tensor, backend: str) -> torch.Tensor:
    return _qdq_new(x, global_scale, backend)


@_qdq_op.register_fake
def _(x, global_scale, backend):
    validate_quantize(x, global_scale, "linear")
    return x.new_empty(x.shape, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# Python API
# ----------------------------------------------------------------------------------------------
def gemm(x, w, w_scale, alpha, *, layout, n, x_scale=None, out_dtype=torch.bfloat16,
         backend: str = "auto", out=None):
    """out = (x @ W.T) * alpha for a prepared NVFP4 weight; `out=` writes in place (graph-safe).

    Under torch.compile this is the custom op. Eager calls run the op's implementation directly:
    the dispatcher round trip of a Python custom op cost ~90 us of host time per call on the H100
    box (ops.linear 298 -> 207 us, benchmarks/dev_host_overhead.py), more than the GPU time of a
    decode GEMM, and eager prefill makes ~4 such calls per layer."""
    backend = Fp4GemmBackend.parse(backend).value
    if torch.compiler.is_compiling():
        if out is None:
            return torch.ops.nvfp4.gemm(x, x_scale, w, w_scale, alpha, layout, n, out_dtype, backend)
        torch.ops.nvfp4.gemm_out(x, x_scale, w, w_scale, alpha, layout, n, backend, out)
        return out
    if out is None:
        validate_gemm(x, x_scale, w, w_scale, alpha, layout, n, out_dtype)  # before allocating
        out = torch.empty((x.shape[0], n), dtype=out_dtype, device=x.device)
    _gemm_into(x, x_scale, w, w_scale, alpha, layout, n, backend, out)
    return out


def quantize(x, global_scale, layout="linear", *, backend: str = "auto", out=None):
    """x (M, K) bf16/fp16 -> (packed (M, K/2) uint8, scales e4m3 in `layout`); global_scale fp32 [1].
    Like gemm(): the custom op under torch.compile, its implementation directly when eager."""
    backend = Fp4QuantBackend.parse(backend).value
    layout = ScaleLayout.parse(layout).value
    if torch.compiler.is_compiling():
        if out is None:
            return torch.ops.nvfp4.quantize(x, global_scale, layout, backend)
        torch.ops.nvfp4.quantize_out(x, global_scale, layout, backend, out[0], out[1])
        return out
    if out is None:
        return _quantize_new(x, global_scale, layout, backend)
    _quantize_into(x, global_scale, layout, backend, out[0], out[1])
    return out


def quantize_dequantize(x, global_scale, *, backend: str = "auto"):
    """x -> bf16 e2m1*sf (not divided by global): the activations of the W4A4 emulation GEMM.
    Like gemm(): the custom op under torch.compile, its implementation directly when eager."""
    backend = Fp4QuantBackend.parse(backend).value
    if torch.compiler.is_compiling():
        return torch.ops.nvfp4.quantize_dequantize(x, global_scale, backend)
    return _qdq_new(x, global_scale, backend)


@dataclass(frozen=True)
class PreparedWeight:
    """One NVFP4 linear weight in the layout its backend computes from; built once at load."""

    backend: Fp4GemmBackend
    mode: str  # "w4a16" | "w4a4"
    n: int
    k: int
    layout: str  # one of WEIGHT_LAYOUTS
    weight: torch.Tensor
    weight_scale: torch.Tensor
    alpha: torch.Tensor  # fp32 [1] or [N]: weight_scale_2 (* input_scale for W4A4)
    input_global_scale: Optional[torch.Tensor]  # fp32 [1] = 1 / input_scale (W4A4 activations)
    act_scale_layout: str  # layout of activation block scales this backend reads

    @property
    def layer_key(self) -> dispatch.LayerKey:
        return dispatch.LayerKey(device_mod.family(self.weight.device), self.n, self.k, "bfloat16", self.mode)


def _as_fp32(name: str, value, n_allowed: tuple[int, ...], device) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    check(t.is_floating_point(), f"{name}: dtype {t.dtype}, expected a floating dtype")
    check(t.numel() in n_allowed, f"{name}: {t.numel()} elements, expected one of {n_allowed}")
    return t.reshape(-1).to(device=device, dtype=torch.float32).contiguous()


def prepare_weight(w_packed, w_scale, weight_scale_2, input_scale=None, *, backend="auto",
                   mode=None, device=None, name: str | None = None) -> PreparedWeight:
    """Checkpoint tensors -> PreparedWeight for the chosen backend (pre-shuffled, swizzled, alpha).

    w_packed: (N, K/2) uint8, e2m1 pairs, low nibble first; w_scale: (N, K/16) float8_e4m3fn (linear);
    weight_scale_2: fp32 scalar or (N,) (per-output-channel for fused qkv/gate_up shards);
    input_scale: fp32 scalar activation scale (needed for W4A4). backend: any Fp4GemmBackend name.
    mode: "w4a16" | "w4a4" | None (NVFP4_KIT_MODE, default w4a16; SM100 is always w4a4).
    """
    check_tensor("w_packed", w_packed, dtypes=(torch.uint8,), dim=2)
    if isinstance(w_scale, torch.Tensor) and w_scale.dtype == torch.uint8:
        w_scale = w_scale.view(torch.float8_e4m3fn)
    check_tensor("w_scale", w_scale, dtypes=(torch.float8_e4m3fn,), dim=2)
    n, k = w_packed.shape[0], w_packed.shape[1] * 2
    check(k % BLOCK_SIZE == 0, f"w_packed: K={k} must be a multiple of {BLOCK_SIZE}")
    check(tuple(w_scale.shape) == (n, k // BLOCK_SIZE),
          f"w_scale: shape {tuple(w_scale.shape)}, expected {(n, k // BLOCK_SIZE)} "
          f"for w_packed {(n, k // 2)}")
    device = torch.device(device) if device is not None else w_packed.device
    family = device_mod.family(device)
    resolved = dispatch.resolve_backend(backend, family)
    mode = dispatch.resolve_mode(mode, family, input_scale is not None)
    alpha = _as_fp32("weight_scale_2", weight_scale_2, (1, n), device)
    input_global = None
    if input_scale is not None:
        in_scale = _as_fp32("input_scale", input_scale, (1,), device)
        input_global = 1.0 / in_scale
        if mode == "w4a4":
            alpha = alpha * in_scale
    w_packed, w_scale = w_packed.to(device).contiguous(), w_scale.to(device).contiguous()
    if resolved is Fp4GemmBackend.NVFP4_KIT:
        from .kernels import gemm_sm90

        gemm_sm90.check_shape(n, k)
        weight, scale, layout, act_layout = (*gemm_sm90.prepare_weight(w_packed, w_scale), "sm90", "linear")
    elif resolved is Fp4GemmBackend.REFERENCE:
        weight, scale, layout, act_layout = w_packed, w_scale, "linear", "linear"
    else:
        from .kernels import flashinfer_sm100

        flashinfer_sm100.check_shape(n, k, resolved)
        if resolved is Fp4GemmBackend.FLASHINFER_TRTLLM:
            weight, scale = flashinfer_sm100.prepare_trtllm_weight(w_packed, w_scale)
            layout = "trtllm_128x4"
        else:
            weight, scale, layout = w_packed, swizzle_scales(w_scale), "swizzled_128x4"
        act_layout = "swizzled_128x4"
    pw = PreparedWeight(resolved, mode, n, k, layout, weight, scale, alpha, input_global, act_layout)
    dispatch.register_layer(pw.layer_key, resolved, name)
    return pw


def linear(x: torch.Tensor, pw: PreparedWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) bf16 -> (..., N) bf16 through the prepared weight; W4A4 quantizes x itself."""
    # per-call checks format their messages only on failure (validate.py)
    if not isinstance(pw, PreparedWeight):
        raise ValueError(f"pw: expected PreparedWeight, got {type(pw).__name__}")
    if x.shape[-1] != pw.k:
        raise ValueError(f"x: last dim {x.shape[-1]} does not match the weight's K={pw.k}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, pw.k)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if out is not None and (not isinstance(out, torch.Tensor) or out.shape != (*lead, pw.n)):
        # a view of any other shape with M*N elements would take the rows in the wrong layout
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"out: shape {got}, expected {(*lead, pw.n)}")
    out2 = None if out is None else out.view(-1, pw.n)
    backend = pw.backend.value
    x_scale = None
    if pw.mode == "w4a4":
        if pw.act_scale_layout == "swizzled_128x4":
            x2, x_scale = quantize(x2, pw.input_global_scale, pw.act_scale_layout)
        else:  # SM90 / reference: exact e2m1*sf activations in bf16, global folded into alpha
            x2 = quantize_dequantize(x2, pw.input_global_scale)
    y = gemm(x2, pw.weight, pw.weight_scale, pw.alpha, layout=pw.layout, n=pw.n, x_scale=x_scale,
             out_dtype=torch.bfloat16 if out is None else out.dtype, backend=backend, out=out2)
    return out if out is not None else y.view(*lead, pw.n)


def warmup(pw: PreparedWeight, max_m: int) -> None:
    """Compile every config this layer can pick for M <= max_m (and size workspaces) before capture."""
    check(not device_mod.is_capturing(), "warmup: called during CUDA-graph capture; warm up before it")
    check(max_m >= 1, f"max_m={max_m}: must be >= 1")
    for bucket in dispatch.M_BUCKETS:
        m = min(bucket, max_m)
        x = torch.zeros((m, pw.k), dtype=torch.bfloat16, device=pw.weight.device)
        linear(x, pw)
        if bucket >= max_m:
            break
    if pw.layout == "sm90":
        # One call per bucket does not size the stream-K workspace for every M in between (nor for
        # M above the last bucket): reserve each chosen config's bound for M <= max_m.
        from .kernels import gemm_sm90

        configs = {dispatch.sm90_kernel_config(pw.n, pw.k, b, pw.backend)
                   for b in dispatch.M_BUCKETS if b <= dispatch.m_bucket(max_m)}
        for config in configs:
            gemm_sm90.reserve_workspace(pw.weight.device, max_m, pw.n, config)
