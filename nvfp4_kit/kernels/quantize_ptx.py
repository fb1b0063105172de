"""PTX numerics of the NVFP4 quantizer, as CuTe DSL inline-asm helpers (no launch code here).

Why inline PTX: the contract (docs/CONTRACT.md) is bit-exact IEEE fp32 with no FMA contraction.
Written as PTX, every operation carries its rounding (``div.rn``, ``rcp.rn``, ``mul.rn``, ``add.rn``;
ptxas never fuses ops that name a rounding mode) and none is ``.ftz`` or ``.approx``.

Per block of 16 elements (8 raw 32-bit words, two bf16/fp16 each, element 2i in the low half):

1. ``a = |x|`` with NaN -> 0 (``max.{bf16,f16}x2(|x|, +0)`` returns the non-NaN operand), amax by a
   ``max`` tree in the packed 16-bit type: the max of 16-bit values is exact, so no fp32 needed.
2. ``sf = e4m3_rn_satfinite(global * div.rn(amax, 6))`` (``cvt.rn.satfinite.e4m3x2.f32``) and back
   to fp32 (``cvt.rn.f16x2.e4m3x2`` + ``cvt.f32.f16``, both exact);
   ``out_scale = sf == 0 ? 0 : rcp.rn(div.rn(sf, global))``.
3. Per element ``v = min(mul.rn(|x|, out_scale), 6)``; then e2m1 round-to-nearest-even with one fp32
   add: SM90 has no e2m1 ``cvt`` (that is ``sm_100a``), so we add a magic ``M`` whose ulp is the e2m1
   step of v's binade (2^22 for v < 2: step 0.5; 2^23 for [2, 4): step 1; 2^24 for [4, 6]: step 2).
   ``add.rn`` rounds v to that step, ties to even, in one rounding, exactly like the reference's
   threshold table. The magnitude code is n, n + 2, n + 4 in the three binades (n = v / step
   rounded), so we add ``M' = M + off*step`` with off = 0, 2, 4 instead: off is even, so the tie
   parity is unchanged, and the low 3 bits of r = M' + n*step are the code itself. With
   e = ``max(bits(v) & 0x7F800000, bits(1.0))``, ``bits(M') = e + (22 << 23) + (e >> 22) - 254``.
   Two codes pack into a byte as ``(r_hi << 4) + r_lo`` (r's bits 3..22 are zero).
   The dequantized value of the W4A4 path is ``r - M`` with the plain M.
4. Sign: bit 3 of each nibble is the sign bit of x itself (NaN keeps its sign, -0 gives code 8),
   gathered for 8 elements by 4 ``prmt`` (sign-replicating byte selects) and 2 ``lop3``.

Cost (SASS, sm_90a): ~9 instructions per element plus ~40 per block for the three IEEE
divisions/reciprocals and ~60 per lane of setup (benchmarks/notes_quantize.md).
"""

from __future__ import annotations

from cutlass import Float32, Int64, Uint32
from cutlass._mlir import ir
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T

from .ptx import inline_ptx

__all__ = [
    "ld_global_v4",
    "st_global_v2",
    "st_global_v4",
    "st_global_u32",
    "st_global_u8",
    "ld_global_f32",
    "quantize_block",
    "quantize_dequantize_block",
    "block_absmax",
    "udiv_magic",
    "magic_divisor",
]


def _struct(n: int) -> ir.Type:
    return llvm.StructType.get_literal([T.i32()] * n)


def _unpack(result: ir.Value, n: int) -> list[Uint32]:
    return [Uint32(llvm.extractvalue(T.i32(), result, [i])) for i in range(n)]


def _v(x) -> ir.Value:
    return x.ir_value()


# ---------------------------------------------------------------------------------------------
# Global memory access: explicit vector widths (16-byte loads, 8-byte packed stores)
# ---------------------------------------------------------------------------------------------


def ld_global_v4(addr: Int64) -> list[Uint32]:
    """Four 32-bit words from a 16-byte aligned global address (one LDG.E.128)."""
    res = inline_ptx(
        _struct(4),
        [_v(addr)],
        "ld.global.v4.b32 {$0, $1, $2, $3}, [$4];",
        "=r,=r,=r,=r,l",
        side_effects=False,
    )
    return _unpack(res, 4)


