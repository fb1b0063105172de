"""The "sm90" NVFP4 weight layout: offline pre-shuffle for the Hopper W4A16 GEMM, its inverse, and a
pure-torch emulation of the kernel's register dequantization (the CPU tests' proof of the bit tricks).

Why a layout of our own. The kernel multiplies with wgmma m64nNk16 whose A operand (the weight, after
swap-AB) comes from registers. Thread t of a warpgroup (warp w = t // 32, lane l) owns, per k16 step,
the 8 values of rows g = 16w + l//4 and g+8 at columns 2c, 2c+1, 2c+8, 2c+9 (c = l % 4), held as
four bf16x2 registers r0..r3 = (g, 2c|2c+1), (g+8, 2c|2c+1), (g, 2c+8|2c+9), (g+8, 2c+8|2c+9)
(CuTe's SM90 64x16 A TV layout ((4,8,4),(2,2,2)):((128,1,16),(64,8,512))). The pre-shuffle stores:

* weight: int32 words (Nt, Kc, 2, 128, 4), Nt = N_pad/64 row tiles, Kc = K_pad/128 chunks. Word
  [nt, kc, s // 4, t, s % 4] holds thread t's 8 nibbles of k16 step s of chunk kc, so one 16-byte
  load gives a thread 4 steps and a warpgroup's load is 2 KB contiguous (fully coalesced).
  Bits of a word (lo half; the hi element of each bf16x2 is the same + 16, mod 32):
      r0: magnitude bits 2..4, sign 11     r1: magnitude 28..30, sign 5
      r2: magnitude 6..8, sign 15          r3: magnitude bits 0, 1, 26, sign 9
  so r0 = rotl(w, 4) & M, r1 = rotl(w, 10) & M, r2 = w & M with M = 0x81C081C0 put each e2m1
  magnitude at bf16 bits [8:6] and its sign at bit 15: that bf16 IS e2m1 * 2^-126 (0.5 -> a
  subnormal); r3 = (rotl(w, 6) & 0x80C080C0) | (rotl(w, 14) & 0x01000100). 9 integer ops per 8
  values (rotations are one funnel shift each). No placement gives every register one shift and
  mask (searched exhaustively, rotations included); the plain shifts of earlier versions took 11.
* scale: uint8 codes (Nt, Kc, 32, 16), 512 bytes per tile and chunk (one byte per 16 weights, no
  redundancy: HBM bytes are the decode time). Row group q = 8w + l//4 (0..31) holds rows g and g+8;
  bytes [4j..4j+3] of group q are the codes of row g (j even) or g+8 (j odd) for steps
  4(j//2)..4(j//2)+3. The four threads c = 0..3 that share rows read the same 16 bytes (a shared-
  memory broadcast, no bank conflict). A code c decodes with two integer ops to the bf16
  S = (c << 4) + 0x7680 == e4m3 scale * 2^119 (every e4m3 value times 2^119 is a normal bf16 with
  exponent field 237..254 and 3 mantissa bits, so it fits a byte). Then one bf16x2 multiply
  (e2m1 * 2^-126) * (scale * 2^119) = e2m1 * scale * 2^-7 is exact (<= 6 significant bits, normal
  range); the kernel multiplies the fp32 accumulator by 2^7 * alpha. Special codes: scale 0 -> code
  1 (a finite S: correct because the nibbles of a zero-scale block are forced to +-0, see below),
  NaN -> code 0x94 (S = bf16 NaN). Negative scales (sign bit set) are not NVFP4 (UE4M3) and raise.

Zero-scale blocks: the reference gives e2m1 * 0 = +-0 whatever the codes; every NVFP4 quantizer writes
codes +-0 there. prepare_weight keeps the sign and zeroes the magnitude of such codes, so the GEMM
stays exact for any input; unprepare_weight then returns that canonical form (identical to the
input for quantizer output, which the round-trip test checks).

Padding: N to a multiple of 128 (two warpgroup tiles), K to a multiple of 128, with zero codes and
the zero-scale code; the kernel never reads activations past K (TMA fills zeros there).
"""

from __future__ import annotations

import torch

from ..formats import BLOCK_SIZE, pack_e2m1, round_up, unpack_e2m1

__all__ = [
    "ROW_TILE",
    "ROW_PAD",
    "K_CHUNK",
    "SCALE_GROUPS",
    "SCALE_BIAS_LOG2",
    "padded_shape",
    "scale_code_table",
    "prepare_weight",
    "unprepare_weight",
    "emulate_dequant",
]

