"""Inline-PTX building blocks of the SM90 W4A16 GEMM (CuTe DSL has no e2m1 dequant, no .nc/.cg
vector loads by raw address, and we want each instruction chosen, not inferred).

Every function is a `dsl_user_op` usable inside `@cute.kernel` code; all take/return Int32/Int64/
Float32 DSL scalars. The bit formats are documented in gemm_sm90_layout.py and emulated there in
torch (`emulate_dequant`), which is what the CPU tests check.
"""

from __future__ import annotations

from cutlass import Float32, Int32, Int64
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T, dsl_user_op

from .ptx import inline_ptx

__all__ = [
    "dequant_step",
    "scale_pair",
    "ld_nc_f32",
    "st_bf16",
    "st_bf16_if",
    "st_relaxed_f32",
    "st_relaxed_u32",
    "ld_relaxed_f32",
    "st_release_u32",
    "ld_acquire_u32",
    "bits_equal",
    "trap",
    "bulk_g2s",
    "ld_shared_v4",
    "ldmatrix_x4",
    "ld_shared_f32",
    "mma_bf16_m16n8k16",
    "pack_bf16x2",
    "stmatrix_x4_trans",
    "mbar_init_expect_tx",
    "mbar_try_wait_cluster",
    "st_async_peer_v4_f32",
    "st_globaltimer",
]


def _i32s(struct, n, loc, ip):
    return [Int32(llvm.extractvalue(T.i32(), struct, [i], loc=loc, ip=ip)) for i in range(n)]


def _four_words(operands, asm: str, constraints: str, side_effects: bool, loc, ip) -> list:
    """Inline PTX whose results are four 32-bit registers ($0..$3): 4 x Int32."""
    four = llvm.StructType.get_literal([T.i32()] * 4)
    return _i32s(inline_ptx(four, operands, asm, constraints, side_effects=side_effects), 4, loc, ip)


# The 8 nibbles of a weight word (gemm_sm90_layout's bit placement) -> t0..t3, the four bf16x2
# registers e2m1 * 2^-126 (before the scale): 9 integer ops, rotations as funnel shifts.
_NIBBLES_TO_BF16 = (
    "shf.l.wrap.b32 t0, $4, $4, 4;\n"
    "and.b32 t0, t0, 0x81C081C0;\n"
    "shf.l.wrap.b32 t1, $4, $4, 10;\n"
    "and.b32 t1, t1, 0x81C081C0;\n"
    "and.b32 t2, $4, 0x81C081C0;\n"
    "shf.l.wrap.b32 a, $4, $4, 6;\n"
    "shf.l.wrap.b32 b, $4, $4, 14;\n"
    "and.b32 b, b, 0x01000100;\n"
    "and.b32 a, a, 0x80C080C0;\n"
    "or.b32 t3, a, b;\n"
)


@dsl_user_op
def scale_pair(codes: Int32, first: int, *, loc=None, ip=None) -> Int32:
    """bf16x2 (S_first | S_first+1) of scale-code bytes first, first + 1 of a word (S = bf16
    scale * 2^119, as in dequant_step): one prmt + one shift-add for two k16 steps' scales."""
    sel = first | (4 << 4) | ((first + 1) << 8) | (4 << 12)  # bytes: code, 0, code + 1, 0
    return Int32(
        inline_ptx(
            T.i32(),
            [Int32(codes).ir_value(loc=loc, ip=ip)],
            "{\n.reg .b32 z, p;\nmov.b32 z, 0;\n"
            f"prmt.b32 p, $1, z, {sel};\nshl.b32 p, p, 4;\nadd.u32 $0, p, 0x76807680;\n}}\n",
            "=r,r",
            side_effects=False,
        )
    )