def ld_global_f32(addr: Int64) -> Float32:
    res = inline_ptx(
        T.f32(),
        [_v(addr)],
        "ld.global.f32 $0, [$1];",
        "=f,l",
        side_effects=False,
    )
    return Float32(res)


def _store(text: str, constraints: str, operands: list) -> None:
    inline_ptx(
        None,
        [_v(o) for o in operands],
        text,
        constraints,
        side_effects=True,
    )


def st_global_v2(addr: Int64, a: Uint32, b: Uint32) -> None:
    _store("st.global.v2.b32 [$0], {$1, $2};", "l,r,r", [addr, a, b])


def st_global_v4(addr: Int64, a: Uint32, b: Uint32, c: Uint32, d: Uint32) -> None:
    _store("st.global.v4.b32 [$0], {$1, $2, $3, $4};", "l,r,r,r,r", [addr, a, b, c, d])


def st_global_u32(addr: Int64, a: Uint32) -> None:
    _store("st.global.b32 [$0], $1;", "l,r", [addr, a])


def st_global_u8(addr: Int64, a: Uint32) -> None:
    _store("{\n.reg .b16 t;\ncvt.u16.u32 t, $1;\nst.global.b8 [$0], t;\n}", "l,r", [addr, a])


# ---------------------------------------------------------------------------------------------
# PTX text builders
# ---------------------------------------------------------------------------------------------


def _abs_and_amax(half: str) -> str:
    """PTX: %a0..%a7 = |x| (NaN -> +0) of words $W0..$W7; %amax (f32) = block max of %a."""
    lines = ["mov.b32 %z, 0;"]
    for i in range(8):
        lines.append(f"abs.{half}x2 %a{i}, $W{i};")
        lines.append(f"max.{half}x2 %a{i}, %a{i}, %z;")
    lines += [
        f"max.{half}x2 %m0, %a0, %a1;",
        f"max.{half}x2 %m1, %a2, %a3;",
        f"max.{half}x2 %m2, %a4, %a5;",
        f"max.{half}x2 %m3, %a6, %a7;",
        f"max.{half}x2 %m0, %m0, %m1;",
        f"max.{half}x2 %m2, %m2, %m3;",
        f"max.{half}x2 %m0, %m0, %m2;",
    ]
    if half == "bf16":
        # bf16 -> f32 is a 16-bit shift: exact, no cvt needed.
        lines += ["and.b32 %t, %m0, 0xFFFF0000;", "shl.b32 %u, %m0, 16;"]
        lines += ["mov.b32 %fa, %t;", "mov.b32 %fb, %u;"]
    else:
        lines += ["mov.b32 {%h0, %h1}, %m0;", "cvt.f32.f16 %fa, %h0;", "cvt.f32.f16 %fb, %h1;"]
    lines.append("max.f32 %amax, %fa, %fb;")
    return "\n".join(lines)


_SCALE = """
div.rn.f32 %q, %amax, 0f40C00000;
mul.rn.f32 %sff, $G, %q;
mov.b32 %fz, 0;
cvt.rn.satfinite.e4m3x2.f32 %s16, %fz, %sff;
cvt.rn.f16x2.e4m3x2 %sfw, %s16;
mov.b32 {%h0, %h1}, %sfw;
cvt.f32.f16 %sfb, %h0;
setp.eq.f32 %pz, %sfb, 0f00000000;
div.rn.f32 %d, %sfb, $G;
rcp.rn.f32 %os, %d;
selp.f32 %os, 0f00000000, %os, %pz;
"""


def _magnitude(half: str, i: int, hi: bool) -> str:
    """PTX: %x (f32) = magnitude of element (2i + hi) from %a{i}."""
    if half == "bf16":
        op = f"and.b32 %xb, %a{i}, 0xFFFF0000;" if hi else f"shl.b32 %xb, %a{i}, 16;"
        return op + "\nmov.b32 %x, %xb;"
    part = "%h1" if hi else "%h0"
    return f"mov.b32 {{%h0, %h1}}, %a{i};\ncvt.f32.f16 %x, {part};"


