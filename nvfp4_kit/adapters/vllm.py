"""vLLM adapter (pinned: vllm==0.33.0): nvfp4_kit as one of vLLM's NVFP4 linear kernels.

vLLM picks one NVFP4 linear kernel per layer in ``init_nvfp4_linear_kernel``
(vllm/model_executor/kernels/linear/__init__.py) from ``_POSSIBLE_NVFP4_KERNELS``, filtered by
``--linear-backend``. The kernel class below implements vLLM's ``NvFp4LinearKernel`` interface; every
NVFP4 checkpoint format vLLM loads (ModelOpt NVFP4 / W4A16_NVFP4, compressed-tensors, Quark) hands it
the same normalized layer: ``weight`` (N, K/2) uint8, ``weight_scale`` (N, K/16) e4m3,
``weight_global_scale`` (= weight_scale_2, already reduced to one value per layer by vLLM), and for W4A4
checkpoints ``input_global_scale`` (= input_scale, amax/2688).

`register()` is called by the patched vLLM (patches/vllm: ``--linear-backend nvfp4_kit``) or by the
``vllm.general_plugins`` entry point when NVFP4_KIT_VLLM=1. It
1. puts NvFp4KitLinearKernel first in the CUDA NVFP4 kernel list when NVFP4_KIT_VLLM=1 (vLLM's own
   ``register_linear_kernel`` appends at the lowest priority, so the plugin inserts at the front);
2. wraps ``init_nvfp4_linear_kernel``: when the kit is requested (``--linear-backend nvfp4_kit``, or
   ``auto`` with NVFP4_KIT_VLLM=1) and serves this GPU, it returns the kit's kernel for W4A4 *and*
   W4A16 layers. The wrapper is needed because the pinned selector prefilters W4A16 layers to a fixed
   tuple of weight-only kernels and, under ``auto``, forces Marlin/Humming on SM80-SM90 before it
   looks at the list. Everywhere else (SM80/89/120, W4A16 checkpoints on SM100, VLLM_BATCH_INVARIANT,
   NvFp4KitLinearKernel in VLLM_DISABLED_KERNELS) vLLM's own selection runs unchanged.

Fusion passes: vLLM's compile passes pattern-match ``_C::scaled_fp4_quant`` (rms_norm+quant,
silu_mul+quant, attention+quant, allreduce+rms+quant) to fuse activation quantization into the
producer. A kit layer reports ``input_quant_key() is None`` (it takes bf16 activations) and quantizes
inside ``nvfp4::quantize_dequantize`` / ``nvfp4::quantize`` (W4A4) or not at all (W4A16), so those
patterns never match for kit layers: the passes leave them alone and the activation quantization stays
unfused (one extra read of x per W4A4 layer). Nothing breaks; the fusion is simply not available.

Not run on a GPU inside vLLM by this project (vLLM is not installed on the project's GPU machine).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
from collections.abc import Callable

import torch
from vllm.model_executor.kernels.linear.nvfp4.base import (
    NvFp4LinearKernel,
    NvFp4LinearLayerConfig,
)

from .. import env
from ..backends import Fp4GemmBackend
from . import layer_prep

__all__ = ["BACKEND_NAME", "PINNED_VERSION", "NvFp4KitLinearKernel", "register", "kit_requested"]

log = logging.getLogger("nvfp4_kit.adapters.vllm")

BACKEND_NAME = Fp4GemmBackend.NVFP4_KIT.names.vllm  # the --linear-backend value: "nvfp4_kit"
PINNED_VERSION = "0.33.0"
_LINEAR_MODULE = "vllm.model_executor.kernels.linear"
_DEFAULT_MAX_M = 8192  # warm-up bound when no vLLM config is current (unit tests, offline scripts)


def _capability(compute_capability: int | None = None) -> tuple[int, int] | None:
    """vLLM's int capability (90, 100, ...) or the current device's -> (major, minor); None off CUDA."""
    if compute_capability is None:
        from vllm.platforms import current_platform

        if not current_platform.is_cuda():
            return None
        cc = current_platform.get_device_capability()
        if cc is None:
            return None
        compute_capability = cc.to_int()
    return divmod(int(compute_capability), 10)


def _max_m() -> int:
    """Largest M this process will run: the biggest CUDA-graph size or the prefill token budget."""
    from vllm.config import get_current_vllm_config_or_none

    config = get_current_vllm_config_or_none()
    if config is None:
        return _DEFAULT_MAX_M
    sizes = list(getattr(config.compilation_config, "cudagraph_capture_sizes", None) or [])
    budget = getattr(config.scheduler_config, "max_num_batched_tokens", None) or 0
    return max([budget, *sizes]) or _DEFAULT_MAX_M


class NvFp4KitLinearKernel(NvFp4LinearKernel):
    """NVFP4 linear through nvfp4_kit: SM90 CuTe DSL kernels, SM100 FlashInfer chosen per M."""

    @classmethod
    def is_supported(cls, compute_capability: int | None = None) -> tuple[bool, str | None]:
        reason = layer_prep.unsupported_reason(_capability(compute_capability))
        return reason is None, reason

    @classmethod
    def can_implement(cls, config: NvFp4LinearLayerConfig) -> tuple[bool, str | None]:
        return True, None  # shapes are checked per layer in process_weights_after_loading

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        from vllm.model_executor.utils import replace_parameter

        input_scale = getattr(layer, "input_global_scale", None)  # amax/2688; absent for W4A16
        w4a16 = bool(getattr(layer, "is_w4a16_nvfp4", False)) or input_scale is None
        name = getattr(layer, "prefix", None) or type(layer).__name__
        pw = layer_prep.prepare(
            name, layer.weight.data, layer.weight_scale.data, layer.weight_global_scale.data,
            None if w4a16 else input_scale.data, w4a16_checkpoint=w4a16,
        )
        # The layer's parameters now hold the kit's layout (vLLM keeps the Parameter objects so weight
        # reloading works); the PreparedWeight points at the same storage, so the weight is held once.
        replace_parameter(layer, "weight", pw.weight)
        replace_parameter(layer, "weight_scale", pw.weight_scale)
        layer.nvfp4_kit_weight = dataclasses.replace(
            pw, weight=layer.weight.data, weight_scale=layer.weight_scale.data
        )
        layer_prep.warm_up(layer.nvfp4_kit_weight, _max_m())

    def apply_weights(
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return layer_prep.forward(x, layer.nvfp4_kit_weight, bias)


def kit_requested(linear_backend: str, use_a16: bool, capability: tuple[int, int] | None) -> str | None:
    """Why the kit does NOT serve this layer type (None: it does). Pure; unit-tested.

    linear_backend: vLLM's resolved --linear-backend for this quantization ("auto", "nvfp4_kit", ...).
    """
    if linear_backend not in ("auto", BACKEND_NAME):
        return f"--linear-backend {linear_backend}"
    if linear_backend == "auto" and not env.kit_enabled_for_vllm():
        return "--linear-backend auto and NVFP4_KIT_VLLM is not set"
    return layer_prep.unsupported_reason(capability, w4a16_checkpoint=use_a16)


def _make_selector(original: Callable, module) -> Callable:
    @functools.wraps(original)
    def init_nvfp4_linear_kernel(use_a16: bool = False) -> NvFp4LinearKernel:
        import vllm.envs as envs

        backend = module._get_linear_backend(quantization="nvfp4_w4a16" if use_a16 else "nvfp4_w4a4")
        if envs.VLLM_BATCH_INVARIANT or NvFp4KitLinearKernel.__name__ in envs.VLLM_DISABLED_KERNELS:
            return original(use_a16=use_a16)  # batch invariance / an explicit opt-out win, as for vLLM's own
        reason = kit_requested(backend, use_a16, _capability())
        if reason is None:
            log.info("Using NvFp4KitLinearKernel for NVFP4 GEMM (%s)", "W4A16" if use_a16 else "W4A4")
            return NvFp4KitLinearKernel(NvFp4LinearLayerConfig())
        if backend == BACKEND_NAME:
            log.warning("--linear-backend nvfp4_kit: %s; vLLM selects its own NVFP4 kernel", reason)
        return original(use_a16=use_a16)

    init_nvfp4_linear_kernel.__nvfp4_kit_original__ = original
    return init_nvfp4_linear_kernel



def register(module=None) -> None:
    """Make the kit selectable in this process. Idempotent; called by the patch or the plugin.

    module: vllm.model_executor.kernels.linear (passed by the patch while that module initializes).
    """
    from vllm.platforms import PlatformEnum

    module = module or importlib.import_module(_LINEAR_MODULE)
    kernels = module._POSSIBLE_NVFP4_KERNELS.setdefault(PlatformEnum.CUDA, [])
    if env.kit_enabled_for_vllm() and NvFp4KitLinearKernel not in kernels:
        kernels.insert(0, NvFp4KitLinearKernel)
    current = module.init_nvfp4_linear_kernel
    if getattr(current, "__nvfp4_kit_original__", None) is None:
        wrapped = _make_selector(current, module)
        layer_prep.rebind_imported_names(current, wrapped)
        module.init_nvfp4_linear_kernel = wrapped
