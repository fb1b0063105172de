"""Blackwell (SM100/SM103) delegation to FlashInfer: ``mm_fp4`` and ``fp4_quantize``.

NOT EXECUTED BY THIS PROJECT: no Blackwell GPU was available. The call contract is unit-tested on CPU
against FlashInfer 0.7.2.post1's real signatures (tests/nvfp4_kit/test_flashinfer_sm100.py binds every
call to the installed functions and checks layouts with a recording fake of the boundary).

Layouts (FlashInfer's documented conventions for the cute-dsl, cutlass and cudnn backends):
* A: activations, packed e2m1 uint8 [M, K/2], scales 128x4-swizzled [round_up(M,128), round_up(K/16,4)].
* B: the weight as a column-major [K/2, N] view, i.e. ``weight.T`` of the contiguous [N, K/2] checkpoint
  tensor; its 128x4-swizzled scales passed as ``weight_scale.T``.
* alpha: fp32 tensor with one element (input_scale * weight_scale_2). mm_fp4 has no per-output-channel
  alpha (its [M] form is per token), so a per-channel alpha (fused shards with different global scales)
  is applied after the GEMM: one extra elementwise pass, and the output is rounded to bf16 twice.
* trtllm needs its own weight shuffle (``shuffle_matrix_a``/``shuffle_matrix_sf_a``, epilogue tile 128),
  so a layer prepared for trtllm stays on trtllm; the other three share one preparation and the
  selector may pick among them per M bucket (cutlass/cudnn only where N % 32 == 0: vLLM pads N to 32
  for them). `backend_for_layout` refuses every other pairing.
* Allocation: FlashInfer allocates its own quantize outputs (copied into ours) and the per-channel
  alpha path makes an fp32 temporary, so this path is not allocation-free like the SM90 kernels.

Quantization passes ``nvfp4_4over6=None`` so that FlashInfer ignores the ``FLASHINFER_NVFP4_4OVER6*``
environment variables (they change numerics). Its default kernels use approximate reciprocals, so a rare
element can differ by one e2m1 step from nvfp4_kit.reference (see reference.py).
"""

from __future__ import annotations

import logging

import torch

from .. import env
from ..backends import Fp4GemmBackend, Fp4QuantBackend
from ..formats import ScaleLayout, scale_shape

__all__ = [
    "TRTLLM_EPILOGUE_TILE_M",
    "SHARED_PREP_BACKENDS",
    "backend_for_layout",
    "check_shape",
    "prepare_trtllm_weight",
    "gemm_out",
    "quantize_out",
]

log = logging.getLogger("nvfp4_kit.flashinfer_sm100")
TRTLLM_EPILOGUE_TILE_M = 128
SHARED_PREP_BACKENDS = (
    Fp4GemmBackend.FLASHINFER_CUTEDSL,
    Fp4GemmBackend.FLASHINFER_CUTLASS,
    Fp4GemmBackend.FLASHINFER_CUDNN,
)


def _flashinfer():
    try:
        import flashinfer
    except ImportError as exc:
        raise ImportError(
            "the SM100 path needs FlashInfer: pip install 'nvfp4-kit[flashinfer]' "
            f"(flashinfer-python); import failed: {exc}"
        ) from exc
    if env.flashinfer_numerics_env():
        log.warning("FLASHINFER_NVFP4_4OVER6* is set (%s); nvfp4_kit passes nvfp4_4over6=None, so it is "
                    "ignored here", sorted(env.flashinfer_numerics_env()))
    return flashinfer


def backend_for_layout(layout: str, backend: Fp4GemmBackend) -> Fp4GemmBackend:
    """The FlashInfer backend a weight prepared in `layout` may run with (AUTO: the layout's default).

    trtllm reads row-shuffled weights ("trtllm_128x4"); cute-dsl, cutlass and cudnn read the plain
    128x4 layout ("swizzled_128x4"). Any other pairing would compute garbage silently, so it raises.
    """
    allowed = (Fp4GemmBackend.FLASHINFER_TRTLLM,) if layout == "trtllm_128x4" else SHARED_PREP_BACKENDS
    if backend is Fp4GemmBackend.AUTO:
        return allowed[0]
    if backend not in allowed:
        names = ", ".join(b.value for b in allowed)
        raise ValueError(f"backend={backend.value!r} cannot run weights prepared as layout={layout!r}; "
                         f"valid: {names}")
    return backend