_ROUND_VALUE = """
mul.rn.f32 %v, %x, %os;
min.f32 %v, %v, 0f40C00000;
mov.b32 %vb, %v;
and.b32 %e, %vb, 0x7F800000;
max.u32 %e, %e, 0x3F800000;
add.u32 %mb, %e, 0x0B000000;
mov.b32 %mf, %mb;
add.rn.f32 %r, %v, %mf;
"""

# As _ROUND_VALUE, with M' = M + off*step, off = 0/2/4 for v's binade [0,2)/[2,4)/[4,6]: off is
# even, so ties still round to the even code, and r's low 3 bits are the e2m1 code itself.
_ROUND_CODE = """
mul.rn.f32 %v, %x, %os;
min.f32 %v, %v, 0f40C00000;
mov.b32 %vb, %v;
and.b32 %e, %vb, 0x7F800000;
max.u32 %e, %e, 0x3F800000;
shr.u32 %t, %e, 22;
add.u32 %mb, %e, %t;
add.u32 %mb, %mb, 0x0AFFFF02;
mov.b32 %mf, %mb;
add.rn.f32 %r, %v, %mf;
mov.b32 %rb, %r;
"""


def _signs(words: tuple[int, int, int, int], dst: str) -> str:
    """PTX: OR the sign bits of the 8 elements of words $W.. into bit 4k+3 of %{dst}."""
    w0, w1, w2, w3 = words
    # 0xFBD9: bytes [x0.b1, x1.b1, x0.b3, x1.b3] of (x0, x1), sign-replicated (selector bit 3):
    # element order [e0, e2, e1, e3]. Then even elements -> bit 3 of each byte, odd -> bit 7.
    return f"""
prmt.b32 %sa, $W{w0}, $W{w1}, 0xFBD9;
prmt.b32 %sb, $W{w2}, $W{w3}, 0xFBD9;
prmt.b32 %qe, %sa, %sb, 0x5410;
prmt.b32 %qo, %sa, %sb, 0x7632;
and.b32 %qe, %qe, 0x08080808;
and.b32 %qo, %qo, 0x80808080;
or.b32 %qe, %qe, %qo;
or.b32 %{dst}, %{dst}, %qe;
"""


_REGS = """
.reg .b32 %a<8>, %m<4>, %p<4>, %z, %t, %u, %xb, %vb, %e, %mb, %rb, %c, %sfw, %lo, %hi;
.reg .b32 %qe, %qo, %sa, %sb;
.reg .f32 %fa, %fb, %fz, %amax, %q, %sff, %sfb, %d, %os, %x, %v, %mf, %r, %vr, %dq;
.reg .b16 %s16, %h0, %h1;
.reg .pred %pz;
"""


def _subst(text: str, first_word: int, g_index: int) -> str:
    for i in range(8):
        text = text.replace(f"$W{i}", f"${first_word + i}")
    return text.replace("$G", f"${g_index}")


def _quantize_ptx(half: str) -> str:
    body = [_REGS, _abs_and_amax(half), _SCALE]
    for word, dst in ((0, "lo"), (4, "hi")):
        for j in range(4):  # pair j = elements 2j (low nibble), 2j+1 (high nibble) of this word
            i = word + j
            body += [_magnitude(half, i, False), _ROUND_CODE, "mov.b32 %c, %rb;"]
            body += [_magnitude(half, i, True), _ROUND_CODE]
            # bits 3..22 of r are zero, so byte 0 of (r_hi << 4) + r_lo is the packed pair
            body += ["shl.b32 %t, %rb, 4;", f"add.u32 %p{j}, %t, %c;"]
        body += ["shl.b32 %t, %p1, 8;", "add.u32 %u, %t, %p0;",
                 "shl.b32 %t, %p3, 8;", "add.u32 %xb, %t, %p2;",
                 f"prmt.b32 %{dst}, %u, %xb, 0x5410;"]
        body.append(_signs((word, word + 1, word + 2, word + 3), dst))
    body += ["mov.b32 $0, %lo;", "mov.b32 $1, %hi;", "cvt.u32.u16 $2, %s16;"]
    return _subst("{\n" + "\n".join(body) + "\n}", first_word=3, g_index=11)


