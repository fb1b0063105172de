"""What the current device is: compute capability, arch family, and whether a CUDA graph is capturing."""

from __future__ import annotations

import functools

import torch

from .backends import arch_family

__all__ = ["capability", "family", "is_capturing"]


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


def is_capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