@dsl_user_op
def dequant_step(word: Int32, pair_g: Int32, pair_g8: Int32, half: int, *, loc=None, ip=None) -> list:
    """One k16 step: 8 nibbles (one word) + the scale_pair words of rows g and g + 8 -> the four
    bf16x2 A-fragment registers (g | g+8 | g | g+8), each = e2m1 * scale * 2^-7 exactly.

    Scale: half 0 / 1 is the even / odd step of the pair, broadcast into both lanes of the bf16x2
    multiply (ptxas folds the broadcast into the HMUL2's .H0_H0 / .H1_H1 operand: no instruction).
    Nibbles: _NIBBLES_TO_BF16 (gemm_sm90_layout's placement)."""
    lanes = "{gl, gl}" if half == 0 else "{gh, gh}"
    lanes8 = "{hl, hl}" if half == 0 else "{hh, hh}"
    asm = (
        "{\n"
        ".reg .b16 gl, gh, hl, hh;\n"
        ".reg .b32 sg, sh, t0, t1, t2, t3, a, b;\n"
        "mov.b32 {gl, gh}, $5;\n"
        "mov.b32 {hl, hh}, $6;\n"
        f"mov.b32 sg, {lanes};\n"
        f"mov.b32 sh, {lanes8};\n"
        + _NIBBLES_TO_BF16
        + "mul.rn.bf16x2 $0, t0, sg;\n"
        "mul.rn.bf16x2 $1, t1, sh;\n"
        "mul.rn.bf16x2 $2, t2, sg;\n"
        "mul.rn.bf16x2 $3, t3, sh;\n"
        "}\n"
    )
    operands = [Int32(v).ir_value(loc=loc, ip=ip) for v in (word, pair_g, pair_g8)]
    # volatile (side effects): keeps LLVM from sinking the dequant between wgmmas (ptxas would then
    # serialize them, warning C7513)
    return _four_words(operands, asm, "=r,=r,=r,=r,r,r,r", True, loc, ip)


@dsl_user_op
def ld_nc_f32(addr: Int64, *, loc=None, ip=None) -> Float32:
    return Float32(
        inline_ptx(
            T.f32(),
            [Int64(addr).ir_value(loc=loc, ip=ip)],
            "ld.global.nc.f32 $0, [$1];",
            "=f,l",
            side_effects=False,
        )
    )


@dsl_user_op
def st_bf16(addr: Int64, value: Float32, *, loc=None, ip=None) -> None:
    """Round-to-nearest-even fp32 -> bf16 and a 2-byte store."""
    inline_ptx(
        None,
        [Int64(addr).ir_value(loc=loc, ip=ip), Float32(value).ir_value(loc=loc, ip=ip)],
        "{\n.reg .b16 h;\ncvt.rn.bf16.f32 h, $1;\nst.global.b16 [$0], h;\n}\n",
        "l,f",
        side_effects=True,
    )


@dsl_user_op
def st_bf16_if(addr: Int64, value: Float32, keep: Int32, *, loc=None, ip=None) -> None:
    """st_bf16 predicated on keep != 0 (no branch around each store of an epilogue)."""
    inline_ptx(
        None,
        [
            Int64(addr).ir_value(loc=loc, ip=ip),
            Float32(value).ir_value(loc=loc, ip=ip),
            Int32(keep).ir_value(loc=loc, ip=ip),
        ],
        "{\n.reg .b16 h;\n.reg .pred p;\nsetp.ne.b32 p, $2, 0;\ncvt.rn.bf16.f32 h, $1;\n"
        "@p st.global.b16 [$0], h;\n}\n",
        "l,f,r",
        side_effects=True,
    )


def _st_gpu_word(addr, value, order: str, ptx_type: str, loc, ip) -> None:
    """One 4-byte gpu-scope global store (L2) with memory order `order` ("relaxed" / "release")."""
    inline_ptx(
        None,
        [Int64(addr).ir_value(loc=loc, ip=ip), value.ir_value(loc=loc, ip=ip)],
        f"st.{order}.gpu.global.{ptx_type} [$0], $1;",
        "l,f" if ptx_type == "f32" else "l,r",
        side_effects=True,
    )


def _ld_word(addr, op: str, ptx_type: str, loc, ip):
    """One 4-byte load `op`.`ptx_type` (e.g. "ld.relaxed.gpu.global" by a 64-bit global address,
    "ld.shared" by a 32-bit shared one); f32 or a 32-bit integer register by the type."""
    wide = op.endswith(".global")
    return inline_ptx(
        T.f32() if ptx_type == "f32" else T.i32(),
        [(Int64(addr) if wide else Int32(addr)).ir_value(loc=loc, ip=ip)],
        f"{op}.{ptx_type} $0, [$1];",
        ("=f," if ptx_type == "f32" else "=r,") + ("l" if wide else "r"),
        side_effects=True,
    )


def _ld_gpu_word(addr, order: str, ptx_type: str, loc, ip):
    """One 4-byte gpu-scope global load (L2; never a stale L1 line) with memory order `order`."""
    return _ld_word(addr, f"ld.{order}.gpu.global", ptx_type, loc, ip)


@dsl_user_op
def st_relaxed_f32(addr: Int64, value: Float32, *, loc=None, ip=None) -> None:
    """gpu-scope relaxed store (L2): a word another CTA polls for."""
    _st_gpu_word(addr, Float32(value), "relaxed", "f32", loc, ip)


