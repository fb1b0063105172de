"""SGLang adapter (pinned: sglang==0.5.23): the kit behind SGLang's ModelOpt NVFP4 linear layers.

SGLang computes a ModelOpt NVFP4 dense linear in ``ModelOptFp4LinearMethod`` (W4A4 checkpoints) and
``ModelOptNvFp4A16LinearMethod`` (W4A16) in srt/layers/quantization/modelopt_quant.py; the backend comes
from ``Fp4GemmRunnerBackend`` (srt/layers/quantization/fp4_utils.py), whose ``auto`` means Marlin on
SM80-SM90 (any ``flashinfer_*`` backend raises there in process_weights_after_loading) and
``flashinfer_cutedsl`` on SM100. The enum rejects unknown values, so ``--fp4-gemm-backend nvfp4_kit``
needs patches/sglang (enum member + CLI choice + the import line, at the end of the quantization
package's __init__, that calls `install()` below).

The kit is selected when the backend is ``nvfp4_kit`` (patched SGLang), or when it is ``auto`` and
NVFP4_KIT_SGLANG=1 (plugin, no patch), and the GPU is one the kit serves (SM90; SM100 for W4A4
checkpoints). An explicit ``nvfp4_kit`` on another GPU is replaced by what ``auto`` would pick there,
with a warning, so SGLang's own kernels stay in place on SM80/89/120.

For a selected process, AROUND hooks on the two ModelOpt linear methods and on the compressed-tensors
W4A4 NVFP4 scheme (``CompressedTensorsW4A4Fp4``, SM100+ in SGLang; it calls ``fp4_gemm`` with the
backend's name, so an explicit ``nvfp4_kit`` must take it over too):
* ``process_weights_after_loading``: prepare the weight once for the kit (on SM90 instead of Marlin's
  repack), keeping per-shard weight_scale_2 exact through a per-output-channel alpha, then compile the
  configs for every M up to the largest CUDA-graph batch / prefill chunk (before capture);
* ``apply``: ``nvfp4_kit.ops.linear`` -> ``nvfp4::quantize`` (W4A4 activations) + ``nvfp4::gemm``: the
  kit replaces SGLang's ``fp4_quantize`` + ``fp4_gemm`` pair for these layers;
* ``initialize_fp4_gemm_config`` (after it): decide right away, so the fallback above is in place
  before any layer or MoE method reads the backend;
* ``Fp4GemmRunnerBackend.supports_swiglu_fusion`` -> False, so DeepSeek's SM100 fused SwiGLU path (which
  bypasses ``apply`` with its own interleaved weights) is not built for kit layers.
* and, once selected, SGLang's kill switch SGLANG_DISABLE_SILU_FP4_QUANT_FUSION=1 (env.py), so Qwen3.5's
  dense MLP (built after the decision) does not feed down_proj a pre-quantized (fp4, scale) tuple.
MoE layers, compressed-tensors W4A16 NVFP4 and every other quantization keep SGLang's own kernels.

Hooks are installed either directly by `install()` (patched SGLang, when srt.layers.quantization is
imported) or through SGLang's ``HookRegistry`` by `register_hooks()` (the ``sglang.srt.plugins`` entry
point). When both run, the outer hook passes straight through to the inner one.

Not run on a GPU inside SGLang by this project (SGLang is not installed on the project's GPU machine).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pkgutil

import torch

from .. import env
from ..backends import Fp4GemmBackend
from . import layer_prep

__all__ = ["BACKEND_NAME", "PINNED_VERSION", "HOOKS", "install", "register_hooks", "kit_selected", "decide"]

log = logging.getLogger("nvfp4_kit.adapters.sglang")

BACKEND_NAME = Fp4GemmBackend.NVFP4_KIT.names.sglang  # "nvfp4_kit"
PINNED_VERSION = "0.5.23"
_MODELOPT = "sglang.srt.layers.quantization.modelopt_quant"
_FP4_UTILS = "sglang.srt.layers.quantization.fp4_utils"
_W4A4_METHOD = f"{_MODELOPT}.ModelOptFp4LinearMethod"
_W4A16_METHOD = f"{_MODELOPT}.ModelOptNvFp4A16LinearMethod"
_CT_W4A4_SCHEME = (
    "sglang.srt.layers.quantization.compressed_tensors.schemes.compressed_tensors_w4a4_nvfp4"
    ".CompressedTensorsW4A4Fp4"
)
_DEFAULT_MAX_M = 8192
_MARK = "__nvfp4_kit_hook__"
_registered_targets: set[str] = set()  # targets handed to HookRegistry (it applies them later)
_decision: tuple[bool, str] | None = None  # cached per process once the FP4 backend is initialized


def _capability() -> tuple[int, int] | None:
    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


def _requested_backend() -> str | None:
    """The raw --fp4-gemm-backend value (before SGLang resolves 'auto'), None if unpublished."""
    try:
        from sglang.srt.runtime_context import get_exec

        return str(get_exec().kernel.fp4_gemm_runner_backend)
    except Exception:  # config not published (offline use, tests): treat as unknown
        return None


def _engine_auto_choice(capability: tuple[int, int] | None) -> str:
    """What SGLang 0.5.23's initialize_fp4_gemm_config picks for 'auto' (fp4_utils.py)."""
    if capability is not None and capability[0] == 10:
        return "flashinfer_cutedsl"
    if capability is not None and (8, 0) <= capability < (10, 0):
        return "marlin"
    return "flashinfer_cutlass"