def check_shape(n: int, k: int, backend: Fp4GemmBackend = Fp4GemmBackend.FLASHINFER_CUTEDSL) -> None:
    """FlashInfer's cute-dsl FP4 GEMM needs N % 8 == 0; trtllm's weight shuffle N % 128 == 0; the 128x4
    scale atoms need K % 64 == 0 here."""
    if n % 8:
        raise ValueError(f"n={n}: FlashInfer's cute-dsl FP4 GEMM requires N % 8 == 0")
    if backend is Fp4GemmBackend.FLASHINFER_TRTLLM and n % TRTLLM_EPILOGUE_TILE_M:
        raise ValueError(f"n={n}: FlashInfer's trtllm weight shuffle requires N % 128 == 0")
    if k % 64:
        raise ValueError(f"k={k}: the SM100 path requires K % 64 == 0 (whole 128x4 scale atoms)")


def prepare_trtllm_weight(w_packed: torch.Tensor, w_scale_linear: torch.Tensor):
    """TRT-LLM-gen's row shuffle of the weight and its linear scales (-> 128x4), done once at load."""
    fi = _flashinfer()
    n, k = w_packed.shape[0], w_packed.shape[1] * 2
    w = fi.shuffle_matrix_a(w_packed.view(torch.uint8), TRTLLM_EPILOGUE_TILE_M)
    sf = fi.shuffle_matrix_sf_a(w_scale_linear.view(torch.uint8), TRTLLM_EPILOGUE_TILE_M)
    # FlashInfer returns the interleaved scales flat; mm_fp4 takes them as a 2-D (rows, Kc) tensor .T
    sf = sf.reshape(scale_shape(n, k, ScaleLayout.SWIZZLED_128x4))
    return w.contiguous(), sf.view(torch.float8_e4m3fn)


def gemm_out(x_packed, x_scale, w, w_scale, alpha, out, backend: Fp4GemmBackend) -> None:
    """out[M, N] = NVFP4 x NVFP4 via flashinfer.mm_fp4; backend is the FlashInfer backend for this M."""
    fi = _flashinfer()
    name = backend.names.flashinfer
    if name is None:
        raise ValueError(f"backend={backend.value!r} is not a FlashInfer GEMM backend")
    per_channel = alpha.numel() > 1
    fi.mm_fp4(
        x_packed,
        w.T,  # column-major (K/2, N) view of the contiguous (N, K/2) weight
        x_scale,
        w_scale.T,
        None if per_channel else alpha,
        out.dtype,
        out,
        block_size=16,
        use_8x4_sf_layout=False,
        backend=name,
        use_nvfp4=True,
    )
    if per_channel:
        out.copy_(out.float().mul_(alpha.view(1, -1)))


def quantize_out(x, global_scale, layout: ScaleLayout, out_packed, out_scale,
                 backend: Fp4QuantBackend) -> None:
    """fp4_quantize into preallocated outputs (FlashInfer allocates its own; we copy)."""
    fi = _flashinfer()
    packed, sf = fi.fp4_quantize(
        x,
        global_scale,
        sf_vec_size=16,
        sf_use_ue8m0=False,
        is_sf_swizzled_layout=layout is ScaleLayout.SWIZZLED_128x4,
        is_sf_8x4_layout=False,
        backend=backend.names.flashinfer,
        nvfp4_4over6=None,
    )
    out_packed.copy_(packed.view(torch.uint8).view(out_packed.shape))
    out_scale.copy_(sf.view(torch.float8_e4m3fn).view(out_scale.shape))