@dsl_user_op
def st_relaxed_u32(addr: Int64, value: Int32, *, loc=None, ip=None) -> None:
    _st_gpu_word(addr, Int32(value), "relaxed", "u32", loc, ip)


@dsl_user_op
def ld_relaxed_f32(addr: Int64, *, loc=None, ip=None) -> Float32:
    """gpu-scope relaxed load (L2; never a stale L1 line)."""
    return Float32(_ld_gpu_word(addr, "relaxed", "f32", loc, ip))


@dsl_user_op
def st_release_u32(addr: Int64, value: Int32, *, loc=None, ip=None) -> None:
    """gpu-scope release store: the writes this thread has made or observed (through a barrier)
    are visible to whoever acquires the word."""
    _st_gpu_word(addr, Int32(value), "release", "u32", loc, ip)


@dsl_user_op
def ld_acquire_u32(addr: Int64, *, loc=None, ip=None) -> Int32:
    """gpu-scope acquire load: this thread's later loads see what the releasing thread published
    (no fence: it does not wait for this thread's earlier stores, as fence.acq_rel does)."""
    return Int32(_ld_gpu_word(addr, "acquire", "u32", loc, ip))


@dsl_user_op
def bits_equal(value: Float32, bits: int, *, loc=None, ip=None) -> Int32:
    """1 if the fp32 `value` has exactly these bits (NaN payloads included), else 0."""
    return Int32(
        inline_ptx(
            T.i32(),
            [Float32(value).ir_value(loc=loc, ip=ip)],
            f"{{\n.reg .pred p;\nsetp.eq.b32 p, $1, {bits:#x};\nselp.u32 $0, 1, 0, p;\n}}\n",
            "=r,f",
            side_effects=False,
        )
    )


@dsl_user_op
def trap(*, loc=None, ip=None) -> None:
    """Abort the kernel (the launch fails with an error instead of hanging)."""
    inline_ptx(None, [], "trap;", "", side_effects=True)


@dsl_user_op
def st_globaltimer(addr: Int64, *, loc=None, ip=None) -> None:
    """(dev probe 13) Store the GPU's global nanosecond timer (%globaltimer: one clock for every SM,
    so stamps of different CTAs compare) as a u64 at addr."""
    inline_ptx(
        None,
        [Int64(addr).ir_value(loc=loc, ip=ip)],
        "{\n.reg .u64 t;\nmov.u64 t, %globaltimer;\nst.global.u64 [$0], t;\n}\n",
        "l",
        side_effects=True,
    )


@dsl_user_op
def bulk_g2s(dst_smem: Int32, src: Int64, nbytes: int, mbar_smem: Int32, *, loc=None, ip=None) -> None:
    """1-D bulk copy global -> shared (no tensor map), completing `nbytes` on the mbarrier."""
    inline_ptx(
        None,
        [
            Int32(dst_smem).ir_value(loc=loc, ip=ip),
            Int64(src).ir_value(loc=loc, ip=ip),
            Int32(mbar_smem).ir_value(loc=loc, ip=ip),
        ],
        f"cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [$0], [$1], {nbytes}, [$2];",
        "r,l,r",
        side_effects=True,
    )


@dsl_user_op
def ld_shared_v4(addr: Int32, *, loc=None, ip=None) -> list:
    operands = [Int32(addr).ir_value(loc=loc, ip=ip)]
    return _four_words(operands, "ld.shared.v4.u32 {$0, $1, $2, $3}, [$4];", "=r,=r,=r,=r,r", True, loc, ip)


@dsl_user_op
def ldmatrix_x4(addr: Int32, *, loc=None, ip=None) -> list:
    """ldmatrix m8n8.x4 (b16, not transposed): lane l supplies the 16-byte row l % 8 of matrix
    l // 8; register j of lane l gets elements 2 (l % 4), +1 of row l // 4 of matrix j."""
    return _four_words(
        [Int32(addr).ir_value(loc=loc, ip=ip)],
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {$0, $1, $2, $3}, [$4];",
        "=r,=r,=r,=r,r",
        True,
        loc,
        ip,
    )


@dsl_user_op
def ld_shared_f32(addr: Int32, *, loc=None, ip=None) -> Float32:
    return Float32(_ld_word(addr, "ld.shared", "f32", loc, ip))


