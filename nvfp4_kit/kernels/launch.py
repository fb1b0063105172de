"""Low-overhead launches of compiled CuTe DSL kernels: C arguments written into per-thread slots.

Why: calling a compiled CuTe DSL function converts every Python argument through the DSL's generic
adapters (``execution_args.generate_execution_args``) and builds a DSL object per argument
(``make_ptr``, ``Int64``, ``CUstream``): ~80 us for the GEMM's 14 arguments on the 2-core CI
machine (``python benchmarks/dev_host_overhead.py`` measures it on a GPU), more than a decode
GEMM's GPU time. The compiled host entry only takes a ``void**`` with one pointer to each
argument's value, and every runtime argument of our kernels is a 64-bit word (a device pointer,
an ``Int64`` address, the ``CUstream`` handle) or a 32-bit ``Int32`` / ``Uint32``. A `Launcher`
keeps one ctypes slot per argument and thread, writes the call's integers into them and hands the
same addresses to the compiled function's ``run_compiled_program`` (the DSL's own launch step,
which checks the CUDA result).

Safety: the first call of each launcher also marshals the same values the DSL's way
(``dsl_args`` builds the DSL objects) and compares the bytes of every argument; if they differ (a
DSL version with another calling convention) it logs a warning and calls the DSL's path from then
on. `check_calling_convention` is that comparison alone; the CPU tests run it on compiled kernels.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "Launcher",
    "ARG_WORD",
    "ARG_I32",
    "ARG_U32",
    "check_calling_convention",
    "current_stream_handle",
    "on_device",
]

log = logging.getLogger("nvfp4_kit.launch")

ARG_WORD = "w"  # 64-bit: device pointer, Int64 address, CUstream handle
ARG_I32 = "i"  # cutlass.Int32
ARG_U32 = "u"  # cutlass.Uint32
_CTYPE = {ARG_WORD: ctypes.c_uint64, ARG_I32: ctypes.c_int32, ARG_U32: ctypes.c_uint32}


def current_stream_handle(device_index: int) -> int:
    """cudaStream_t of torch's current stream on the device, as an int (the cheap private accessor
    Triton uses too; the public one builds a Stream object per call)."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        return raw(device_index)
    return torch.cuda.current_stream(device_index).cuda_stream


def _dsl_arg_bytes(fn: Any, dsl_args: tuple, sizes: Sequence[int]) -> list[bytes] | None:
    """The bytes the DSL's generic marshalling passes for each argument (None: not one pointer
    per argument, i.e. a calling convention this module does not handle)."""
    exe_args, _adapted = fn.generate_execution_args(*dsl_args)
    if len(exe_args) != len(sizes):
        return None
    out = []
    for ptr, size in zip(exe_args, sizes, strict=True):
        addr = ptr.value if isinstance(ptr, ctypes.c_void_p) else ptr
        if not isinstance(addr, int):
            return None
        out.append(ctypes.string_at(addr, size))
    return out


def check_calling_convention(fn: Any, kinds: str, values: Sequence[int], dsl_args: tuple) -> bool:
    """Whether slots of `kinds` holding `values` carry the same bytes as the DSL's own marshalling
    of `dsl_args` (the same values as DSL objects). Needs no GPU."""
    slots = [_CTYPE[kind](value) for kind, value in zip(kinds, values, strict=True)]
    sizes = [ctypes.sizeof(s) for s in slots]
    reference = _dsl_arg_bytes(fn, dsl_args, sizes)
    return reference is not None and reference == [bytes(s) for s in slots]


class Launcher:
    """A compiled kernel called with plain ints: ``launcher(addr_x, ..., m, n, ..., stream_handle)``.

    fn: the compiled function (``cute.compile`` or the compile cache); kinds: one of ARG_WORD /
    ARG_I32 / ARG_U32 per runtime argument, in order; dsl_args: values -> the DSL argument objects of the same
    call (used once, to check the calling convention, and as the fallback path).
    """

    def __init__(self, fn: Any, kinds: str, dsl_args: Callable[[Sequence[int]], tuple]):
        unknown = set(kinds) - set(_CTYPE)
        if unknown:
            raise ValueError(f"kinds={kinds!r}: unknown argument kinds {sorted(unknown)}")
        self.fn = fn
        self.kinds = kinds
        self._dsl_args = dsl_args
        self._tls = threading.local()
        self._verified: bool | None = None  # None: not checked yet; False: use the DSL's path
        self._lock = threading.Lock()

    def _slots(self) -> tuple[list[Any], list[int]]:
        slots = getattr(self._tls, "slots", None)
        if slots is None:
            objs = [_CTYPE[kind]() for kind in self.kinds]
            slots = self._tls.slots = (objs, [ctypes.addressof(o) for o in objs])
        return slots

    def _verify(self, values: Sequence[int]) -> bool:
        with self._lock:
            if self._verified is None:
                try:
                    ok = check_calling_convention(self.fn, self.kinds, values, self._dsl_args(values))
                except Exception as exc:  # an internal DSL API moved: stay on the public path
                    log.warning("launch: cannot inspect the DSL's marshalling (%s)", exc)
                    ok = False
                if not ok:
                    name = getattr(self.fn, "function_name", self.fn)
                    log.warning("launch: argument bytes differ from the DSL's marshalling; using "
                                "the DSL's (slower) call path for %s", name)
                self._verified = ok
            return self._verified

    def __call__(self, *values: int) -> None:
        if len(values) != len(self.kinds):
            raise TypeError(f"launcher takes {len(self.kinds)} arguments, got {len(values)}")
        if not (self._verified or (self._verified is None and self._verify(values))):
            self.fn(*self._dsl_args(values))
            return
        objs, addrs = self._slots()
        for obj, value in zip(objs, values, strict=True):
            obj.value = value
        self.fn.run_compiled_program(addrs)

    def on_current_stream(self, device_index: int, *values: int) -> None:
        """Launch on torch's current stream of device `device_index` (the kernel's last argument,
        appended here), in that device's CUDA context."""
        with on_device(device_index):
            self(*values, current_stream_handle(device_index))


class _SameDevice:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


_SAME_DEVICE = _SameDevice()


def on_device(index: int | None):
    """Context for a launch on device `index`: the DSL launches into the current CUDA context, so
    switch only when the tensors live on another device (a switch costs a few microseconds)."""
    if index is None or index == torch.cuda.current_device():
        return _SAME_DEVICE
    return torch.cuda.device(index)
