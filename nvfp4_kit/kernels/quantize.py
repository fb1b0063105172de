"""NVFP4 activation quantize for Hopper (and anything sm_90+): the entry points `nvfp4_kit.ops` calls.

Bit-exact to `nvfp4_kit.reference.quantize` (docs/CONTRACT.md numerics); kernels in
`quantize_kernels.py`, the exact-arithmetic PTX in `quantize_ptx.py`.

    quantize_out(x, global_scale, layout, out_packed, out_scale)
        x: (M, K) bf16 | fp16, contiguous, K % 16 == 0
        global_scale: fp32 device tensor with one element (read on the device, never on the host)
        out_packed: (M, K/2) uint8, e2m1 pairs, element 2i in the low nibble
        out_scale: float8_e4m3fn (M, K/16) "linear" or (round_up(M,128), round_up(K/16,4))
                   "swizzled_128x4" (padding written as zeros)
    quantize_dequantize_out(x, global_scale, out)      out: (M, K) bf16 = e2m1 * sf (unscaled)
    global_scale_out(x, out)                            out: fp32 [1] = 448*6 / amax(x)
    precompile(arch) -> list[str]

Every call validates its arguments (ValueError naming the argument) before launching on
torch.cuda.current_stream(); nothing is allocated, synchronized or copied host->device, so the
calls can be captured in a CUDA graph once their kernels are compiled (precompile or a warm-up
call: compiling during capture raises). M and K are runtime arguments: one compiled kernel per
(dtype, layout, config) serves all shapes.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..formats import BLOCK_SIZE, ScaleLayout, scale_shape
from . import compile_cache
from .launch import ARG_I32, ARG_U32, ARG_WORD, Launcher

__all__ = [
    "quantize_out",
    "quantize_dequantize_out",
    "global_scale_out",
    "precompile",
    "select_config",
    "QuantConfig",
    "SUPPORTED_DTYPES",
]

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
_MAX_BLOCKS = 2**31 - 2**16  # int32 block indices (and swizzled byte offsets) inside the kernels
_fns: dict[tuple, Launcher] = {}  # hot-path cache in front of compile_cache


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantConfig:
    """Compile-time shape of a quantize launch (M and K stay runtime values).

    blocks_per_thread: 16-element blocks per lane (2 x 16-byte loads each, all in flight at once).
    warps: warps per CTA.
    """

    blocks_per_thread: int = 1
    warps: int = 4

    def __post_init__(self) -> None:
        if self.blocks_per_thread not in (1, 2, 4, 8):
            raise ValueError(f"blocks_per_thread={self.blocks_per_thread}: expected 1, 2, 4 or 8")
        if self.warps not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"warps={self.warps}: expected a power of two <= 32")

    @property
    def name(self) -> str:
        return f"b{self.blocks_per_thread}w{self.warps}"

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _config(bpt: int, warps: int = 4) -> QuantConfig:
    return QuantConfig(blocks_per_thread=bpt, warps=warps)


def select_config(m: int, k: int) -> QuantConfig:
    """QuantConfig for an (M, K) problem (the table the precompile step compiles).

    One block (16 elements, two 16-byte loads) per lane, 4 warps per CTA, at every size. H100 SXM,
    linear layout, 28 points M = 1..32768 x K = 128..16384 (benchmarks/notes_quantize.md): one
    block per lane was fastest or within 1% everywhere, e.g. M=512, K=5120: 4.47 us vs 4.84 (2 per
    lane) and 5.42 (4 per lane); 2 warps per CTA are within 3% of 4, 8 warps up to 8% slower.
    """
    return _DEFAULT


_DEFAULT = _config(1)
_AMAX = _config(4)  # a grid-stride reduction: 4 blocks per lane per step (not tuned)


def _all_configs():
    return [_DEFAULT]


# ---------------------------------------------------------------------------------------------
# validation (ValueError naming the argument; runs before any launch)
# ---------------------------------------------------------------------------------------------


def _check_tensor(name: str, t: Any, dtype, shape, device: torch.device, align: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise ValueError(f"{name}: dtype {t.dtype}, expected {dtype}")
    if t.device != device:
        raise ValueError(f"{name}: on {t.device}, expected {device} (the device of x)")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: shape {tuple(t.shape)}, expected {tuple(shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous")
    if t.data_ptr() % align:
        raise ValueError(f"{name}: data pointer must be {align}-byte aligned")


def _check_x(x: Any) -> tuple[int, int]:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x: dtype {x.dtype}, expected torch.bfloat16 or torch.float16")
    if x.dim() != 2:
        raise ValueError(f"x: expected 2-D [M, K], got shape {tuple(x.shape)}")
    m, k = x.shape
    if k == 0 or k % BLOCK_SIZE:
        raise ValueError(f"x: K={k} must be a positive multiple of {BLOCK_SIZE}")
    if not x.is_contiguous():
        raise ValueError("x: must be contiguous (row-major [M, K])")
    if x.device.type != "cuda":
        raise ValueError(f"x: on {x.device}, expected a CUDA device")
    if x.data_ptr() % 16:
        raise ValueError("x: data pointer must be 16-byte aligned")
    _check_size(m, k)
    _check_arch(x.device)
    return m, k


def _check_size(m: int, k: int) -> None:
    kb = k // BLOCK_SIZE
    if max(m * kb, (m + 127) // 128 * 128 * ((kb + 3) // 4 * 4)) > _MAX_BLOCKS:
        raise ValueError(f"x: shape {(m, k)} too large (M*K/16 and the padded scale count must "
                         "stay below ~2^31: the kernels index with 32-bit integers)")


@functools.cache
def _device_ok(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def _check_arch(device: torch.device) -> None:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if not _device_ok(index):
        cap = torch.cuda.get_device_capability(index)
        raise ValueError(f"x: on {device} (sm_{cap[0]}{cap[1]}); the kernels need sm_90 or newer")


def _check_global(global_scale: Any, device: torch.device) -> None:
    _check_tensor("global_scale", global_scale, torch.float32, None, device, 4)
    if global_scale.numel() != 1:
        raise ValueError(f"global_scale: expected one element, got shape {tuple(global_scale.shape)}")


# ---------------------------------------------------------------------------------------------
# compile + launch helpers
# ---------------------------------------------------------------------------------------------


def _compile_args(kind: str, is_fp16: bool, swizzled: bool, cfg) -> tuple[Any, tuple, tuple]:
    """(jit function, fake runtime args, constexpr args) of one kernel entry."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_stream, make_ptr

    from . import quantize_kernels as qk

    def ptr(dtype, align):
        return make_ptr(dtype, 0, cute.AddressSpace.gmem, assumed_align=align)

    stream = make_fake_stream()
    words, f32 = ptr(cutlass.Uint32, 16), ptr(cutlass.Float32, 4)
    consts = (cfg.blocks_per_thread, cfg.warps, is_fp16)
    if kind == "quantize":
        args = (words, f32, ptr(cutlass.Uint32, 8), ptr(cutlass.Uint8, 1), 1, 1, 1, 0, stream)
        return qk.quantize_launch, args, consts + (swizzled,)
    if kind == "qdq":
        return qk.qdq_launch, (words, f32, ptr(cutlass.Uint32, 16), 1, stream), consts
    if kind == "amax":
        return qk.amax_launch, (words, f32, 1, stream), consts
    raise ValueError(f"kind={kind!r}")


