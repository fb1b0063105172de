"""Tile/split configurations of the SM90 W4A16 GEMM and the fallback heuristic (no tuning table).

A config is the compile-time shape of the kernel (token tile `bn`, consumer warpgroups `wgs`,
shared-memory pipeline `stages` of weights + activations) plus the run-time stream-K width
`ctas_per_sm`, which needs no recompile. M (tokens), N and K are run-time values in every kernel.

Stream-K grid (`stream_k_grid`): per token tile, the n_tiles x Kc (row tile, K chunk) pairs are cut
into G = max(1, SMs * ctas_per_sm // m_tiles) equal runs, so the whole grid is one wave of at most
SMs * ctas_per_sm CTAs with the same number of weight chunks each, whatever M, N and K are. Except
where runs of whole tiles cost each CTA at most TILE_ALIGNED_SLACK of a tile more than that equal
cut (e.g. 128 tiles on 132 SMs): then every CTA takes the same number of whole tiles, no fix-up.
With `cluster` 2 the unit of that cut is a pair of neighbouring row tiles, one per CTA of a 2-CTA
cluster: both CTAs walk the same chunks of their own row tile and share the activation tile (each
loads half of it by TMA multicast into both), so x crosses L2 once per 2 row tiles. On H100 that
pays at M = 33..128 with the 64-token tile (bn64 cl2: 22.6 vs 24.3 us on down M = 64) and not for the
128x128 / 128x256 prefill tiles (L2 bytes -28..-35%, time -1.3..+3.8%: L2 is not what limits them),
which stay EXPERIMENTAL_SHAPES (benchmarks/notes_gemm.md, v12).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from ..formats import round_up
from .gemm_sm90_layout import K_CHUNK, ROW_PAD, ROW_TILE

__all__ = [
    "NUM_SMS_H100",
    "GemmConfig",
    "COMPILED_SHAPES",
    "EXPERIMENTAL_SHAPES",
    "candidate_configs",
    "heuristic_config",
    "stream_k_grid",
    "dsmem_split_grid",
    "run_cuts",
    "closes_tile",
    "fits",
    "SLOT_EMPTY_BITS",
    "PIECE_FULL",
    "FLAG_WORDS",
    "piece_flags",
    "slot_words",
    "TILE_ALIGNED_SLACK",
]

NUM_SMS_H100 = 132
# fp32 bits of a stream-K workspace word that holds no partial (a negative NaN with a payload; GPU
# arithmetic only ever writes the canonical NaN 0x7fffffff). See gemm_sm90_epilogue.
SLOT_EMPTY_BITS = 0xFFC0DEAD
# Piece flags (token tiles of 64+, gemm_sm90_epilogue): a flag word holds SLOT_EMPTY_BITS at rest and
# PIECE_FULL from its warp's release until the closing CTA has acquired it. FLAG_WORDS per slot,
# after its bm * bn partials: one per (64-row block, warp), at most 4 blocks x 4 warps, padded to
# 128 bytes so the flags share no cache line with partials. PIECE_FULL is a NaN payload too: a
# call with another grid or tile puts its flags where stale partials of an earlier call lie,
# which hold anything fp32 arithmetic writes, never this.
PIECE_FULL = 0xFFC0FEED
FLAG_WORDS = 32
# Whole-tile runs instead of the equal stream-K cut when they cost at most this many tiles more per
# CTA. Stream-K cut every tile in two where m_tiles * n_tiles is just under the wave (o and down at
# M = 512 with 128x128 tiles: 128 tiles, 132 SMs), each CTA parking or closing a 64 KB fp32 partial
# through L2 to save 3% of the chunks (H100, bn128 per_step 2, two runs: o 35.0 -> 29.3 us, down
# 110.8 -> 101.3 us with one tile per CTA). Its runs also start at scattered K offsets, so the CTAs
# of a token tile stop sharing x chunks in L2; where x is larger than L2 that re-reads x from HBM
# (70B down, K = 28672, 128x256 tiles: M = 1024 cut into 1.94 tiles per CTA took 972 us, M = 512 in
# one tile per CTA 325 us).
TILE_ALIGNED_SLACK = 0.15
_BNS = (8, 16, 32, 64, 128, 256)
KernelShape = tuple[int, int, int, int, int, int, int]  # GemmConfig.shape


@dataclass(frozen=True)
class GemmConfig:
    """bn: tokens per CTA (wgmma N); wgs: consumer warpgroups; mt: 64-row weight tiles per
    consumer warpgroup (bm = 64 * wgs * mt); stages: shared-memory pipeline depth (each stage: one
    128-wide K chunk of weights + x); ctas_per_sm: stream-K width (run time; pieces of a row tile
    are fixed up deterministically)."""

    bn: int = 16
    wgs: int = 1
    stages: int = 7
    ctas_per_sm: int = 2
    per_step: int = 2  # 1: fence+wgmma per k16 step; 0: one fence per chunk; 2: 0 + 2 A buffers
    pdl: int = 1  # programmatic dependent launch: weights stream in while the previous kernel ends
    # mt 2 (prefill): each warpgroup multiplies 128 weight rows by the same activation tile, which
    # halves the activation bytes each CTA pulls from L2 per FLOP (the prefill limit with mt 1);
    # its ~210 live registers per thread need setmaxnreg and the single-fragment schedule.
    mt: int = 1
    # cluster 2: CTA pairs on neighbouring row tiles of one token tile share each activation tile
    # by TMA multicast, which halves x's L2 traffic per FLOP as mt 2 does, with no larger tile
    # (per_step and the register budget stay those of the 1-CTA kernel). Shipped for bn 64.
    cluster: int = 1
    # dsmem_split d > 1 (decode, bn 8): no stream-K; each row tile's K chunks are cut into d parts,
    # one per CTA of a d-CTA cluster, and the lower parts' partials go through distributed shared
    # memory into the CTA holding the last part, which sums and stores them (no L2 round trip for
    # the fix-up). The grid is n_tiles x d per token tile (dsmem_split_grid), so ctas_per_sm is 1.
    dsmem_split: int = 1

    def __post_init__(self) -> None:
        if self.bn not in _BNS:
            raise ValueError(f"bn={self.bn}: expected one of {_BNS}")
        if self.wgs not in (1, 2):
            raise ValueError(f"wgs={self.wgs}: expected 1 or 2")
        if not 2 <= self.stages <= 12:
            raise ValueError(f"stages={self.stages}: expected 2..12")
        if self.smem_bytes > 220 * 1024:
            raise ValueError(f"{self.name}: {self.smem_bytes} bytes of shared memory, above 220 KB")
        if self.pdl not in (0, 1):
            raise ValueError(f"pdl={self.pdl}: expected 0 or 1")
        if self.per_step not in (0, 1, 2):
            raise ValueError(f"per_step={self.per_step}: expected 0, 1 or 2")
        if not 1 <= self.ctas_per_sm <= 8:
            raise ValueError(f"ctas_per_sm={self.ctas_per_sm}: expected 1..8")
        if self.mt not in (1, 2):
            raise ValueError(f"mt={self.mt}: expected 1 or 2")
        if self.mt == 2 and (self.per_step != 0 or self.bn < 16):
            raise ValueError(f"{self.name}: mt=2 needs per_step=0 and bn >= 16 (register budget, wgmma)")
        if self.cluster not in (1, 2):
            raise ValueError(f"cluster={self.cluster}: expected 1 or 2")
        if self.cluster == 2 and self.bn < 32:
            raise ValueError(f"{self.name}: cluster=2 needs bn >= 32 (wgmma; decode shares little x)")
        if not 1 <= self.dsmem_split <= 8:
            raise ValueError(f"dsmem_split={self.dsmem_split}: expected 1..8 (portable cluster size)")
        split_kernel = (self.bn, self.wgs, self.mt, self.cluster, self.ctas_per_sm)
        if self.dsmem_split > 1 and split_kernel != (8, 1, 1, 1, 1):
            raise ValueError(
                f"{self.name}: dsmem_split needs bn 8 (mma.sync), wgs 1, mt 1, cluster 1 and ctas_per_sm 1 "
                "(its grid is n_tiles x dsmem_split)"
            )

    @property
    def bm(self) -> int:
        return ROW_TILE * self.wgs * self.mt

    @property
    def smem_bytes(self) -> int:
        """Shared memory of one CTA: stages x (activation tile + weight chunk of each warpgroup),
        and with dsmem_split the landing slots of the peers' fp32 partials."""
        landing = (self.dsmem_split - 1) * self.bm * self.bn * 4
        return self.stages * (self.bn * K_CHUNK * 2 + self.wgs * self.mt * (4096 + 512)) + 1024 + landing

    @property
    def name(self) -> str:
        return (
            f"bn{self.bn}_wg{self.wgs}{'_mt2' if self.mt == 2 else ''}_st{self.stages}_p{self.per_step}"
            f"{'_pdl' if self.pdl else ''}{'_cl2' if self.cluster == 2 else ''}"
            f"{f'_ds{self.dsmem_split}' if self.dsmem_split > 1 else ''}_c{self.ctas_per_sm}"
        )

    @property
    def compile_key(self) -> dict[str, int]:
        """The fields that change the compiled kernel (ctas_per_sm is a run-time argument)."""
        key = {
            "bn": self.bn,
            "wgs": self.wgs,
            "stages": self.stages,
            "per_step": self.per_step,
            "pdl": self.pdl,
            "mt": self.mt,
        }
        if self.cluster != 1:  # absent for 1: cache keys of the 1-CTA kernels stay as they were
            key["cluster"] = self.cluster
        if self.dsmem_split != 1:
            key["dsmem_split"] = self.dsmem_split
        return key

    def to_dict(self) -> dict[str, int | str]:
        """The fields plus "name" (read by dispatch.describe(); checked, not needed, on load)."""
        return {**dataclasses.asdict(self), "name": self.name}

    @property
    def shape(self) -> KernelShape:
        """(bn, wgs, stages, per_step, mt, cluster, dsmem_split): its COMPILED_SHAPES /
        EXPERIMENTAL_SHAPES entry."""
        return (self.bn, self.wgs, self.stages, self.per_step, self.mt, self.cluster, self.dsmem_split)

    @classmethod
    def from_shape(cls, shape: KernelShape, ctas_per_sm: int = 1) -> GemmConfig:
        bn, wgs, stages, per_step, mt, cluster, split = shape
        return cls(bn, wgs, stages, ctas_per_sm, per_step=per_step, mt=mt, cluster=cluster, dsmem_split=split)

    @classmethod
    def from_spec(cls, spec: str) -> GemmConfig:
        """"bn,wgs,stages,per_step,ctas_per_sm[,pdl[,mt[,cluster[,dsmem_split]]]]" (the benchmarks'
        config syntax; omitted trailing fields are 1)."""
        bn, wgs, stages, per_step, ctas, *opt = (int(v) for v in spec.split(","))
        pdl, mt, cluster, split = (opt + [1, 1, 1, 1][len(opt) :])[:4]
        return cls(
            bn, wgs, stages, ctas, per_step=per_step, pdl=pdl, mt=mt, cluster=cluster, dsmem_split=split
        )

    @classmethod
    def from_dict(cls, d: dict) -> GemmConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - {"name"}
        if unknown:
            raise ValueError(f"GemmConfig.from_dict: unknown keys {sorted(unknown)}")
        cfg = cls(**{k: int(v) for k, v in d.items() if k != "name"})
        if "name" in d and d["name"] != cfg.name:
            raise ValueError(f"GemmConfig.from_dict: name {d['name']!r} does not match {cfg.name!r}")
        return cfg


