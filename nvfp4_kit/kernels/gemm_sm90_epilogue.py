"""Stream-K fix-up and epilogue of the SM90 W4A16 GEMM (a mixin of gemm_sm90_kernel's kernel class).

Each CTA streams its run of chunks [g_begin, g_end) from high to low, so the pieces it holds are, in
processing order: at most one "parked" piece (the run's high end, whose row tile goes on into
later CTAs), whole tiles (stored directly), and at most one "closing" piece (the run's low end,
which finishes a row tile begun by earlier CTAs). A parked piece's fp32 partials go to the CTA's
workspace slot as soon as it is done. The closing CTA keeps its piece in registers, loads the
parked partials of the tile's earlier CTAs, re-polls any word still empty, sums them in CTA order
(deterministic) with its own, stores, and marks the words empty again.

No counter, fence or atomic: every workspace word holds SLOT_EMPTY_BITS (a NaN payload no fp32
arithmetic produces; GPUs write the canonical NaN 0x7fffffff) except between its one write and its
one read within a launch, so a word's own value says whether it has arrived. Publishing costs a
store, the reducer's wait one L2 round trip per poll of a whole batch of pieces. The reducer (a
tile's highest CTA) only waits for lower-numbered CTAs, which the hardware dispatched before it
(CUTLASS's stream-K relies on the same order), and only at the end of its run, when its peers are
done too.
Measured on H100 (benchmarks/notes_gemm.md): a "last arrival sums" fix-up with a counter cost ~5 us
per decode kernel, the counter version of this order ~2.5 us.
Workspace: (m_tiles, grid_x, bm * bn) fp32, one slot per CTA, all words SLOT_EMPTY_BITS at rest.
With 2-CTA clusters a "CTA" above is a run (a cluster): its two CTAs hold pieces of the same
chunks of their own row tiles, so each tile's pieces, parking and closing follow the run's, and
slot (run, rank) is CTA run * 2 + rank's.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64

from .gemm_sm90_config import SLOT_EMPTY_BITS
from .gemm_sm90_layout import ROW_TILE, SCALE_BIAS_LOG2
from .gemm_sm90_ptx import (
    bits_equal,
    ld_nc_f32,
    ld_relaxed_f32,
    st_bf16,
    st_bf16_if,
    st_relaxed_f32,
    st_relaxed_u32,
    trap,
)

__all__ = ["EpilogueArgs", "StreamKEpilogue"]

_WG = 128
# Polls (one L2 round trip each, ~0.5-1 us) before a reducer gives up on a parked partial: seconds,
# never reached when the workspace is used as documented (one stream-K GEMM at a time per device).
_MAX_POLLS = 1 << 23


class EpilogueArgs(NamedTuple):
    """What the fix-up and the stores read: kernel arguments and this thread's coordinates."""

    alpha_addr: Any
    out_addr: Any
    ws_addr: Any
    m: Any
    n: Any
    k_chunks: Any
    total: Any
    runs: Any  # stream-K runs per token tile (grid.x / cluster)
    g_begin: Any  # first (unit, chunk) index of this CTA's run
    nk: Any  # chunks in the run
    alpha_stride: Any
    wg: Any  # the 64-row block's row tile within the CTA (the consumer warpgroup when mt == 1)
    t: Any  # thread in the warpgroup
    run: Any  # this CTA's run (blockIdx.x, or its cluster's index)
    rank: Any  # CTA in the cluster (0 without clusters): row tile unit * cluster + rank
    bid_m: Any
    thr_mma: Any  # this thread's slice of the tiled MMA (accumulator coordinates)