@dsl_user_op
def mma_bf16_m16n8k16(a: list, b0: Int32, b1: Int32, c: list, *, loc=None, ip=None) -> list:
    """Warp-level mma.sync m16n8k16, bf16 x bf16 -> fp32: d = A (4 x bf16x2, row-major fragment)
    * B (2 x bf16x2, column-major fragment) + c (4 x fp32). Same per-warp A/C fragments as one warp's
    share of wgmma m64nNk16, without wgmma's asynchronous issue/fence/wait."""
    res = inline_ptx(
        llvm.StructType.get_literal([T.f32()] * 4),
        [Int32(v).ir_value(loc=loc, ip=ip) for v in (*a, b0, b1)]
        + [Float32(v).ir_value(loc=loc, ip=ip) for v in c],
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};",
        "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f",
        side_effects=False,
    )
    return [Float32(llvm.extractvalue(T.f32(), res, [i], loc=loc, ip=ip)) for i in range(4)]


@dsl_user_op
def pack_bf16x2(lo: Float32, hi: Float32, *, loc=None, ip=None) -> Int32:
    """Two fp32 -> one bf16x2 word (round to nearest even); `lo` in the low half."""
    return Int32(
        inline_ptx(
            T.i32(),
            [Float32(hi).ir_value(loc=loc, ip=ip), Float32(lo).ir_value(loc=loc, ip=ip)],
            "cvt.rn.bf16x2.f32 $0, $1, $2;",
            "=r,f,f",
            side_effects=False,
        )
    )


@dsl_user_op
def stmatrix_x4_trans(addr: Int32, regs: list, *, loc=None, ip=None) -> None:
    """stmatrix .x4 .trans: four 8x8 b16 matrices from the mma fragment layout (lane 4g + c holds
    row g, columns 2c, 2c + 1 of each), each stored transposed: lane 8i + k gives the shared address
    of row k of matrix i, which receives the matrix's column k (16 bytes)."""
    inline_ptx(
        None,
        [Int32(addr).ir_value(loc=loc, ip=ip)] + [Int32(r).ir_value(loc=loc, ip=ip) for r in regs],
        "stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [$0], {$1, $2, $3, $4};",
        "r,r,r,r,r",
        side_effects=True,
    )


@dsl_user_op
def mbar_init_expect_tx(bar: Int32, tx_bytes: Int32, *, loc=None, ip=None) -> None:
    """One thread: an mbarrier of one arrival, which it makes at once while expecting `tx_bytes`,
    so the phase completes when that many bytes of st.async (from peer CTAs) have landed."""
    inline_ptx(
        None,
        [Int32(bar).ir_value(loc=loc, ip=ip), Int32(tx_bytes).ir_value(loc=loc, ip=ip)],
        "mbarrier.init.shared::cta.b64 [$0], 1;\nmbarrier.arrive.expect_tx.shared::cta.b64 _, [$0], $1;",
        "r,r",
        side_effects=True,
    )


@dsl_user_op
def mbar_try_wait_cluster(bar: Int32, parity: int, *, loc=None, ip=None) -> Int32:
    """1 once phase `parity` of this CTA's mbarrier has completed (cluster-scope acquire: the
    peers' st.async data it counted is visible to this thread), else 0 after a bounded wait."""
    return Int32(
        inline_ptx(
            T.i32(),
            [Int32(bar).ir_value(loc=loc, ip=ip)],
            "{\n.reg .pred p;\n"
            f"mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [$1], {parity};\n"
            "selp.u32 $0, 1, 0, p;\n}\n",
            "=r,r",
            side_effects=True,
        )
    )


@dsl_user_op
def st_async_peer_v4_f32(
    dst: Int32,
    bar: Int32,
    peer: Int32,
    v0: Float32,
    v1: Float32,
    v2: Float32,
    v3: Float32,
    *,
    loc=None,
    ip=None,
) -> None:
    """16 bytes into CTA `peer` of the cluster: `dst` and `bar` are this CTA's shared addresses of
    the same objects (mapa maps them to the peer's), the store completes 16 bytes on its mbarrier."""
    inline_ptx(
        None,
        [Int32(v).ir_value(loc=loc, ip=ip) for v in (dst, bar, peer)]
        + [Float32(v).ir_value(loc=loc, ip=ip) for v in (v0, v1, v2, v3)],
        "{\n.reg .b32 d, b;\n"
        "mapa.shared::cluster.u32 d, $0, $2;\n"
        "mapa.shared::cluster.u32 b, $1, $2;\n"
        "st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [d], {$3, $4, $5, $6}, [b];\n}\n",
        "r,r,r,f,f,f,f",
        side_effects=True,
    )