# The shipped kernel shapes (bn, wgs, stages, per_step, mt, cluster, dsmem_split): what precompile()
# builds by default and the candidate lists name.
# Stages keep a decode CTA under ~72 KB of shared memory (3 CTAs per SM, >= 100 KB of weights in
# flight per SM). per_step 2 (software-pipelined chunks) won or tied everywhere on H100 except
# bn32, where per_step 0 was faster (gate_up M=32: 41.4 vs 53.6 us; benchmarks/notes_gemm.md).
# The 256x128 prefill tile (mt 2) uses 4 stages of 50 KB; the 128x256 one (bn 256: each dequantized
# weight feeds 256 tokens, half the dequant work per FLOP of 256x128) 3 stages of 73 KB; at bn 256
# per_step 1 beat 0 by 4-10% at M = 512..4096 (gate_up M = 4096: 1356 / 1411 / 1506 us for p1 / p2 / p0).
# bn 128 per_step 1 measured within 1-3% of per_step 2, the faster at most points of M = 128..1024
# (H100, 2026-12-07); both stay candidates.
COMPILED_SHAPES: tuple[KernelShape, ...] = (
    (8, 1, 8, 2, 1, 1, 1),
    (16, 1, 7, 2, 1, 1, 1),
    (32, 1, 5, 0, 1, 1, 1),
    (32, 1, 5, 2, 1, 1, 1),
    (64, 1, 4, 2, 1, 1, 1),
    (64, 1, 4, 2, 1, 2, 1),
    (128, 2, 4, 1, 1, 1, 1),
    (128, 2, 4, 2, 1, 1, 1),
    (128, 2, 4, 0, 2, 1, 1),
    (256, 2, 3, 1, 1, 1, 1),
    (256, 2, 3, 2, 1, 1, 1),
)
# Built and checked (CPU compile tests, `bench_gemm.py check`, the GPU tests) but in no candidate
# list: the 2-CTA cluster variants of the prefill tiles. They cut L2 traffic as designed (ncu
# lts__t_bytes: gate_up M = 4096 bn256 9.03 -> 6.49 GB, qkv M = 512 bn128 323 -> 210 MB) and ran no
# faster (1.28 vs 1.26 ms, 60.4 vs 60.3 us; best cluster config against best 1-CTA config: -1.3..+3.8%
# over the 24 points qkv/o/gate_up/down x M = 128..4096; H100, benchmarks/notes_gemm.md v12).
# And the dsmem_split decode kernels (2, 3, 4 CTAs per row tile): correct on the GPU tests; at M = 1
# within 2% of stream-K on o (ds4 6.13 vs 6.24 us) and slower on qkv (ds3 8.15 vs 7.32) and down (ds4
# 16.8 vs 12.9): their DSMEM reduction is cheap (o: 0.38 us against stream-K's 1.73) but the main loop
# of an n_tiles x d grid is not (o ds4 without any fix-up 5.75 vs 4.51 us; H100, notes_gemm.md v18).
EXPERIMENTAL_SHAPES: tuple[KernelShape, ...] = (
    (128, 2, 4, 1, 1, 2, 1),
    (128, 2, 4, 2, 1, 2, 1),
    (256, 2, 3, 1, 1, 2, 1),
    (8, 1, 8, 2, 1, 1, 2),
    (8, 1, 8, 2, 1, 1, 3),
    (8, 1, 8, 2, 1, 1, 4),
)


