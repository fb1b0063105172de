"""Hopper (SM90) NVFP4 W4A16 GEMM: the entry points the ops layer calls (docs/CONTRACT.md).

    out[M, N] = (x[M, K] @ (e2m1(W) * sf_W)[N, K].T) * alpha      fp32 accumulation, bf16 out

Pieces: gemm_sm90_layout (offline weight pre-shuffle "sm90" + CPU emulation), gemm_sm90_config
(GemmConfig, candidates, heuristic, stream-K grid), gemm_sm90_kernel (the CuTe DSL kernel),
gemm_sm90_epilogue (stream-K fix-up + store), gemm_sm90_ptx (inline PTX). W4A4 on SM90 = the ops
layer's quantize->dequantize of x (exact in bf16) + this kernel with
alpha = input_scale * weight_scale_2.

Graph capture: gemm_w4a16_out allocates nothing, copies nothing host->device and launches on
torch.cuda.current_stream(). The stream-K fix-up uses per-device workspaces (`workspace_bytes`;
one for decode tiles, whose words rest at SLOT_EMPTY_BITS, one for prefill tiles, whose flags do:
gemm_sm90_epilogue); they grow only outside capture
(`reserve_workspace`, or on the first eager call) and a call under capture that would need more
raises. The workspace is shared by all GEMMs of a device: calls on two streams that run
concurrently must not both use stream-K pieces (one would consume the other's partials; a
reducer left waiting for a word already taken traps after ~seconds, so the launch fails instead of
hanging).
Kernels are launched with programmatic dependent launch (PDL); they call griddepcontrol.wait
before reading x or writing anything, so any kernel may precede them.
"""

from __future__ import annotations

import dataclasses
import threading

import torch

from ..formats import BLOCK_SIZE
from . import compile_cache
from .gemm_sm90_config import (
    COMPILED_SHAPES,
    NUM_SMS_H100,
    SLOT_EMPTY_BITS,
    GemmConfig,
    candidate_configs,
    fits,
    heuristic_config,
    piece_flags,
    slot_words,
    stream_k_grid,
)
from .gemm_sm90_layout import K_CHUNK, ROW_TILE, SCALE_GROUPS, padded_shape, prepare_weight, unprepare_weight
from .launch import ARG_I32, ARG_WORD, Launcher

__all__ = [
    "LAYOUT",
    "check_shape",
    "prepare_weight",
    "unprepare_weight",
    "GemmConfig",
    "candidate_configs",
    "fits",
    "heuristic_config",
    "gemm_w4a16_out",
    "precompile",
    "workspace_bytes",
    "reserve_workspace",
    "workspace_of",
    "stream_k_grid",
]

LAYOUT = "sm90"
KERNEL_NAME = "gemm_sm90_w4a16"
_MAX_N = 1 << 20
_MAX_K = 1 << 20
_MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y


def check_shape(n: int, k: int) -> None:
    """Raise ValueError (naming n or k) when the kernel cannot serve an [N, K] weight."""
    if not isinstance(n, int) or n <= 0 or n > _MAX_N:
        raise ValueError(f"n={n}: expected an int in 1..{_MAX_N}")
    if not isinstance(k, int) or k <= 0 or k > _MAX_K:
        raise ValueError(f"k={k}: expected an int in 1..{_MAX_K}")
    if k % BLOCK_SIZE:
        raise ValueError(f"k={k}: must be a multiple of {BLOCK_SIZE} (NVFP4 block)")


# ----------------------------------------------------------------------------- compile
def _kernel_for(cfg: GemmConfig):
    from .gemm_sm90_kernel import Sm90W4A16Kernel

    return Sm90W4A16Kernel(
        cfg.bn, cfg.wgs, cfg.stages, cfg.per_step, bool(cfg.pdl), mt=cfg.mt, cluster=cfg.cluster,
        dsmem_split=cfg.dsmem_split,
    )