def _quantize_dequantize_ptx(half: str) -> str:
    body = [_REGS, _abs_and_amax(half), _SCALE]
    for i in range(8):
        for hi in (False, True):
            body += [_magnitude(half, i, hi), _ROUND_VALUE]
            # r - M is the e2m1 value (exact); times sf is exact in fp32 and in bf16.
            body += ["sub.rn.f32 %vr, %r, %mf;", "mul.rn.f32 %dq, %vr, %sfb;", "mov.b32 %u, %dq;"]
            sign = f"and.b32 %t, $W{i}, 0x80000000;" if hi else f"shl.b32 %t, $W{i}, 16;"
            body += [sign, "and.b32 %t, %t, 0x80000000;", "or.b32 %u, %u, %t;"]
            # %lo keeps the low element across the high one (%xb is _magnitude's scratch)
            body.append("mov.b32 %lo, %u;" if not hi else f"prmt.b32 $%OUT{i}, %lo, %u, 0x7632;")
    text = "{\n" + "\n".join(body) + "\n}"
    for i in range(8):
        text = text.replace(f"$%OUT{i}", f"${i}")
    return _subst(text, first_word=8, g_index=16)


_AMAX_PTX = {half: _subst("{\n" + _REGS + _abs_and_amax(half) + "\nmov.b32 $0, %amax;\n}", 1, 9)
             for half in ("bf16", "f16")}
_QUANT_PTX = {half: _quantize_ptx(half) for half in ("bf16", "f16")}
_QDQ_PTX = {half: _quantize_dequantize_ptx(half) for half in ("bf16", "f16")}


def _half(is_fp16: bool) -> str:
    return "f16" if is_fp16 else "bf16"


# ---------------------------------------------------------------------------------------------
# DSL wrappers
# ---------------------------------------------------------------------------------------------


def quantize_block(words: list[Uint32], global_scale: Float32, is_fp16: bool):
    """16 elements (8 words) -> (codes of elements 0..7, codes of 8..15, e4m3 scale byte)."""
    res = inline_ptx(
        _struct(3),
        [_v(w) for w in words] + [_v(global_scale)],
        _QUANT_PTX[_half(is_fp16)],
        "=r,=r,=r," + ",".join(["r"] * 8) + ",f",
        side_effects=False,
    )
    return _unpack(res, 3)


def quantize_dequantize_block(words: list[Uint32], global_scale: Float32, is_fp16: bool):
    """16 elements (8 words) -> 8 words of bf16 pairs: e2m1 * sf (not divided by global)."""
    res = inline_ptx(
        _struct(8),
        [_v(w) for w in words] + [_v(global_scale)],
        _QDQ_PTX[_half(is_fp16)],
        ",".join(["=r"] * 8) + "," + ",".join(["r"] * 8) + ",f",
        side_effects=False,
    )
    return _unpack(res, 8)


def block_absmax(words: list[Uint32], is_fp16: bool) -> Uint32:
    """max |x| over 16 elements (NaN ignored), as the bits of an fp32 (>= 0, so int-ordered)."""
    res = inline_ptx(
        T.i32(),
        [_v(w) for w in words],
        _AMAX_PTX[_half(is_fp16)],
        "=r," + ",".join(["r"] * 8),
        side_effects=False,
    )
    return Uint32(res)


def magic_divisor(d: int) -> tuple[int, int]:
    """(multiplier, shift) with n // d == (umulhi(n, multiplier) + n) >> shift for 0 <= n < 2^31.

    Granlund & Montgomery's round-up method; the sum cannot overflow 32 bits because n < 2^31.
    """
    if d < 1:
        raise ValueError(f"divisor {d} must be >= 1")
    shift = (d - 1).bit_length()
    return ((1 << 32) * ((1 << shift) - d)) // d + 1, shift


def udiv_magic(n, multiplier: Uint32, shift) -> Uint32:
    """n // d for the (multiplier, shift) of magic_divisor(d): 3 instructions instead of ~20."""
    res = inline_ptx(
        T.i32(),
        [_v(Uint32(n)), _v(multiplier), _v(Uint32(shift))],
        "{\n.reg .b32 t;\nmul.hi.u32 t, $1, $2;\nadd.u32 t, t, $1;\nshr.b32 $0, t, $3;\n}",
        "=r,r,r,r",
        side_effects=False,
    )
    return Uint32(res)
