"""Argument validation for the op boundary (nvfp4_kit.ops): metadata only, so it is safe on fake
tensors under torch.compile and during CUDA-graph capture. A bad argument raises ValueError naming it."""

from __future__ import annotations

import torch

from .formats import BLOCK_SIZE, ScaleLayout, scale_shape

__all__ = ["FLOAT_ACTS", "SCALE_DTYPES", "WEIGHT_LAYOUTS", "as_e4m3", "check", "check_tensor",
           "validate_gemm", "validate_quantize"]

WEIGHT_LAYOUTS = ("linear", "sm90", "swizzled_128x4", "trtllm_128x4")

FLOAT_ACTS = (torch.bfloat16, torch.float16)
# Block scales may come as float8_e4m3fn or as their raw uint8 bytes (as FlashInfer accepts); kernels
# see a float8_e4m3fn view. (Also lets torch.library.opcheck's schema test run: it cannot compare fp8.)
SCALE_DTYPES = (torch.float8_e4m3fn, torch.uint8)


def as_e4m3(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.view(torch.float8_e4m3fn) if t is not None and t.dtype == torch.uint8 else t


def check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


# The checks below run on every eager call (~4 GEMMs per layer in a prefill): each message is
# formatted only when its check fails (formatting them all cost ~50 us per call on the CI machine).
def check_tensor(name, t, *, dtypes=None, dim=None, device=None, contiguous=True) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name}: dtype {t.dtype}, expected {', '.join(str(d) for d in dtypes)}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name}: expected {dim}-D, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: on {t.device}, expected {device} (same device as x)")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous (shape {tuple(t.shape)}, strides {t.stride()})")


def validate_gemm(x, x_scale, w, w_scale, alpha, layout, n, out_dtype, out=None) -> int:
    """Returns K. Shapes of the prepared weight are checked as far as the layout defines them."""
    if layout not in WEIGHT_LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {', '.join(WEIGHT_LAYOUTS)}")
    if not n > 0:
        raise ValueError(f"n={n}: must be positive")
    dev = x.device if isinstance(x, torch.Tensor) else None
    if x_scale is None:
        check_tensor("x", x, dtypes=FLOAT_ACTS, dim=2)
        k = x.shape[1]
    else:
        check_tensor("x", x, dtypes=(torch.uint8,), dim=2)
        check_tensor("x_scale", x_scale, dtypes=SCALE_DTYPES, dim=2, device=dev)
        k = x.shape[1] * 2
    if k % BLOCK_SIZE:
        raise ValueError(f"x: K={k} must be a multiple of {BLOCK_SIZE}")
    if layout == "sm90":  # pre-shuffled int32 words + uint8 scale codes, padded to whole tiles
        from .kernels.gemm_sm90_layout import check_prepared

        check_tensor("w", w, device=dev)
        check_tensor("w_scale", w_scale, device=dev)
        check_prepared(w, w_scale, n, k)
    else:
        check_tensor("w", w, dtypes=(torch.uint8,), device=dev)
        if w.numel() * 2 != n * k:
            raise ValueError(f"w: {w.numel()} bytes, expected N*K/2 = {n}*{k}/2 for n={n}, K={k}")
        check_tensor("w_scale", w_scale, dtypes=SCALE_DTYPES, device=dev)
    if layout == "linear":
        if tuple(w.shape) != (n, k // 2):
            raise ValueError(f"w: shape {tuple(w.shape)}, expected {(n, k // 2)}")
        if tuple(w_scale.shape) != (n, k // BLOCK_SIZE):
            raise ValueError(f"w_scale: shape {tuple(w_scale.shape)}, expected {(n, k // BLOCK_SIZE)}")
    if layout == "swizzled_128x4":  # trtllm_128x4 is row-shuffled by FlashInfer: checked there
        expect = scale_shape(n, k, ScaleLayout.SWIZZLED_128x4)
        if tuple(w_scale.shape) != expect:
            raise ValueError(f"w_scale: shape {tuple(w_scale.shape)}, expected {expect}")
    if x_scale is not None:
        act_layout = ScaleLayout.LINEAR if layout in ("linear", "sm90") else ScaleLayout.SWIZZLED_128x4
        expect = scale_shape(x.shape[0], k, act_layout)
        if tuple(x_scale.shape) != expect:
            raise ValueError(f"x_scale: shape {tuple(x_scale.shape)}, expected {expect}")
    check_tensor("alpha", alpha, dtypes=(torch.float32,), device=dev)
    if alpha.numel() not in (1, n):
        raise ValueError(f"alpha: {alpha.numel()} elements, expected 1 or N={n}")
    if out_dtype not in FLOAT_ACTS:
        raise ValueError(f"out_dtype: {out_dtype}, expected torch.bfloat16 or torch.float16")
    if out is not None:
        check_tensor("out", out, dtypes=(out_dtype,), dim=2, device=dev)
        if out.shape[0] != x.shape[0] or out.shape[1] != n:
            raise ValueError(f"out: shape {tuple(out.shape)}, expected {(x.shape[0], n)}")
    return k


def validate_quantize(x, global_scale, layout) -> ScaleLayout:
    check_tensor("x", x, dtypes=FLOAT_ACTS, dim=2)
    if x.shape[1] % BLOCK_SIZE:
        raise ValueError(f"x: K={x.shape[1]} must be a multiple of {BLOCK_SIZE}")
    check_tensor("global_scale", global_scale, dtypes=(torch.float32,), device=x.device)
    if global_scale.numel() != 1:
        raise ValueError(f"global_scale: expected 1 element, got shape {tuple(global_scale.shape)}")
    try:
        return ScaleLayout.parse(layout)
    except ValueError as exc:
        raise ValueError(f"layout: {exc}") from None