def _compile_args():
    import cutlass
    import cutlass.runtime as cute_runtime
    from cutlass import Int32, Int64
    from cutlass.cute.runtime import make_ptr
    from cutlass.cute.typing import AddressSpace

    x = make_ptr(cutlass.BFloat16, 16, AddressSpace.gmem, assumed_align=16)
    i64 = [Int64(0)] * 5  # w, w_scale, alpha, out, workspace
    i32 = [Int32(1), Int32(128), Int32(128), Int32(1), Int32(2), Int32(1), Int32(0)]
    return (x, *i64, *i32, cute_runtime.make_fake_stream())


# Runtime arguments of Sm90W4A16Kernel.__call__: x, w, w_scale, alpha, out, workspace addresses;
# m, n, k, k_chunks, total, grid_x, alpha_stride; the stream.
_ARG_KINDS = ARG_WORD * 6 + ARG_I32 * 7 + ARG_WORD


def _dsl_args(values):
    """The DSL objects of one call (the launcher's calling-convention check and fallback)."""
    from cuda.bindings import driver as cuda_driver
    from cutlass import BFloat16, Int64  # python ints would be narrowed to Int32 at the call
    from cutlass.cute.runtime import make_ptr
    from cutlass.cute.typing import AddressSpace

    x, *addrs = values[:6]
    return (
        make_ptr(BFloat16, x, AddressSpace.gmem, assumed_align=16),
        *(Int64(a) for a in addrs),
        *values[6:13],
        cuda_driver.CUstream(values[13]),
    )


_fns: dict[tuple[int, ...], Launcher] = {}  # hot-path memo in front of compile_cache


def _compiled(cfg: GemmConfig) -> Launcher:
    shape = (*cfg.shape, cfg.pdl)
    fn = _fns.get(shape)
    if fn is None:
        key = dict(cfg.compile_key, arch="sm_90a")
        compiled = compile_cache.compile(KERNEL_NAME, key, _kernel_for(cfg), *_compile_args())
        fn = _fns[shape] = Launcher(compiled, _ARG_KINDS, _dsl_args)
    return fn


def precompile(arch: str, configs=None) -> list[str]:
    """Compile (and cache) every kernel shape in `configs` (default: all shipped shapes).

    arch: "sm90"/"sm_90"/"sm_90a"; the CuTe DSL target must already be sm_90a (the GPU's own, or
    CUTE_DSL_ARCH=sm_90a set before cutlass is imported, as `python -m nvfp4_kit.precompile` and
    tests/conftest.py do). Returns the compile keys (config names without ctas_per_sm).
    """
    if arch.replace("_", "").lower() not in ("sm90", "sm90a"):
        raise ValueError(f"arch={arch!r}: this kernel targets sm_90a (Hopper)")
    current = compile_cache.target_arch()
    if current != "sm_90a":
        raise ValueError(
            f"arch={arch!r}, but the CuTe DSL targets {current!r}: set "
            "CUTE_DSL_ARCH=sm_90a before importing cutlass"
        )
    if configs is None:
        configs = [GemmConfig.from_shape(shape) for shape in COMPILED_SHAPES]
    seen: dict[str, GemmConfig] = {}
    for cfg in configs:
        base = dataclasses.replace(cfg, ctas_per_sm=1)
        seen.setdefault(base.name.rsplit("_c", 1)[0], base)
    for cfg in seen.values():
        _compiled(cfg)
    return list(seen)


# --------------------------------------------------------------------------- workspace
_ws_lock = threading.Lock()
# (device index, piece_flags(bn)) -> workspace: the two fix-up protocols must not share words (a
# prefill launch leaves partials behind, which a decode reducer would take as arrived).
_workspaces: dict[tuple[int, bool], torch.Tensor] = {}
# Outgrown workspaces are kept, never freed: CUDA graphs captured earlier still read and write them.
_retired: list[torch.Tensor] = []


def _sms(device: torch.device | None = None) -> int:
    if not torch.cuda.is_available():
        return NUM_SMS_H100
    idx = torch.cuda.current_device() if device is None or device.index is None else device.index
    sms = _SMS.get(idx)
    if sms is None:
        sms = _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return sms


_SMS: dict[int, int] = {}


