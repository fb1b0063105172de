"""Stream-K fix-up and epilogue of the SM90 W4A16 GEMM (a mixin of gemm_sm90_kernel's kernel class).

A CTA that ends its run on a row tile either owns the whole tile (direct epilogue) or holds one
piece of it: it stores its fp32 partial into its workspace slot (slot 0: the piece that starts the
CTA's run, slot 1: the piece that starts at a tile boundary; at most two partial pieces per CTA),
and bumps the tile's counter. The piece that arrives last sums every piece in CTA order (so the
result does not depend on arrival order), resets the counter to 0 for the next launch and stores.
Workspace: (m_tiles, grid_x, 2, bm * bn) fp32; counters: (m_tiles, n_tiles) int32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64

from .gemm_sm90_layout import ROW_TILE, SCALE_BIAS_LOG2
from .gemm_sm90_ptx import atomic_add_acq_rel, ld_cg_f32, ld_nc_f32, st_bf16, st_cg_f32, st_relaxed_u32

__all__ = ["EpilogueArgs", "StreamKEpilogue"]

_WG = 128
_PIECE_BATCH = 4  # stream-K pieces whose partials are loaded at once by the fix-up


class EpilogueArgs(NamedTuple):
    """What the fix-up and the stores read: kernel arguments and this thread's coordinates."""

    flag: Any  # shared int32[4]: thread 0 broadcasts the counter's old value through it
    alpha_addr: Any
    out_addr: Any
    ws_addr: Any
    sem_addr: Any
    m: Any
    n: Any
    n_tiles: Any
    k_chunks: Any
    total: Any
    grid_x: Any
    g_begin: Any  # first chunk of this CTA's run
    alpha_stride: Any
    tidx: Any
    wg: Any  # consumer warpgroup
    t: Any  # thread in the warpgroup
    bid_x: Any
    bid_m: Any
    thr_mma: Any  # this thread's slice of the tiled MMA (accumulator coordinates)


class StreamKEpilogue:
    """Needs self.bn, self.bm, self.wgs (set by the kernel class)."""

    @cute.jit
    def flush(self, acc, g, epi):
        """End of this CTA's run on row tile g // Kc: store it, or fix it up with the other pieces."""
        e = epi
        flag, ws_addr, sem_addr, thr_mma = e.flag, e.ws_addr, e.sem_addr, e.thr_mma
        n_tiles, k_chunks, total, grid_x, g_begin = e.n_tiles, e.k_chunks, e.total, e.grid_x, e.g_begin
        tidx, wg, t, bid_x, bid_m = e.tidx, e.wg, e.t, e.bid_x, e.bid_m
        tile = g // k_chunks
        t0 = tile * k_chunks  # first chunk of the tile
        # CTA owning chunk g: the c with c*T//G <= g < (c+1)*T//G, i.e. ((g+1)*G - 1) // T
        c_first = ((t0 + 1) * grid_x - 1) // total
        c_last = ((t0 + k_chunks) * grid_x - 1) // total
        if c_first == c_last:  # the whole row tile is ours
            self.store(acc, tile, epi)
        else:
            nv = cute.size(acc)
            slot_bytes = self.bm * self.bn * 4
            wg_off = Int64(wg) * (nv * _WG * 4) + Int64(t) * 4
            my_slot = Int32(0)  # slot 0: the piece that starts this CTA's run
            if g_begin < t0:
                my_slot = Int32(1)
            base = (
                Int64(ws_addr)
                + ((Int64(bid_m) * Int64(grid_x) + Int64(bid_x)) * 2 + my_slot) * slot_bytes
                + wg_off
            )
            for v in cutlass.range_constexpr(nv):
                st_cg_f32(base + v * _WG * 4, acc[v])
            # grid.sync's pattern: the CTA barrier orders every thread's partial before thread 0's
            # gpu-scope fence (cumulative), which publishes them all before the counter bump;
            # one membar per CTA instead of one per thread (ncu: Stall Membar was 13% of issue).
            cute.arch.barrier(barrier_id=1, number_of_threads=_WG * self.wgs)
            counter = Int64(sem_addr) + (Int64(bid_m) * Int64(n_tiles) + Int64(tile)) * 4
            if tidx == 0:
                cute.arch.fence_acq_rel_gpu()
                flag[0] = atomic_add_acq_rel(counter, Int32(1))
                cute.arch.fence_acq_rel_gpu()
            cute.arch.barrier(barrier_id=1, number_of_threads=_WG * self.wgs)
            if flag[0] == c_last - c_first:  # last piece in: reduce in CTA order (L2 loads)
                coords = thr_mma.partition_C(cute.make_identity_tensor((ROW_TILE, self.bn)))
                grp = min(8, nv)  # running sums in groups of 8: no second full accumulator
                tot = cute.make_rmem_tensor((grp,), Float32)
                # The loads of _PIECE_BATCH pieces are issued together, then summed in CTA order:
                # one L2 round trip per batch instead of one per piece (a decode tile has ~7).
                buf = cute.make_rmem_tensor((_PIECE_BATCH * grp,), Float32)
                for v0 in cutlass.range_constexpr(0, nv, grp):
                    tot.fill(0.0)
                    for c0 in cutlass.range(c_first, c_last + 1, _PIECE_BATCH, unroll=1):
                        for b in cutlass.range_constexpr(_PIECE_BATCH):
                            c = cutlass.min(c0 + b, c_last)  # past the end: a reload, not summed
                            slot = Int32(0)
                            if c * total // grid_x < t0:
                                slot = Int32(1)
                            pc = (
                                Int64(ws_addr)
                                + ((Int64(bid_m) * Int64(grid_x) + Int64(c)) * 2 + slot) * slot_bytes
                                + wg_off
                            )
                            for j in cutlass.range_constexpr(grp):
                                buf[b * grp + j] = ld_cg_f32(pc + (v0 + j) * _WG * 4)
                        for b in cutlass.range_constexpr(_PIECE_BATCH):
                            if c0 + b <= c_last:
                                for j in cutlass.range_constexpr(grp):
                                    tot[j] = tot[j] + buf[b * grp + j]
                    for j in cutlass.range_constexpr(grp):
                        self.store_one(tot[j], coords[v0 + j], tile, epi)
                if tidx == 0:
                    st_relaxed_u32(counter, Int32(0))

    @cute.jit
    def store(self, vals, tile, epi):
        coords = epi.thr_mma.partition_C(cute.make_identity_tensor((ROW_TILE, self.bn)))
        for v in cutlass.range_constexpr(cute.size(vals)):
            self.store_one(vals[v], coords[v], tile, epi)

    @cute.jit
    def store_one(self, value, coord, tile, epi):
        """out[tok, row] = bf16(value * 2^7 * alpha[row]) if row < n and tok < m."""
        e = epi
        alpha_addr, out_addr, alpha_stride, m, n, wg, bid_m = (
            e.alpha_addr, e.out_addr, e.alpha_stride, e.m, e.n, e.wg, e.bid_m)
        r, c = coord
        row = (tile * self.wgs + wg) * ROW_TILE + r
        tok = bid_m * self.bn + c
        if row < n:
            if tok < m:
                a = ld_nc_f32(Int64(alpha_addr) + Int64(row * alpha_stride) * 4)
                val = value * Float32(2.0**SCALE_BIAS_LOG2) * a
                st_bf16(Int64(out_addr) + (Int64(tok) * Int64(n) + Int64(row)) * 2, val)