def _key(kind: str, is_fp16: bool, swizzled: bool, cfg) -> dict[str, object]:
    return {"dtype": "fp16" if is_fp16 else "bf16", "layout": "swizzled_128x4" if swizzled
            else "linear", **cfg.to_dict()} if kind == "quantize" else {
            "dtype": "fp16" if is_fp16 else "bf16", **cfg.to_dict()}


# Runtime signature of quantize_kernels.<kind>_launch: the DSL dtype and assumed alignment of each
# pointer argument, then the kinds of the integer arguments; the stream comes last.
_SIGNATURES: dict[str, tuple[tuple[tuple[str, int], ...], str]] = {
    "quantize": ((("Uint32", 16), ("Float32", 4), ("Uint32", 8), ("Uint8", 1)),
                 ARG_I32 + ARG_I32 + ARG_U32 + ARG_I32),  # m, kb, kb_mul, kb_shift
    "qdq": ((("Uint32", 16), ("Float32", 4), ("Uint32", 16)), ARG_I32),  # blocks
    "amax": ((("Uint32", 16), ("Float32", 4)), ARG_I32),  # blocks
}


def _launcher(kind: str, fn: Any) -> Launcher:
    pointers, ints = _SIGNATURES[kind]

    def dsl_args(values):
        import cutlass
        import cutlass.cute as cute
        from cuda.bindings import driver
        from cutlass.cute.runtime import make_ptr

        ptrs = [make_ptr(getattr(cutlass, dtype), v, cute.AddressSpace.gmem, assumed_align=align)
                for (dtype, align), v in zip(pointers, values, strict=False)]
        return (*ptrs, *values[len(pointers):-1], driver.CUstream(values[-1]))

    return Launcher(fn, ARG_WORD * len(pointers) + ints + ARG_WORD, dsl_args)