def _ws_need(m: int, n: int, k: int, cfg: GemmConfig, sms: int) -> int:
    """32-bit workspace words for a call: one slot per CTA."""
    grid, _total, _n_tiles = stream_k_grid(m, n, k, cfg, sms)
    return _ws_elems(m, grid, cfg)


def _ws_elems(m: int, grid: int, cfg: GemmConfig) -> int:
    if cfg.dsmem_split > 1:  # partials go through distributed shared memory
        return 0
    return -(-m // cfg.bn) * grid * slot_words(cfg.bm, cfg.bn)


def _ws_bound(m_max: int, config: GemmConfig, sms: int) -> int:
    """Words enough for every M <= m_max: m_tiles * grid.x <= max(SMs * c, m_tiles * cluster)."""
    if config.dsmem_split > 1:
        return 0
    m_tiles = -(-max(1, m_max) // config.bn)
    return max(sms * config.ctas_per_sm, m_tiles * config.cluster) * slot_words(config.bm, config.bn)


def workspace_bytes(m_max: int, n: int, config: GemmConfig, sms: int = NUM_SMS_H100) -> int:
    """Bytes of stream-K workspace (fp32 partials + flags) any call with M <= m_max needs, whatever N
    (allocated per device by reserve_workspace or the first eager call; shared by all layers)."""
    return 4 * _ws_bound(m_max, config, sms)


def reserve_workspace(device, m_max: int, n: int, config: GemmConfig) -> None:
    """Grow the device's stream-K workspace for calls with M <= m_max (call before graph capture)."""
    idx = device if isinstance(device, int) else torch.device(device).index
    dev = torch.device("cuda", torch.cuda.current_device() if idx is None else idx)
    _workspace(dev, _ws_bound(m_max, config, _sms(dev)), config)


def workspace_of(device_index: int, config: GemmConfig) -> torch.Tensor | None:
    """The workspace calls of `config` on this device use now (dev probes and tests read it)."""
    return _workspaces.get((device_index, piece_flags(config.bn)))


def _workspace(device: torch.device, elems: int, cfg: GemmConfig) -> torch.Tensor:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    key = (idx, piece_flags(cfg.bn))
    ws = _workspaces.get(key)
    if ws is not None and ws.numel() >= elems:  # the hot path takes no lock (dict reads are atomic)
        return ws
    with _ws_lock:
        ws = _workspaces.get(key)
        if ws is not None and ws.numel() >= elems:
            return ws
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"nvfp4_kit gemm_sm90: stream-K workspace too small for this call during CUDA graph "
                f"capture (need {elems} words); call "
                "gemm_sm90.reserve_workspace(device, m_max, n, config) before capture"
            )
        if ws is not None:
            _retired.append(ws)
        size = max(elems, 0 if ws is None else ws.numel(), 1)
        empty = SLOT_EMPTY_BITS - (1 << 32)  # as int32
        ws = torch.full((size,), empty, dtype=torch.int32, device=torch.device("cuda", idx))
        _workspaces[key] = ws.view(torch.float32)
        return _workspaces[key]


# -------------------------------------------------------------------------------- call
def _check_call(x, w, w_scale, alpha, out) -> tuple[int, int, int]:
    if x.dtype != torch.bfloat16 or x.dim() != 2 or not x.is_contiguous():
        raise ValueError(
            f"x: expected contiguous 2-D bfloat16 [M, K], got {x.dtype} "
            f"{tuple(x.shape)} contiguous={x.is_contiguous()}"
        )
    m, k = x.shape
    if out.dtype != torch.bfloat16 or out.dim() != 2 or not out.is_contiguous() or out.shape[0] != m:
        raise ValueError(f"out: expected contiguous bfloat16 [M={m}, N], got {out.dtype} {tuple(out.shape)}")
    n = out.shape[1]
    check_shape(n, k)
    n_pad, k_pad = padded_shape(n, k)
    nt, kc = n_pad // ROW_TILE, k_pad // K_CHUNK
    if w.dtype != torch.int32 or tuple(w.shape) != (nt, kc, 2, 128, 4) or not w.is_contiguous():
        raise ValueError(
            f"w: expected contiguous int32 {(nt, kc, 2, 128, 4)} (sm90 layout for "
            f"N={n}, K={k}), got {w.dtype} {tuple(w.shape)}"
        )
    s_shape = (nt, kc, SCALE_GROUPS, 16)
    if w_scale.dtype != torch.uint8 or tuple(w_scale.shape) != s_shape or not w_scale.is_contiguous():
        raise ValueError(
            f"w_scale: expected contiguous uint8 {s_shape} (sm90 scale "
            f"codes), got {w_scale.dtype} {tuple(w_scale.shape)}"
        )
    if alpha.dtype != torch.float32 or alpha.numel() not in (1, n) or not alpha.is_contiguous():
        raise ValueError(
            f"alpha: expected contiguous float32 with 1 or N={n} elements, got "
            f"{alpha.dtype} {tuple(alpha.shape)}"
        )
    dev = x.device
    for name, t in (("w", w), ("w_scale", w_scale), ("alpha", alpha), ("out", out)):
        if t.device != dev:
            raise ValueError(f"{name}: on {t.device}, expected {dev} like x")
    _check_launchable(x)
    return m, n, k


def _check_token_tiles(m: int, cfg: GemmConfig) -> None:
    """The token tiles are grid.y: an explicit narrow config at a huge M would exceed CUDA's limit."""
    if m > _MAX_GRID_Y * cfg.bn:
        raise ValueError(f"x: M={m} needs more than {_MAX_GRID_Y} token tiles of config {cfg.name} "
                         f"(bn={cfg.bn}); use a config with a wider bn")


def _check_launchable(x: torch.Tensor) -> None:
    """What the kernel needs beyond the op boundary's checks (nvfp4_kit.validate)."""
    if not x.is_cuda:
        raise ValueError(f"x: on {x.device}; the sm90 kernel runs on CUDA tensors")
    if x.data_ptr() % 16:
        raise ValueError("x: data pointer must be 16-byte aligned (TMA)")


def gemm_w4a16_out(
    x: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    alpha: torch.Tensor,
    out: torch.Tensor,
    config: GemmConfig | None = None,
    *,
    prevalidated: bool = False,
) -> None:
    """out[M, N] (bf16) = (x @ dequant(w, w_scale).T) * alpha. x: (M, K) bf16 contiguous; w, w_scale:
    from prepare_weight; alpha: fp32 device tensor [1] or [N]. Launches on the current stream.

    prevalidated: the caller (nvfp4_kit.ops, through validate.validate_gemm) has checked dtypes,
    shapes, devices and contiguity of every tensor against the sm90 layout and bf16 x / out; only
    the kernel's own needs (CUDA, 16-byte aligned x) are checked here. Host time per eager call is
    what this path is for (benchmarks/dev_host_overhead.py)."""
    if prevalidated:
        _check_launchable(x)
        m, k = x.shape
        n = out.shape[1]
    else:
        m, n, k = _check_call(x, w, w_scale, alpha, out)
    if m == 0:
        return
    cfg = config if config is not None else heuristic_config(m, n, k)
    _check_token_tiles(m, cfg)
    device = x.device
    sms = _sms(device)
    grid, total, _n_tiles = stream_k_grid(m, n, k, cfg, sms)
    # (0 words: a dsmem_split kernel sums its partials in shared memory; it gets no workspace, so
    # none is grown, or refused, under graph capture)
    ws_words = _ws_elems(m, grid, cfg)
    ws_ptr = _workspace(device, ws_words, cfg).data_ptr() if ws_words else 0
    _compiled(cfg).on_current_stream(
        device.index,
        x.data_ptr(),
        w.data_ptr(),
        w_scale.data_ptr(),
        alpha.data_ptr(),
        out.data_ptr(),
        ws_ptr,
        m,
        n,
        k,
        -(-k // K_CHUNK),
        total,
        grid,
        0 if alpha.numel() == 1 else 1,
    )
