"""Backend names (ours and each engine's) and the capability table by GPU architecture.

A backend is *who computes* an NVFP4 GEMM or activation quantize. Every member knows the name vLLM,
SGLang and FlashInfer use for it, and `parse()` accepts any of them. The capability table says, per
architecture, which backends can run there and why; `nvfp4_kit.dispatch` picks among them per M.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "Fp4GemmBackend",
    "Fp4QuantBackend",
    "EngineNames",
    "ArchSupport",
    "CAPABILITIES",
    "arch_family",
    "is_backend_supported",
]


@dataclass(frozen=True)
class EngineNames:
    """The spelling of one backend in each ecosystem (None: that ecosystem has no such value)."""

    vllm: str | None = None  # vLLM `--linear-backend` value (NVFP4 linear kernels)
    vllm_kernel: str | None = None  # vLLM NVFP4 linear-kernel class name
    sglang: str | None = None  # SGLang `Fp4GemmRunnerBackend` value / `--fp4-gemm-backend`
    flashinfer: str | None = None  # FlashInfer `mm_fp4(backend=...)` / `fp4_quantize(backend=...)`


_PARSED: dict[tuple[type, str], enum.Enum] = {}


class _ParseMixin:
    """`parse` accepts our value, any engine's spelling, or a member; errors list every valid name."""

    @classmethod
    def parse(cls, value):
        if isinstance(value, cls):
            return value
        if isinstance(value, str):  # every eager op call parses its backend name: memoized
            member = _PARSED.get((cls, value))
            if member is not None:
                return member
        text = str(value).strip().lower().replace("-", "_")
        for member in cls:
            spellings = {member.value} | {
                s.lower().replace("-", "_") for s in vars(member.names).values() if s
            }
            if text in spellings:
                if isinstance(value, str):
                    _PARSED[(cls, value)] = member
                return member
        valid = sorted({n for m in cls for n in m.all_names()})
        raise ValueError(f"unknown {cls.__name__} {value!r}; valid names: {', '.join(valid)}")

    def all_names(self) -> list[str]:
        return [self.value] + [s for s in vars(self.names).values() if s and s != self.value]


class Fp4GemmBackend(_ParseMixin, str, enum.Enum):
    """Who computes `out = x @ W.T * alpha` for an NVFP4 weight."""

    AUTO = "auto"
    NVFP4_KIT = "nvfp4_kit"  # our CuTe DSL kernels (Hopper)
    FLASHINFER_CUTEDSL = "flashinfer_cutedsl"
    FLASHINFER_CUTLASS = "flashinfer_cutlass"
    FLASHINFER_TRTLLM = "flashinfer_trtllm"
    FLASHINFER_CUDNN = "flashinfer_cudnn"
    MARLIN = "marlin"  # engine-provided weight-only kernel
    HUMMING = "humming"  # engine-provided weight-only kernel (vLLM >= 0.33 on SM90)
    REFERENCE = "reference"  # pure torch, nvfp4_kit.reference

    @property
    def names(self) -> EngineNames:
        return _GEMM_NAMES[self]

    @property
    def engine_provided(self) -> bool:
        """Marlin/Humming live in vLLM/SGLang; the kit never runs them, it leaves them in place."""
        return self in (Fp4GemmBackend.MARLIN, Fp4GemmBackend.HUMMING)


class Fp4QuantBackend(_ParseMixin, str, enum.Enum):
    """Who quantizes activations to NVFP4 (W4A4)."""

    AUTO = "auto"
    NVFP4_KIT = "nvfp4_kit"
    FLASHINFER_CUTEDSL = "flashinfer_cutedsl"
    FLASHINFER_CUDA = "flashinfer_cuda"
    REFERENCE = "reference"

    @property
    def names(self) -> EngineNames:
        return _QUANT_NAMES[self]


# Verified against the released wheels: vLLM 0.33.0 `LinearBackend` (vllm/config/kernel.py) and its NVFP4
# kernel classes (vllm/model_executor/kernels/linear/nvfp4/), SGLang 0.5.23 `Fp4GemmRunnerBackend`
# (srt/layers/quantization/fp4_utils.py), FlashInfer 0.7.2.post1 `mm_fp4(backend=...)`. "nvfp4_kit" exists in
# vLLM/SGLang only with patches/ applied. vLLM's "emulation" backend (dequantize to bf16) is not our
# reference (different rounding of activations), so REFERENCE has no engine spelling.
_GEMM_NAMES: dict[Fp4GemmBackend, EngineNames] = {
    Fp4GemmBackend.AUTO: EngineNames(vllm="auto", sglang="auto", flashinfer="auto"),
    Fp4GemmBackend.NVFP4_KIT: EngineNames(
        vllm="nvfp4_kit", vllm_kernel="NvFp4KitLinearKernel", sglang="nvfp4_kit"
    ),
    Fp4GemmBackend.FLASHINFER_CUTEDSL: EngineNames(
        vllm="flashinfer_cutedsl", vllm_kernel="FlashInferCuteDslNvFp4LinearKernel",
        sglang="flashinfer_cutedsl", flashinfer="cute-dsl",
    ),
    Fp4GemmBackend.FLASHINFER_CUTLASS: EngineNames(
        vllm="flashinfer_cutlass", vllm_kernel="FlashInferCutlassNvFp4LinearKernel",
        sglang="flashinfer_cutlass", flashinfer="cutlass",
    ),
    Fp4GemmBackend.FLASHINFER_TRTLLM: EngineNames(
        vllm="flashinfer_trtllm", vllm_kernel="FlashInferTrtllmNvFp4LinearKernel",
        sglang="flashinfer_trtllm", flashinfer="trtllm",
    ),
    Fp4GemmBackend.FLASHINFER_CUDNN: EngineNames(
        vllm="flashinfer_cudnn", vllm_kernel="FlashInferCudnnNvFp4LinearKernel",
        sglang="flashinfer_cudnn", flashinfer="cudnn",
    ),
    Fp4GemmBackend.MARLIN: EngineNames(
        vllm="marlin", vllm_kernel="MarlinNvFp4LinearKernel", sglang="marlin"
    ),
    Fp4GemmBackend.HUMMING: EngineNames(vllm="humming", vllm_kernel="HummingNvFp4LinearKernel"),
    Fp4GemmBackend.REFERENCE: EngineNames(),
}

