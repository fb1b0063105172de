"""What the current device is: compute capability, arch family and the CuTe DSL compile target."""

from __future__ import annotations

import functools

import torch

from . import env
from .backends import arch_family

__all__ = ["capability", "family", "cute_arch", "is_capturing"]


@functools.cache
def _cuda_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def capability(device: torch.device | str | None) -> tuple[int, int] | None:
    """(major, minor) for a CUDA device, None for CPU (and for meta/fake tensors' CPU devices)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_capability(index)


def family(device: torch.device | str | None) -> str:
    """Key into backends.CAPABILITIES: "sm90", "sm100", "defer" or "cpu"."""
    return arch_family(capability(device))


def cute_arch(device: torch.device | str | None = None) -> str:
    """CuTe DSL target: from the GPU when there is one, else CUTE_DSL_ARCH (CPU compile), else sm_90a."""
    cap = capability(device) if device is not None else None
    if cap is None and torch.cuda.is_available() and device is None:
        cap = _cuda_capability(torch.cuda.current_device())
    if cap is not None:
        major, minor = cap
        suffix = "a" if major in (9, 10) else ""
        return f"sm_{major}{minor}{suffix}"
    return env.cute_dsl_arch() or "sm_90a"


def is_capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