class StreamKEpilogue:
    """Needs self.bn, self.bm, self.row_tiles, self.cluster, self.hoist_alpha, self.skip_epilogue
    (set by the kernel class). Each call handles one 64-row block's accumulator; epi.wg is that
    block's row tile within the CTA. `tile` arguments are units (row tiles, or pairs of them)."""

    @cute.jit
    def _slot(self, c, epi):
        """This thread's first fp32 of run c's workspace slot for this CTA's rank (its words are
        _WG * 4 bytes apart)."""
        e = epi
        nv = self.bm * self.bn // (_WG * self.row_tiles)
        cta = (Int64(e.bid_m) * Int64(e.runs) + Int64(c)) * self.cluster + Int64(e.rank)
        slot = cta * (self.bm * self.bn * 4)
        return Int64(e.ws_addr) + slot + Int64(e.wg) * (nv * _WG * 4) + Int64(e.t) * 4

    @cute.jit
    def _first_row(self, tile, epi):
        """First output row of this 64-row block of unit `tile`."""
        return ((tile * self.cluster + epi.rank) * self.row_tiles + epi.wg) * ROW_TILE

    @cute.jit
    def flush(self, acc, g, epi):
        """A piece ends at chunk g (its lowest): store a whole tile, park a piece whose tile goes
        on past this run; the closing piece (the run's last) stays in acc for finish()."""
        if cutlass.const_expr(self.skip_epilogue):  # dev probe: no fix-up, no stores
            self.keep_alive(acc, epi)
            return
        e = epi
        tile = g // e.k_chunks
        t0 = tile * e.k_chunks
        if t0 + e.k_chunks > e.g_begin + e.nk:
            base = self._slot(e.run, epi)
            for v in cutlass.range_constexpr(cute.size(acc)):
                st_relaxed_f32(base + v * _WG * 4, acc[v])
        else:
            if t0 >= e.g_begin:
                self.store(acc, tile, epi)

    @cute.jit
    def finish(self, acc, epi):
        """After the run: if it began inside a row tile that ends within it, close that tile."""
        if cutlass.const_expr(self.skip_epilogue):
            self.keep_alive(acc, epi)
            return
        e = epi
        tile = e.g_begin // e.k_chunks
        t0 = tile * e.k_chunks
        if (t0 < e.g_begin) & (t0 + e.k_chunks <= e.g_begin + e.nk):
            c_first = ((t0 + 1) * e.runs - 1) // e.total  # the run owning the tile's chunk 0
            self.reduce(acc, tile, c_first, epi)

    @cute.jit
    def keep_alive(self, acc, epi):
        """Dev probe 5: a store the compiler cannot prove dead (alpha_stride is 0 or 1 at run time),
        so the MMAs feeding acc are not removed with the epilogue."""
        if cutlass.const_expr(self.probe == 5):
            if epi.alpha_stride == 12345:
                self.store(acc, Int32(0), epi)

    @cute.jit
    def reduce(self, acc, tile, c_first, epi):
        """out = sum of runs c_first..run-1's parked partials (in run order) + acc, stored."""
        e = epi
        nv = cute.size(acc)
        coords = e.thr_mma.partition_C(cute.make_identity_tensor((ROW_TILE, self.bn)))
        grp = min(8, nv)  # running sums in groups of 8: no second full accumulator
        # Decode tiles have ~3-7 pieces: load up to 8 at once (one L2 round trip per poll).
        batch = 8 if self.bn <= 32 else 4
        tot = cute.make_rmem_tensor((grp,), Float32)
        buf = cute.make_rmem_tensor((batch * grp,), Float32)
        origin = self.thread_origin(coords, tile, epi) if self.hoist_alpha else None
        for v0 in cutlass.range_constexpr(0, nv, grp):
            tot.fill(0.0)
            for c0 in cutlass.range(c_first, e.run, batch, unroll=1):
                # Poll the whole batch until no word is empty: the peers finish about when we do,
                # and re-polling word by word would cost a round trip per late word.
                missing = self._load_batch(buf, c0, v0, grp, batch, epi)
                polls = Int32(0)
                while missing > 0:
                    polls = polls + 1
                    if polls > _MAX_POLLS:  # a partial never came: fail loudly, do not hang
                        trap()
                    missing = self._load_batch(buf, c0, v0, grp, batch, epi)
                for b in cutlass.range_constexpr(batch):
                    if c0 + b < e.run:
                        pc = self._slot(c0 + b, epi)
                        for j in cutlass.range_constexpr(grp):
                            tot[j] = tot[j] + buf[b * grp + j]
                            st_relaxed_u32(pc + (v0 + j) * _WG * 4, Int32(SLOT_EMPTY_BITS - (1 << 32)))
            for j in cutlass.range_constexpr(grp):
                self.store_value(tot[j] + acc[v0 + j], coords, v0 + j, tile, origin, epi)

    @cute.jit
    def _load_batch(self, buf, c0, v0, grp, batch, epi):
        """Load words v0..v0+grp of pieces c0..c0+batch-1 (past run-1: that piece again, not
        summed); returns how many are still empty."""
        missing = Int32(0)
        for b in cutlass.range_constexpr(batch):
            pc = self._slot(cutlass.min(c0 + b, epi.run - 1), epi)
            for j in cutlass.range_constexpr(grp):
                buf[b * grp + j] = ld_relaxed_f32(pc + (v0 + j) * _WG * 4)
        for i in cutlass.range_constexpr(batch * grp):
            missing = missing + bits_equal(buf[i], SLOT_EMPTY_BITS)
        return missing

    @cute.jit
    def thread_origin(self, coords, tile, epi):
        """Where this thread's first value of the block lands, and 2^7 * alpha of its two rows:
        (row0, tok0, address of out[tok0, row0], scale of row0, scale of row0 + 8).

        A thread's accumulator values lie on two rows of its 64-row block, g and g + 8 (wgmma's C
        fragment), so alpha is read twice per tile, not per value: with a load inside each value's
        bounds check every store waited on it, and the epilogue took ~10% of a prefill GEMM (dev
        probe 5, benchmarks/notes_gemm.md). Rows past N read alpha[N - 1]; their stores are skipped.
        """
        e = epi
        r0, c0 = coords[0]
        row0 = self._first_row(tile, e) + r0
        tok0 = e.bid_m * self.bn + c0
        scales = []
        for d in (0, 8):
            row = cutlass.min(row0 + d, e.n - 1)
            a = ld_nc_f32(Int64(e.alpha_addr) + Int64(row * e.alpha_stride) * 4)
            scales.append(a * Float32(2.0**SCALE_BIAS_LOG2))
        addr0 = Int64(e.out_addr) + (Int64(tok0) * Int64(e.n) + Int64(row0)) * 2
        return row0, tok0, addr0, scales[0], scales[1]

    @cute.jit
    def store(self, vals, tile, epi):
        coords = epi.thr_mma.partition_C(cute.make_identity_tensor((ROW_TILE, self.bn)))
        origin = self.thread_origin(coords, tile, epi) if self.hoist_alpha else None
        for v in cutlass.range_constexpr(cute.size(vals)):
            self.store_value(vals[v], coords, v, tile, origin, epi)

    @cute.jit
    def store_value(self, value, coords, v, tile, origin, epi):
        """Store accumulator value v (coords: the thread's accumulator coordinates)."""
        if cutlass.const_expr(self.hoist_alpha):
            self.store_one(value, coords[v], coords[0], origin, epi)
        else:
            self.store_one_loaded(value, coords[v], tile, epi)

    @cute.jit
    def store_one(self, value, coord, coord0, origin, epi):
        """out[tok, row] = bf16(value * 2^7 * alpha[row]) if row < n and tok < m, for the value at
        accumulator coordinate `coord` (coord0: the thread's first; origin: thread_origin). The
        offsets from coord0 fold to constants; value * (2^7 alpha) rounds as (value * 2^7) * alpha."""
        e = epi
        row0, tok0, addr0, scale_lo, scale_hi = origin
        dr = coord[0] - coord0[0]
        dc = coord[1] - coord0[1]
        scale = Float32(cutlass.select_(dr == 0, scale_lo, scale_hi))
        keep = cutlass.select_((row0 + dr < e.n) & (tok0 + dc < e.m), Int32(1), Int32(0))
        st_bf16_if(addr0 + Int64(dc * e.n + dr) * 2, value * scale, Int32(keep))

    @cute.jit
    def store_one_loaded(self, value, coord, tile, epi):
        """store_one with alpha loaded per value inside the bounds check (bn <= 32, see the
        kernel's hoist_alpha)."""
        e = epi
        r, c = coord
        row = self._first_row(tile, e) + r
        tok = e.bid_m * self.bn + c
        if row < e.n:
            if tok < e.m:
                a = ld_nc_f32(Int64(e.alpha_addr) + Int64(row * e.alpha_stride) * 4)
                val = value * Float32(2.0**SCALE_BIAS_LOG2) * a
                st_bf16(Int64(e.out_addr) + (Int64(tok) * Int64(e.n) + Int64(row)) * 2, val)