def decide(current: str, requested: str | None, capability: tuple[int, int] | None) -> tuple[bool, str]:
    """(kit selected?, why). Pure; unit-tested. current: the initialized Fp4GemmRunnerBackend value."""
    if current == BACKEND_NAME:
        why = "--fp4-gemm-backend nvfp4_kit"
    elif env.kit_enabled_for_sglang() and requested == "auto":
        why = "NVFP4_KIT_SGLANG=1 with --fp4-gemm-backend auto"
    else:
        return False, f"--fp4-gemm-backend {requested or current}"
    reason = layer_prep.unsupported_reason(capability)
    return (reason is None), (why if reason is None else reason)


def kit_selected() -> bool:
    """Is the kit this process's NVFP4 dense-linear backend? Decided once the FP4 backend exists."""
    global _decision
    if _decision is not None:
        return _decision[0]
    import importlib

    fp4_utils = importlib.import_module(_FP4_UTILS)
    current = fp4_utils.FP4_GEMM_RUNNER_BACKEND
    if current is None:  # initialize_fp4_gemm_config has not run: decide later
        return False
    capability = _capability()
    selected, why = decide(current.value, _requested_backend(), capability)
    if current.value == BACKEND_NAME and not selected:
        fallback = _engine_auto_choice(capability)
        log.warning("--fp4-gemm-backend nvfp4_kit: %s; using SGLang's %s instead", why, fallback)
        fp4_utils.FP4_GEMM_RUNNER_BACKEND = fp4_utils.Fp4GemmRunnerBackend(fallback)
    elif selected:
        log.info("nvfp4_kit serves SGLang's ModelOpt NVFP4 linear layers (%s)", why)
        previous = env.disable_sglang_silu_fp4_fusion()
        if previous != "1":  # an explicit other value of the user's is overridden: say so louder
            was = "unset" if previous is None else repr(previous)
            log.log(logging.WARNING if previous is not None else logging.INFO,
                    "set SGLANG_DISABLE_SILU_FP4_QUANT_FUSION=1 (was %s): kit layers take bf16 "
                    "activations, not Qwen3.5's fused SiLU+FP4-quantize output", was)
    _decision = (selected, why)
    return selected


def _max_m() -> int:
    """Largest M to warm up: the biggest decode CUDA-graph batch or the prefill chunk."""
    try:
        from sglang.srt.runtime_context import get_exec, get_schedule

        sizes = list(get_exec().graph.cuda_graph_config.decode.bs or [])
        chunk = get_schedule().chunked_prefill_size or 0
        return max([chunk, *sizes]) or _DEFAULT_MAX_M
    except Exception:  # unpublished config: cover every M bucket
        return _DEFAULT_MAX_M


# ------------------------------------------------------------------------------------------- hooks
def _passthrough(original) -> bool:
    """True when `original` is already our hook (installed by the other path): let it decide."""
    return getattr(original, _MARK, False)


def _checkpoint_tensors(method, layer):
    """(weight param name, weight, block scales, weight_scale_2 (1 or N), input_scale | None, W4A16?)
    in ModelOpt terms, for the two ModelOpt methods and the compressed-tensors W4A4 scheme."""
    if type(method).__name__ == "CompressedTensorsW4A4Fp4":
        # compressed-tensors stores encode-side global scales (448*6/amax): ModelOpt's are their inverse.
        # One activation scale per layer, taken as SGLang does (max of the encode scales).
        weight = layer.weight_packed.data
        ws2 = 1.0 / layer.weight_global_scale.data.float()
        in_scale = 1.0 / layer.input_global_scale.data.float().max()
        return "weight_packed", weight, layer.weight_scale.data, ws2, in_scale, False
    w4a16 = type(method).__name__ == "ModelOptNvFp4A16LinearMethod"
    in_scale = None if w4a16 else layer.input_scale.data
    return "weight", layer.weight.data, layer.weight_scale.data, layer.weight_scale_2.data, in_scale, w4a16