ROW_TILE = 64  # weight rows per warpgroup (wgmma M)
ROW_PAD = 128  # N is padded to this (configs use 1 or 2 warpgroups per CTA)
K_CHUNK = 128  # K per 16-byte weight load pair and per activation TMA tile
STEPS = K_CHUNK // 16
SCALE_GROUPS = ROW_TILE // 2  # 16-byte scale groups per tile and chunk: rows g and g+8 of thread t
SCALE_BIAS_LOG2 = 7  # dequantized weights are e2m1*scale*2^-7; the epilogue multiplies by 2^7
_S_BASE = 0x7680  # bf16 bits of 2^110: code 0
_ZERO_CODE = 1
_NAN_CODE = (0x7FC0 - _S_BASE) >> 4
_MASK = 0x81C081C0


def padded_shape(n: int, k: int) -> tuple[int, int]:
    return round_up(n, ROW_PAD), round_up(k, K_CHUNK)


def _bf16_bits(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF


def scale_code_table() -> tuple[torch.Tensor, torch.Tensor]:
    """(encode[256] int16: e4m3 byte -> code or -1 if unsupported, decode[256] uint8: code -> e4m3 byte)."""
    e4m3 = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn)
    value = e4m3.float()
    encode = torch.full((256,), -1, dtype=torch.int16)
    decode = torch.zeros(256, dtype=torch.uint8)
    for b in range(128):  # sign bit clear only
        v = value[b].item()
        if v != v:  # NaN (0x7F)
            code = _NAN_CODE
        elif v == 0.0:
            code = _ZERO_CODE
        else:
            bits = int(_bf16_bits(torch.tensor([v * 2.0**119]))[0])
            delta = bits - _S_BASE
            if delta < 0 or delta % 16 or delta >> 4 > 255:
                raise AssertionError(f"e4m3 byte {b:#x} does not fit the sm90 scale code")
            code = delta >> 4
        encode[b] = code
        decode[code] = b
    return encode, decode


_TABLES: tuple[torch.Tensor, torch.Tensor] | None = None


def _tables() -> tuple[torch.Tensor, torch.Tensor]:
    global _TABLES
    if _TABLES is None:
        _TABLES = scale_code_table()
    return _TABLES


def _thread_coords() -> tuple[torch.Tensor, torch.Tensor]:
    """Per thread t of a warpgroup: (row g in 0..63, column pair c in 0..3)."""
    t = torch.arange(128)
    return (t % 32) // 4 + 16 * (t // 32), t % 4