def _get(kind: str, is_fp16: bool, swizzled: bool, cfg) -> Launcher:
    hot = (kind, is_fp16, swizzled, cfg)
    fn = _fns.get(hot)
    if fn is None:
        jit_fn, args, consts = _compile_args(kind, is_fp16, swizzled, cfg)
        compiled = compile_cache.compile(f"quantize_{kind}", _key(kind, is_fp16, swizzled, cfg),
                                         jit_fn, *args, *consts)
        fn = _fns[hot] = _launcher(kind, compiled)
    return fn


@functools.lru_cache(maxsize=4096)
def _magic(kb: int) -> tuple[int, int]:
    from .quantize_ptx import magic_divisor

    return magic_divisor(kb)


# ---------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------


def quantize_out(x: torch.Tensor, global_scale: torch.Tensor, layout: str | ScaleLayout,
                 out_packed: torch.Tensor, out_scale: torch.Tensor, config=None) -> None:
    """Quantize x to NVFP4 into out_packed / out_scale (see the module docstring for shapes)."""
    layout = ScaleLayout.parse(layout)
    m, k = _check_x(x)
    _check_global(global_scale, x.device)
    _check_tensor("out_packed", out_packed, torch.uint8, (m, k // 2), x.device, 8)
    swizzled = layout is ScaleLayout.SWIZZLED_128x4
    _check_tensor("out_scale", out_scale, torch.float8_e4m3fn, scale_shape(m, k, layout),
                  x.device, 16 if swizzled else 1)
    if m == 0:
        return
    kb = k // BLOCK_SIZE
    cfg = config or select_config(m, k)
    fn = _get("quantize", x.dtype == torch.float16, swizzled, cfg)
    mul, shift = _magic(kb)
    fn.on_current_stream(x.device.index, x.data_ptr(), global_scale.data_ptr(), out_packed.data_ptr(),
                         out_scale.data_ptr(), m, kb, mul, shift)


def quantize_dequantize_out(x: torch.Tensor, global_scale: torch.Tensor, out: torch.Tensor,
                            config=None) -> None:
    """out (M, K) bf16 = e2m1(q) * sf: the quantized x, not divided by the global scale."""
    m, k = _check_x(x)
    _check_global(global_scale, x.device)
    _check_tensor("out", out, torch.bfloat16, (m, k), x.device, 16)
    if m == 0:
        return
    cfg = config or select_config(m, k)
    fn = _get("qdq", x.dtype == torch.float16, False, cfg)
    fn.on_current_stream(x.device.index, x.data_ptr(), global_scale.data_ptr(), out.data_ptr(),
                         m * (k // BLOCK_SIZE))


def global_scale_out(x: torch.Tensor, out: torch.Tensor, config=None) -> None:
    """out fp32 [1] = 448*6 / max|x| (NaN ignored; inf where x is all zero), on the device."""
    m, k = _check_x(x)
    _check_tensor("out", out, torch.float32, None, x.device, 4)
    if out.numel() != 1:
        raise ValueError(f"out: expected one element, got shape {tuple(out.shape)}")
    if m == 0:
        raise ValueError("x: M=0 has no amax")
    cfg = config or _AMAX
    fn = _get("amax", x.dtype == torch.float16, False, cfg)
    fn.on_current_stream(x.device.index, x.data_ptr(), out.data_ptr(), m * (k // BLOCK_SIZE))


def precompile(arch: str) -> list[str]:
    """Compile every kernel the entry points can select into the cache; returns their keys.

    The CuTe DSL target must already be `arch` (CUTE_DSL_ARCH set before cutlass is imported, as
    `python -m nvfp4_kit.precompile --arch` does): exporting a cross-arch compile fails in 4.8.1.
    """
    current = compile_cache.target_arch()
    if current != arch:
        raise ValueError(f"arch={arch!r}, but the CuTe DSL targets {current!r}: set "
                         f"CUTE_DSL_ARCH={arch} before importing cutlass")
    keys = []
    for is_fp16 in (False, True):
        for cfg in _all_configs():
            for swizzled in (False, True):
                _get("quantize", is_fp16, swizzled, cfg)
                keys.append(f"quantize_quantize:{_key('quantize', is_fp16, swizzled, cfg)}")
            _get("qdq", is_fp16, False, cfg)
            keys.append(f"quantize_qdq:{_key('qdq', is_fp16, False, cfg)}")
        _get("amax", is_fp16, False, _AMAX)
        keys.append(f"quantize_amax:{_key('amax', is_fp16, False, _AMAX)}")
    return keys