# Verified against the released wheels (vllm 0.33.0, sglang 0.5.23, flashinfer-python 0.7.2.post1):
# neither engine has a user-facing activation-quantize option, so only the kit's own backend has engine
# spellings (the GEMM value that routes quantization through the kit too). FlashInfer's fp4_quantize
# accepts backend="cuda" | "cute-dsl" only (no "auto"). SGLang picks cute-dsl on SM100 and cuda elsewhere,
# whatever --fp4-gemm-backend says, so "flashinfer_cutedsl" is not a quantize spelling there.
_QUANT_NAMES: dict[Fp4QuantBackend, EngineNames] = {
    Fp4QuantBackend.AUTO: EngineNames(),
    Fp4QuantBackend.NVFP4_KIT: EngineNames(vllm="nvfp4_kit", sglang="nvfp4_kit"),
    Fp4QuantBackend.FLASHINFER_CUTEDSL: EngineNames(flashinfer="cute-dsl"),
    Fp4QuantBackend.FLASHINFER_CUDA: EngineNames(flashinfer="cuda"),
    Fp4QuantBackend.REFERENCE: EngineNames(),
}


@dataclass(frozen=True)
class ArchSupport:
    """What runs on one architecture family, in order of preference, and why."""

    family: str
    gemm: tuple[Fp4GemmBackend, ...]
    quant: tuple[Fp4QuantBackend, ...]
    why: str
    executed_here: bool  # was this path run on real hardware by this project?


B, Q = Fp4GemmBackend, Fp4QuantBackend
CAPABILITIES: dict[str, ArchSupport] = {
    "sm90": ArchSupport(
        "sm90", (B.NVFP4_KIT, B.REFERENCE), (Q.NVFP4_KIT, Q.REFERENCE),
        "Hopper has no FP4 tensor cores and FlashInfer's mm_fp4 has no SM90 backend; our CuTe DSL "
        "kernels dequantize e2m1 in registers and run bf16 wgmma (W4A16, or W4A4 emulation).",
        executed_here=True,
    ),
    "sm100": ArchSupport(
        "sm100", (B.FLASHINFER_CUTEDSL, B.FLASHINFER_TRTLLM, B.FLASHINFER_CUTLASS, B.FLASHINFER_CUDNN),
        (Q.FLASHINFER_CUTEDSL, Q.FLASHINFER_CUDA, Q.NVFP4_KIT),
        "Blackwell datacenter parts (SM100/SM103) have native block-scaled FP4 MMA; FlashInfer's "
        "kernels use it. NOT executed by this project: no Blackwell GPU was available.",
        executed_here=False,
    ),
    "defer": ArchSupport(
        "defer", (B.MARLIN,), (),
        "SM80/SM89/SM120: the kit has no kernel there; inside vLLM/SGLang the engine's own NVFP4 path "
        "(Marlin/Humming or its SM120 kernels) stays in place. Our reference is never used on a GPU "
        "by 'auto' because it is far too slow.",
        executed_here=False,
    ),
    "cpu": ArchSupport(
        "cpu", (B.REFERENCE,), (Q.REFERENCE,),
        "No GPU: the pure-torch reference (exact, slow) serves tests and the CPU engine.",
        executed_here=True,
    ),
}
del B, Q


def arch_family(capability: tuple[int, int] | None) -> str:
    """(major, minor) compute capability, or None for CPU -> a CAPABILITIES key."""
    if capability is None:
        return "cpu"
    major, _minor = capability
    if major == 9:
        return "sm90"
    if major == 10:  # SM100 and SM103
        return "sm100"
    return "defer"


def is_backend_supported(backend: Fp4GemmBackend | str, capability: tuple[int, int] | None) -> bool:
    """Can `backend` compute on a device of this capability (its optional dependency aside)?"""
    member = Fp4GemmBackend.parse(backend)
    if member is Fp4GemmBackend.AUTO:
        return True
    if member is Fp4GemmBackend.REFERENCE:
        return True  # runs anywhere, but 'auto' picks it only on CPU
    return member in CAPABILITIES[arch_family(capability)].gemm