def _group_rows() -> torch.Tensor:
    """Per scale group q = 8w + l//4: its first row g = 16w + l//4 (the second is g + 8)."""
    q = torch.arange(SCALE_GROUPS)
    return 16 * (q // 8) + q % 8


def thread_scale_group(t: torch.Tensor) -> torch.Tensor:
    """The scale group a warpgroup thread t reads (the kernel's address arithmetic, for tests)."""
    return 8 * (t // 32) + (t % 32) // 4


# (register j, half h) -> (row offset, column offset) inside a k16 step for g, 2c.
_REG_ELEMS = (((0, 0), (0, 1)), ((8, 0), (8, 1)), ((0, 8), (0, 9)), ((8, 8), (8, 9)))
# (register j) -> word bit of magnitude bit 0,1,2 and of the sign (lo half; hi half is +16 mod 32)
_REG_BITS = ((2, 3, 4, 11), (28, 29, 30, 5), (6, 7, 8, 15), (0, 1, 26, 9))


def _word_bits(j: int, half: int) -> list[int]:
    """Word bits of register j's element `half` (0 lo, 1 hi): magnitude bits 0..2, then the sign."""
    return [(b + 16 * half) % 32 for b in _REG_BITS[j]]


def _check_inputs(w_packed: torch.Tensor, w_scale: torch.Tensor) -> tuple[int, int]:
    if w_packed.dim() != 2 or w_packed.dtype != torch.uint8:
        raise ValueError(
            f"w_packed: expected 2-D uint8 [N, K/2], got {w_packed.dtype} {tuple(w_packed.shape)}"
        )
    n, k = w_packed.shape[0], w_packed.shape[1] * 2
    if k % BLOCK_SIZE:
        raise ValueError(f"w_packed: K={k} must be a multiple of {BLOCK_SIZE}")
    if w_scale.dtype not in (torch.float8_e4m3fn, torch.uint8):
        raise ValueError(f"w_scale: dtype {w_scale.dtype}, expected torch.float8_e4m3fn")
    if tuple(w_scale.shape) != (n, k // BLOCK_SIZE):
        raise ValueError(
            f"w_scale: shape {tuple(w_scale.shape)}, expected {(n, k // BLOCK_SIZE)} (linear layout)"
        )
    return n, k


def prepare_weight(w_packed: torch.Tensor, w_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w_packed (N, K/2) uint8 + w_scale (N, K/16) e4m3 (linear) -> (words int32 (Nt,Kc,2,128,4),
    scale codes uint8 (Nt,Kc,32,16)). Pure torch, runs on the inputs' device (CPU is fine)."""
    n, k = _check_inputs(w_packed, w_scale)
    device = w_packed.device
    encode, _ = _tables()
    sbytes = w_scale.view(torch.uint8).to(torch.long)
    codes_s = encode.to(device)[sbytes]
    if bool((codes_s < 0).any()):
        raise ValueError(
            "w_scale: negative block scales (sign bit set) are not NVFP4 (UE4M3) scales "
            "and are not supported by the sm90 layout"
        )
    n_pad, k_pad = padded_shape(n, k)
    q = unpack_e2m1(w_packed).to(torch.int32)  # (N, K) codes
    zero_block = (sbytes == 0).repeat_interleave(BLOCK_SIZE, dim=1)
    q = torch.where(zero_block, q & 8, q)  # zero-scale blocks: keep sign, zero magnitude
    qp = torch.zeros(n_pad, k_pad, dtype=torch.int32, device=device)
    qp[:n, :k] = q
    cp = torch.full((n_pad, k_pad // BLOCK_SIZE), _ZERO_CODE, dtype=torch.int32, device=device)
    cp[:n, : k // BLOCK_SIZE] = codes_s.to(torch.int32)
    nt, kc = n_pad // ROW_TILE, k_pad // K_CHUNK
    g, c = _thread_coords()
    g, c = g.to(device), c.to(device)
    # qp viewed as (nt, 64, kc, steps, 16): element (row, k16 col) per tile/chunk/step
    qv = qp.view(nt, ROW_TILE, kc, STEPS, 16).permute(1, 4, 0, 2, 3)  # (64, 16, nt, kc, steps)
    words = torch.zeros(nt, kc, STEPS, 128, dtype=torch.int64, device=device)
    for j, ((dr0, dc0), (dr1, dc1)) in enumerate(_REG_ELEMS):
        for half, (dr, dc) in enumerate(((dr0, dc0), (dr1, dc1))):
            e = qv[g + dr, 2 * c + dc]  # (128, nt, kc, steps)
            e = e.permute(1, 2, 3, 0).to(torch.int64)  # (nt, kc, steps, 128)
            bits = _word_bits(j, half)
            for b in range(4):  # magnitude bits 0..2, then the sign
                words |= ((e >> b) & 1) << bits[b]
    words = words.view(nt, kc, 2, 4, 128).permute(0, 1, 2, 4, 3)  # (nt, kc, slot, t, word)
    w_out = (words - ((words >> 31) << 32)).to(torch.int32).contiguous()  # two's complement
    cv = cp.view(nt, ROW_TILE, kc, STEPS)
    g_rows = _group_rows().to(device)
    s_out = torch.zeros(nt, kc, SCALE_GROUPS, 16, dtype=torch.int32, device=device)
    for j in range(4):  # byte group j: row g (j even) / g+8 (j odd), steps 4*(j//2)..+3
        rows = g_rows + 8 * (j % 2)
        part = cv[:, rows, :, 4 * (j // 2) : 4 * (j // 2) + 4]  # (nt, 32, kc, 4)
        s_out[:, :, :, 4 * j : 4 * j + 4] = part.permute(0, 2, 1, 3)
    return w_out, s_out.to(torch.uint8).contiguous()


def _unshuffle_codes(w: torch.Tensor, nt: int, kc: int) -> torch.Tensor:
    """words (nt,kc,2,128,4) -> e2m1 codes (nt*64, kc*128) int64."""
    g, c = _thread_coords()
    g, c = g.to(w.device), c.to(w.device)
    words = w.to(torch.int64) & 0xFFFFFFFF
    words = words.permute(0, 1, 2, 4, 3).reshape(nt, kc, STEPS, 128)
    q = torch.zeros(ROW_TILE, 16, nt, kc, STEPS, dtype=torch.int64, device=w.device)
    for j, elems in enumerate(_REG_ELEMS):
        for half, (dr, dc) in enumerate(elems):
            bits = _word_bits(j, half)
            e = torch.zeros_like(words)
            for b in range(4):
                e |= ((words >> bits[b]) & 1) << b
            q[g + dr, 2 * c + dc] = e.permute(3, 0, 1, 2)  # (128, nt, kc, steps)
    return q.permute(2, 0, 3, 4, 1).reshape(nt * ROW_TILE, kc * K_CHUNK)


def _unshuffle_scale_codes(s: torch.Tensor, nt: int, kc: int) -> torch.Tensor:
    g = _group_rows().to(s.device)
    out = torch.zeros(nt, ROW_TILE, kc, STEPS, dtype=torch.long, device=s.device)
    sl = s.to(torch.long)
    for j in range(4):
        rows = g + 8 * (j % 2)
        out[:, rows, :, 4 * (j // 2) : 4 * (j // 2) + 4] = sl[:, :, :, 4 * j : 4 * j + 4].permute(0, 2, 1, 3)
    return out.view(nt * ROW_TILE, kc * STEPS)


def check_prepared(w: torch.Tensor, w_scale: torch.Tensor, n: int, k: int) -> tuple[int, int]:
    n_pad, k_pad = padded_shape(n, k)
    nt, kc = n_pad // ROW_TILE, k_pad // K_CHUNK
    if w.dtype != torch.int32 or tuple(w.shape) != (nt, kc, 2, 128, 4):
        raise ValueError(
            f"w: expected int32 {(nt, kc, 2, 128, 4)} for n={n}, k={k} (sm90 layout), "
            f"got {w.dtype} {tuple(w.shape)}"
        )
    if w_scale.dtype != torch.uint8 or tuple(w_scale.shape) != (nt, kc, SCALE_GROUPS, 16):
        raise ValueError(
            f"w_scale: expected uint8 {(nt, kc, SCALE_GROUPS, 16)} (sm90 scale codes), got "
            f"{w_scale.dtype} {tuple(w_scale.shape)}"
        )
    return nt, kc


def unprepare_weight(
    w: torch.Tensor, w_scale: torch.Tensor, n: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of prepare_weight: -> (w_packed (N, K/2) uint8, w_scale (N, K/16) float8_e4m3fn)."""
    nt, kc = check_prepared(w, w_scale, n, k)
    _, decode = _tables()
    q = _unshuffle_codes(w, nt, kc)[:n, :k].to(torch.uint8)
    codes = _unshuffle_scale_codes(w_scale, nt, kc)[:n, : k // BLOCK_SIZE]
    sf = decode.to(w.device)[codes].contiguous().view(torch.float8_e4m3fn)
    return pack_e2m1(q).contiguous(), sf


def emulate_dequant(w: torch.Tensor, w_scale: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """What the kernel's registers hold, computed with the kernel's own bit operations:
    bf16 (N, K) = e2m1 * scale * 2^-7 (times 2^7 this equals reference.dequantize exactly)."""
    nt, kc = check_prepared(w, w_scale, n, k)
    words = (w.to(torch.int64) & 0xFFFFFFFF).permute(0, 1, 2, 4, 3).reshape(nt, kc, STEPS, 128)
    m = _MASK

    def rotl(x, n):
        return ((x << n) | (x >> (32 - n))) & 0xFFFFFFFF

    regs = [
        rotl(words, 4) & m,
        rotl(words, 10) & m,
        words & m,
        (rotl(words, 6) & 0x80C080C0) | (rotl(words, 14) & 0x01000100),
    ]
    g, c = _thread_coords()
    sc = w_scale.to(torch.int64)[:, :, thread_scale_group(torch.arange(128))]  # (nt, kc, 128, 16)
    out = torch.zeros(ROW_TILE, 16, nt, kc, STEPS, dtype=torch.bfloat16)
    for s in range(STEPS):
        for row_sel in range(2):  # 0: row g, 1: row g+8
            code = sc[:, :, :, 4 * (2 * (s // 4) + row_sel) + s % 4]  # (nt, kc, 128)
            sbits = (code << 4) + _S_BASE
            sval = _bits_to_bf16(sbits)
            for j in (row_sel, row_sel + 2):  # r0, r2 use row g; r1, r3 use g+8
                for half in range(2):
                    nib = _bits_to_bf16((regs[j][:, :, s, :] >> (16 * half)) & 0xFFFF)
                    val = nib * sval  # bf16 * bf16 -> bf16, exact here
                    dr, dc = _REG_ELEMS[j][half]
                    out[g + dr, 2 * c + dc, :, :, s] = val.permute(2, 0, 1)  # (128, nt, kc)
    return out.permute(2, 0, 3, 4, 1).reshape(nt * ROW_TILE, kc * K_CHUNK)[:n, :k]


def _bits_to_bf16(bits: torch.Tensor) -> torch.Tensor:
    b = bits.to(torch.int32)
    b = torch.where(b >= 0x8000, b - 0x10000, b)
    return b.to(torch.int16).view(torch.bfloat16)