def _process_hook(original, method, layer) -> None:
    if _passthrough(original) or not kit_selected():
        return original(method, layer)
    from sglang.srt.layers.utils import copy_or_rebind_param

    weight_name, weight, scale, ws2, in_scale, w4a16 = _checkpoint_tensors(method, layer)
    if w4a16 and layer_prep.unsupported_reason(_capability(), w4a16_checkpoint=True):
        return original(method, layer)  # SM100: FlashInfer is W4A4 only; SGLang's Marlin stays
    if getattr(layer, "_interleave_for_swiglu_fusion", False):
        raise ValueError("nvfp4_kit: layer was flagged for SGLang's fused SwiGLU path, which the kit lacks")
    widths = getattr(layer, "logical_widths", None)
    pw = layer_prep.prepare(
        getattr(layer, "prefix", None) or type(layer).__name__, weight, scale,
        layer_prep.shard_scale_per_channel(ws2, widths, weight.shape[0]), in_scale,
        w4a16_checkpoint=w4a16,
    )
    copy_or_rebind_param(layer, weight_name, pw.weight)
    copy_or_rebind_param(layer, "weight_scale", pw.weight_scale)
    # The parameters hold the kit's layout (same objects, so weight reload still finds them); the
    # PreparedWeight points at their storage, so the weight is held once.
    layer.nvfp4_kit_weight = dataclasses.replace(
        pw, weight=getattr(layer, weight_name).data, weight_scale=layer.weight_scale.data
    )
    layer_prep.warm_up(layer.nvfp4_kit_weight, _max_m())


def _apply_hook(original, method, layer, x, bias=None):
    pw = getattr(layer, "nvfp4_kit_weight", None)
    if _passthrough(original) or pw is None:
        return original(method, layer, x, bias)
    if isinstance(x, tuple):
        raise ValueError("nvfp4_kit: pre-quantized (fp4, scale) activations are not accepted by kit layers "
                         "(a fused SiLU+quantize path is on: set SGLANG_DISABLE_SILU_FP4_QUANT_FUSION=1)")
    if getattr(getattr(method, "quant_config", None), "is_awq", False):
        x = x * layer.pre_quant_scale  # NVFP4_AWQ: per-input-channel pre-scale, as SGLang applies it
    return layer_prep.forward(x, pw, bias)


def _init_hook(original, *args, **kwargs):
    """After SGLang resolves its FP4 backend, decide at once (an explicit nvfp4_kit on a GPU the kit
    does not serve is replaced before any layer or MoE method reads the backend)."""
    global _decision
    result = original(*args, **kwargs)
    if not _passthrough(original):
        _decision = None
        kit_selected()
    return result


def _swiglu_hook(original, backend):
    if _passthrough(original) or not kit_selected():
        return original(backend)
    return False


HOOKS: tuple[tuple[str, object], ...] = (
    (f"{_FP4_UTILS}.initialize_fp4_gemm_config", _init_hook),
    (f"{_W4A4_METHOD}.process_weights_after_loading", _process_hook),
    (f"{_W4A4_METHOD}.apply", _apply_hook),
    (f"{_W4A16_METHOD}.process_weights_after_loading", _process_hook),
    (f"{_W4A16_METHOD}.apply", _apply_hook),
    (f"{_CT_W4A4_SCHEME}.process_weights_after_loading", _process_hook),
    (f"{_CT_W4A4_SCHEME}.apply_weights", _apply_hook),
    (f"{_FP4_UTILS}.Fp4GemmRunnerBackend.supports_swiglu_fusion", _swiglu_hook),
)


def _wrap(original, hook):
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        return hook(original, *args, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def install() -> None:
    """Wrap the hooked methods in place (patched SGLang). Idempotent; skips targets the plugin owns."""
    for target, hook in HOOKS:
        if target in _registered_targets:
            continue
        owner_path, attr = target.rsplit(".", 1)
        owner = pkgutil.resolve_name(owner_path)
        current = vars(owner)[attr]
        if getattr(current, _MARK, False):
            continue
        wrapped = _wrap(current, hook)
        setattr(owner, attr, wrapped)
        if not isinstance(owner, type):  # a module function: fix `from ... import name` copies too
            layer_prep.rebind_imported_names(current, wrapped)



def register_hooks() -> None:
    """Hand the same hooks to SGLang's HookRegistry (plugin mode); load_plugins() applies them."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for target, hook in HOOKS:
        if target not in _registered_targets:
            HookRegistry.register(target, hook, HookType.AROUND)
            _registered_targets.add(target)
