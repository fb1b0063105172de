"""Every environment variable nvfp4_kit reads (and the one it sets for an engine), in one place.

Each getter reads the environment at call time, so tests can monkeypatch it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = [
    "cache_dir",
    "gemm_backend",
    "gemm_mode",
    "quant_backend",
    "disable_disk_cache",
    "log_level",
    "log_level_of",
    "kit_enabled_for_vllm",
    "kit_enabled_for_sglang",
    "cute_dsl_arch",
    "flashinfer_numerics_env",
    "source_commit",
    "disable_sglang_silu_fp4_fusion",
]


def _get(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _flag(name: str) -> bool:
    value = (_get(name, "0") or "0").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={os.environ[name]!r}: expected one of 1/0/true/false/yes/no/on/off")


def source_commit() -> str | None:
    """NVFP4_KIT_SOURCE_COMMIT: the git commit benchmark results record when the tree they run in has
    no history (a copy of the working tree on a GPU box); unset: `git rev-parse` decides."""
    return _get("NVFP4_KIT_SOURCE_COMMIT")


def cache_dir() -> Path:
    """NVFP4_KIT_CACHE_DIR: tuning tables (tuning/) and compiled kernels (kernels/)."""
    default = Path(_get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "nvfp4_kit"
    return Path(_get("NVFP4_KIT_CACHE_DIR", str(default))).expanduser()


def gemm_backend() -> str:
    """NVFP4_KIT_GEMM_BACKEND: force a GEMM backend by any of its names ("auto" lets the selector pick)."""
    return _get("NVFP4_KIT_GEMM_BACKEND", "auto")


def gemm_mode() -> str:
    """NVFP4_KIT_MODE: "w4a16" (default on SM90) or "w4a4" (Blackwell-numerics emulation)."""
    return _get("NVFP4_KIT_MODE", "w4a16").lower()


def quant_backend() -> str:
    """NVFP4_KIT_QUANT_BACKEND: force the activation-quantize backend."""
    return _get("NVFP4_KIT_QUANT_BACKEND", "auto")


def disable_disk_cache() -> bool:
    """NVFP4_KIT_DISABLE_DISK_CACHE=1: keep compiled kernels and tuning in memory only."""
    return _flag("NVFP4_KIT_DISABLE_DISK_CACHE")


def log_level() -> int | str:
    """NVFP4_KIT_LOG_LEVEL: level of the "nvfp4_kit" logger (default INFO): a level name or number."""
    return log_level_of("NVFP4_KIT_LOG_LEVEL")


def log_level_of(variable: str) -> int | str:
    """A logging level from `variable` (also mini_engine's MINI_ENGINE_LOG_LEVEL): a name in any
    case or a number; anything else names the variable instead of failing in logging."""
    value = _get(variable, "INFO").strip().upper()
    if value.isdigit():
        return int(value)
    names = logging.getLevelNamesMapping()
    if value not in names:
        raw = os.environ[variable]
        raise ValueError(f"{variable}={raw!r}: expected a number or one of {', '.join(names)}")
    return value


def kit_enabled_for_vllm() -> bool:
    """NVFP4_KIT_VLLM=1: the vLLM plugin puts the kit first in vLLM's NVFP4 kernel list."""
    return _flag("NVFP4_KIT_VLLM")


def kit_enabled_for_sglang() -> bool:
    """NVFP4_KIT_SGLANG=1: the SGLang plugin registers the kit's backend and hooks."""
    return _flag("NVFP4_KIT_SGLANG")


def cute_dsl_arch() -> str | None:
    """CUTE_DSL_ARCH (read by CuTe DSL itself): compile target when no GPU is present, e.g. sm_90a."""
    return _get("CUTE_DSL_ARCH")


def flashinfer_numerics_env() -> dict[str, str]:
    """FLASHINFER_NVFP4_4OVER6* variables change FlashInfer's quantize numerics.

    Comparisons against our reference need them unset; the SM100 path warns when any is set.
    """
    return {k: v for k, v in os.environ.items() if k.startswith("FLASHINFER_NVFP4_4OVER6")}


def disable_sglang_silu_fp4_fusion() -> str | None:
    """Set SGLang's own kill switch SGLANG_DISABLE_SILU_FP4_QUANT_FUSION=1 in this process. SGLang
    reads it when it builds a Qwen3.5 dense MLP (after the FP4 backend is decided): otherwise that MLP
    feeds down_proj a pre-quantized (fp4, scale) tuple with the layer's input_scale_inv, which a kit
    layer neither has nor accepts. Returns the value it replaced (None: unset), for the caller to log."""
    previous = os.environ.get("SGLANG_DISABLE_SILU_FP4_QUANT_FUSION")
    os.environ["SGLANG_DISABLE_SILU_FP4_QUANT_FUSION"] = "1"
    return previous