def piece_flags(bn: int) -> bool:
    """Whether the fix-up of bn-token tiles signals arrival by per-warp flags (bn >= 64: partials of
    32-128 words per thread, where the counter-free protocol's re-marking of every word cost a third
    of the fix-up's L2 bytes) rather than by each word's own value (decode tiles of a few words per
    thread, where a separate flag would add an L2 round trip to every fix-up)."""
    return bn >= 64


def slot_words(bm: int, bn: int) -> int:
    """32-bit words of one CTA's stream-K workspace slot: the bm x bn fp32 partials (+ flags)."""
    return bm * bn + (FLAG_WORDS if piece_flags(bn) else 0)


def fits(cfg: GemmConfig, n: int, k: int | None = None) -> bool:
    """Whether cfg's row tile (a pair of them with cluster 2) divides N padded to ROW_PAD (the
    prepared weight's row count), and (given k) a dsmem_split config has a K chunk per part."""
    if k is not None and round_up(k, K_CHUNK) // K_CHUNK < cfg.dsmem_split:
        return False
    return round_up(n, ROW_PAD) % (cfg.bm * cfg.cluster) == 0


def stream_k_grid(m: int, n: int, k: int, cfg: GemmConfig, sms: int = NUM_SMS_H100) -> tuple[int, int, int]:
    """(grid.x, T, n_tiles) per token tile. With U = n_tiles / cluster scheduling units (row tiles,
    or row-tile pairs) and T = U * Kc (unit, K chunk) pairs, run r of the G = grid.x / cluster runs
    streams [r*T//G, (r+1)*T//G) (each CTA of its cluster on its own row tile of the unit); G <= T
    so none is empty, and m_tiles * grid.x <= max(SMs*c, m_tiles * cluster). A dsmem_split config
    has its own grid (dsmem_split_grid)."""
    if cfg.dsmem_split > 1:
        return dsmem_split_grid(n, k, cfg)
    if not fits(cfg, n):
        raise ValueError(
            f"config {cfg.name}: N={n} (padded to {round_up(n, ROW_PAD)}) is not a multiple of its "
            f"{cfg.bm * cfg.cluster}-row {'tile' if cfg.cluster == 1 else 'tile pair'}"
        )
    n_tiles = round_up(n, ROW_PAD) // cfg.bm
    units = n_tiles // cfg.cluster
    total = units * (round_up(k, K_CHUNK) // K_CHUNK)
    m_tiles = -(-m // cfg.bn)
    wave = sms * cfg.ctas_per_sm // cfg.cluster  # runs (clusters) in one wave
    per_run = -(-m_tiles * units // wave)  # whole units per run in one wave
    if units % per_run == 0 and per_run - m_tiles * units / wave <= TILE_ALIGNED_SLACK:
        return units // per_run * cfg.cluster, total, n_tiles  # whole tiles: no stream-K fix-up
    g = min(total, max(1, wave // m_tiles))  # grid <= one wave
    return g * cfg.cluster, total, n_tiles


def closes_tile(g_begin: int, g_end: int, k_chunks: int) -> bool:
    """Whether the run [g_begin, g_end) closes a row tile: begins inside one that ends within it
    (host side of the epilogue's _closed_tile)."""
    t0 = g_begin // k_chunks * k_chunks
    return t0 < g_begin and t0 + k_chunks <= g_end


def run_cuts(runs: int, total: int, k_chunks: int, closer_bias: int = 0) -> list[int]:
    """Chunk boundaries of the stream-K runs (run r holds [cuts[r], cuts[r+1])): the even cut
    r * total // runs, or (dev variant, gemm_sm90_kernel closer_bias b > 0) each closing run (one
    that ends a row tile begun by an earlier run) widened by up to b chunks at either end, taken from
    a neighbour that does not close: the closer's peers then finish before it, so their partials are
    there when it looks (b is capped below half the shortest even run, so no run empties). The
    kernel computes the same cuts (Sm90W4A16Kernel._cut)."""
    even = [r * total // runs for r in range(runs + 1)]
    b = min(closer_bias, (total // runs - 1) // 2)
    cuts = list(even)
    if b > 0:
        for r in range(1, runs):
            below, here = (closes_tile(even[q], even[q + 1], k_chunks) for q in (r - 1, r))
            cuts[r] += b if below and not here else -b if here and not below else 0
    return cuts


def dsmem_split_grid(n: int, k: int, cfg: GemmConfig) -> tuple[int, int, int]:
    """(grid.x, T, n_tiles) per token tile of a dsmem_split config: with T = n_tiles * Kc (row
    tile, K chunk) pairs cut into grid.x = n_tiles * d equal runs (the kernel's stream-K cut), run r
    holds part r % d of row tile r // d, so each d-CTA cluster holds one row tile."""
    split, k_chunks = cfg.dsmem_split, round_up(k, K_CHUNK) // K_CHUNK
    if not fits(cfg, n):
        raise ValueError(f"config {cfg.name}: N={n} is not a multiple of its {cfg.bm}-row tile")
    if not fits(cfg, n, k):
        raise ValueError(f"config {cfg.name}: K={k} has {k_chunks} chunks of 128, fewer than {split} parts")
    n_tiles = round_up(n, ROW_PAD) // cfg.bm
    return n_tiles * split, n_tiles * k_chunks, n_tiles


def _cfg(bn: int, per_step: int, ctas: int, mt: int = 1, cluster: int = 1) -> GemmConfig:
    shape = next(s for s in COMPILED_SHAPES if (s[0], s[3], s[4], s[5]) == (bn, per_step, mt, cluster))
    return GemmConfig.from_shape(shape, ctas)


# Per M bucket: the configs the tuner times (first = untuned default), as (bn, per_step,
# ctas_per_sm[, mt[, cluster]]). Decode buckets vary the stream-K width; prefill buckets the token
# tile. H100, benchmarks/results/gemm_h100_2026-12-07.json: bn64 cl2 (a 2-CTA cluster sharing the
# activation tile) beat bn64 at M = 64 on all five shapes (down 22.6 vs 24.3 us, gate_up 41.1 vs
# 44.1) and bn 32 at M = 32 did not; at M = 128 it won qkv and o (19.0 / 14.4 vs 20.3 / 17.9 us for
# bn128 p1) and lost the wide-K / wide-N shapes, where bn128 per_step 1 beat per_step 2 on all five.
# With the staged TMA-store epilogue (gemm_h100_2026-12-07_staged_e0a1f86.json) the 128x256 tile
# won every shape at M = 1024 and four of five at 512 (qkv 46.5 vs 46.9 us, down 93.8 vs 101.4;
# o lost, 34.6 vs 27.4), and bn128 per_step 2 won three of five at M = 256 (o 19.8 vs 29.4 us).
_CANDIDATES: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((8, 2, 2), (8, 2, 3), (8, 2, 4), (16, 2, 3)),
    16: ((16, 2, 3), (16, 2, 2), (8, 2, 2)),
    32: ((32, 0, 3), (32, 2, 3), (16, 2, 3)),
    64: ((64, 2, 2, 1, 2), (64, 2, 2), (32, 0, 3), (128, 2, 1), (64, 2, 1, 1, 2)),
    128: ((128, 1, 1), (64, 2, 2, 1, 2), (128, 2, 1), (64, 2, 2), (128, 0, 1, 2), (32, 0, 3)),
    256: ((128, 2, 1), (256, 1, 1), (128, 1, 1), (128, 0, 1, 2), (256, 2, 1), (64, 2, 2)),
    1024: ((256, 1, 1), (128, 2, 1), (128, 1, 1), (128, 0, 1, 2), (256, 2, 1)),
    8192: ((256, 1, 1), (256, 2, 1), (128, 1, 1), (128, 0, 1, 2), (128, 2, 1)),
}


def candidate_configs(m: int, n: int, k: int) -> list[GemmConfig]:
    """Configs worth timing for this shape (the tuner times these; the first is the heuristic's);
    configs whose row tile does not divide N are left out."""
    bucket = next(b for b in sorted(_CANDIDATES) if m <= b or b == 8192)
    return [cfg for cfg in (_cfg(*c) for c in _CANDIDATES[bucket]) if fits(cfg, n)]


@functools.lru_cache(maxsize=4096)  # eager calls without a config ask per call (~25 us to build)
def heuristic_config(m: int, n: int, k: int) -> GemmConfig:
    """Untuned default (H100 measurements): bn8 (mma.sync) with 2 and bn16 with 3 stream-K CTAs
    per SM for decode, bn32 per_step 0 for M <= 32, bn64 in 2-CTA clusters (2 per SM) for M <= 64,
    128x128 tiles with one CTA per SM up to M = 256 (per_step 1 to M = 128, then 2), then the
    128x256 tile (bn 256, per_step 1)."""
    return candidate_configs(m, n, k)[0]
