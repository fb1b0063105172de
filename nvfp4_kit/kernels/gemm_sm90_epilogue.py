"""Stream-K fix-up and epilogue of the SM90 W4A16 GEMM (a mixin of gemm_sm90_kernel's kernel class).

Each CTA streams its run of chunks [g_begin, g_end) from high to low, so the pieces it holds are, in
processing order: at most one "parked" piece (the run's high end, whose row tile goes on into
later CTAs), whole tiles (stored directly), and at most one "closing" piece (the run's low end,
which finishes a row tile begun by earlier CTAs). A parked piece's fp32 partials go to the CTA's
workspace slot as soon as it is done. The closing CTA keeps its piece in registers, loads the
parked partials of the tile's earlier CTAs, sums them in CTA order (deterministic) with its own,
and stores. The reducer (a tile's highest CTA) only waits for lower-numbered CTAs, which the
hardware dispatched before it (CUTLASS's stream-K relies on the same order), and only at the end of
its run, when its peers are done too. Two ways to know a partial has arrived, by tile size:

- Decode tiles (bn <= 32; a few words per thread, 3-7 pieces per tile): no counter, fence or
  atomic. Every workspace word holds SLOT_EMPTY_BITS (a NaN payload no fp32 arithmetic produces;
  GPUs write the canonical NaN 0x7fffffff) except between its one write and its one read within
  a launch, so a word's own value says whether it has arrived: publishing costs a store, the
  wait one L2 round trip per poll of a whole batch of pieces, and the reducer marks each word
  empty again. Measured on H100 (benchmarks/notes_gemm.md): a "last arrival sums" fix-up with a
  counter cost ~5 us per decode kernel, the counter version of this order ~2.5 us.
- Prefill tiles (bn >= 64, gemm_sm90_config.piece_flags; 32-128 words per thread, 2-6 pieces):
  re-marking every word would write as many bytes as the fix-up reads, all in the burst at the
  end of the runs. Instead each warp of a parking CTA releases one flag word per 64-row block
  (publish(): a warp barrier and one release store, after its partial stores have drained;
  every run publishes before it waits, so no chain forms). Without clusters (the default,
  `prefetch`) the flags go out one chunk after the parked piece, and the closing CTA's producer
  warp, once it has issued its run's last chunk, acquires them and bulk-copies the partials into
  the pipeline stages its consumers free (fetch_partials), so they cross L2 while the last
  chunks' MMAs run; the consumers add them from shared memory (finish_prefetched). Measured on
  H100: all closers reading 128 KB partials from L2 at once at the end of their runs cost 4-6 us
  at M = 512 (benchmarks/notes_gemm.md, v15). With clusters, flags go out at the end of the run
  and the reducer's warp acquires all pieces' flags at once and loads the partials from L2
  (reduce_flagged).

Workspace: (m_tiles, grid_x, slot_words) 32-bit words, one slot per CTA: bm * bn fp32 partials,
then (prefill tiles) FLAG_WORDS flags; at rest every decode word and every flag is SLOT_EMPTY_BITS.
The two protocols use separate workspaces (a prefill launch leaves stale partials behind).
With 2-CTA clusters a "CTA" above is a run (a cluster): its two CTAs hold pieces of the same
chunks of their own row tiles, so each tile's pieces, parking and closing follow the run's, and
slot (run, rank) is CTA run * 2 + rank's.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64
from cutlass.cute.nvgpu import cpasync

from .gemm_sm90_config import PIECE_FULL, SLOT_EMPTY_BITS, piece_flags, slot_words
from .gemm_sm90_layout import ROW_TILE, SCALE_BIAS_LOG2
from .gemm_sm90_ptx import (
    bits_equal,
    bulk_g2s,
    ld_acquire_u32,
    ld_nc_f32,
    ld_relaxed_f32,
    ld_shared_f32,
    mbar_try_wait_cluster,
    pack_bf16x2,
    st_async_peer_v4_f32,
    st_bf16,
    st_bf16_if,
    st_relaxed_f32,
    st_relaxed_u32,
    st_release_u32,
    stmatrix_x4_trans,
    trap,
)

__all__ = ["EpilogueArgs", "StreamKEpilogue"]

_WG = 128
# Polls (one L2 round trip each, ~0.5-1 us) before a reducer gives up on a parked partial: seconds,
# never reached when the workspace is used as documented (one stream-K GEMM at a time per device).
_MAX_POLLS = 1 << 23
_EPI_BARRIER = 1  # named barrier of the consumer warpgroups in the staged epilogue (0: __syncthreads)
_EMPTY_I32 = SLOT_EMPTY_BITS - (1 << 32)  # the flag values as signed 32-bit words
_FULL_I32 = PIECE_FULL - (1 << 32)


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
    # staged epilogue (kernel.staged_store; None / 0 without)
    stage_base: Any = None  # 32-bit shared address of stage 0's activations
    s_out: Any = None  # the stages as out tiles (bn, bm, stage * bk // bm), 128-byte swizzled
    store_atom: Any = None
    tma_out: Any = None
    out_tma_ok: Any = None  # 0: out is not 16-byte aligned (pitch or base), store directly
    # dsmem_split (kernel.dsmem_split > 1; 0 without): 32-bit shared addresses of this CTA's
    # mbarrier and landing slots for the peers' partials
    red_bar: Any = None
    red_base: Any = None
    stamps: Any = None  # dev probe 13: this CTA's timeline slots (gemm_sm90_kernel.TIMELINE_STAMPS)


class StreamKEpilogue:
    """Needs self.bn, self.bm, self.mt, self.row_tiles, self.cluster, self.dsmem_split,
    self.closer_bias, self.x_stage_bytes, self.hoist_alpha, self.skip_epilogue, self.staged_store,
    self.probe, self.publish_after, release_stage() and stamp() (set by the kernel class). Each call
    handles one 64-row block's accumulator (fetch_partials and finish_prefetched: all of them); epi.wg
    is that block's row tile within the CTA. `tile` arguments are units (row tiles, or pairs of them)."""

    @cute.jit
    def _slot_base(self, c, epi):
        """Address of run c's workspace slot for this CTA's rank."""
        e = epi
        return self._slot_base_of(e.ws_addr, e.bid_m, e.runs, e.rank, c)

    @cute.jit
    def _slot_base_of(self, ws_addr, bid_m, runs, rank, c):
        cta = (Int64(bid_m) * Int64(runs) + Int64(c)) * self.cluster + Int64(rank)
        return Int64(ws_addr) + cta * (slot_words(self.bm, self.bn) * 4)

    @cute.jit
    def _slot(self, c, epi):
        """This thread's first fp32 of run c's workspace slot for this CTA's rank (its words are
        _WG * 4 bytes apart)."""
        e = epi
        nv = self.bm * self.bn // (_WG * self.row_tiles)
        return self._slot_base(c, e) + Int64(e.wg) * (nv * _WG * 4) + Int64(e.t) * 4

    @cute.jit
    def _flag(self, c, epi):
        """Run c's flag for this thread's warp of its 64-row block (piece_flags tiles)."""
        e = epi
        return self._flag_of(self._slot_base(c, e), e.wg, e.t // 32)

    @cute.jit
    def _flag_of(self, slot_base, block, warp):
        """The flag of warp `warp` (0..3; or 4 block + warp with block 0) of 64-row block `block` in
        a slot, after its bm x bn partials."""
        return slot_base + (self.bm * self.bn + block * 4 + warp) * 4

    @cute.jit
    def _first_row(self, tile, epi):
        """First output row of this 64-row block of unit `tile`."""
        return ((tile * self.cluster + epi.rank) * self.row_tiles + epi.wg) * ROW_TILE

    @cute.jit
    def flush(self, acc, g, epi, stage=None):
        """A piece ends at chunk g (its lowest): store a whole tile, park a piece whose tile goes
        on past this run; the closing piece (the run's last) stays in acc for finish()."""
        if cutlass.const_expr(self.skip_epilogue):  # dev probe: no fix-up, no stores
            self.keep_alive(acc, epi)
            return
        e = epi
        tile = g // e.k_chunks
        t0 = tile * e.k_chunks
        if t0 + e.k_chunks > e.g_begin + e.nk:
            if cutlass.const_expr(self.probe not in (8, 9)):
                if cutlass.const_expr(self.dsmem_split > 1):
                    self.send_partial(acc, epi)
                else:
                    base = self._slot(e.run, epi)
                    for v in cutlass.range_constexpr(cute.size(acc)):
                        st_relaxed_f32(base + v * _WG * 4, acc[v])
        else:
            if t0 >= e.g_begin:
                self.store(acc, tile, epi, stage)

    @cute.jit
    def publish_step(self, epi):
        """The run's step (chunk index in processing order) after which publish() runs: the end
        of the run (nk) by default, or publish_after chunks after the parked piece (the run's
        first) ends."""
        e = epi
        at = e.nk
        if cutlass.const_expr(self.publish_after >= 0):
            end = e.g_begin + e.nk
            top = (end - 1) // e.k_chunks * e.k_chunks  # first chunk of the run's highest tile
            at = cutlass.min(end - cutlass.max(top, e.g_begin) - 1 + self.publish_after, e.nk)
        return at

    @cute.jit
    def publish(self, epi):
        """piece_flags tiles, at publish_step() (publish_after chunks after the parked piece, or
        the end of the run): if the run parked a piece (its high end's tile goes on past the run),
        this warp releases the piece's flag for its block. Every lane's partial stores are ordered
        before the flag by the warp barrier and the release."""
        if cutlass.const_expr(piece_flags(self.bn) and not self.skip_epilogue and self.probe not in (9, 10)):
            e = epi
            end = e.g_begin + e.nk
            if (e.nk > 0) & (((end - 1) // e.k_chunks + 1) * e.k_chunks > end):
                cute.arch.sync_warp()
                if e.t % 32 == 0:
                    st_release_u32(self._flag(e.run, e), Int32(_FULL_I32))

    @cute.jit
    def finish(self, acc, epi, stage=None):
        """After the run (and publish() of every block): if it began inside a row tile that ends
        within it, close that tile."""
        if cutlass.const_expr(self.skip_epilogue):
            self.keep_alive(acc, epi)
            return
        e = epi
        closes, tile, t0 = self._closed_tile(e.g_begin, e.nk, e.k_chunks)
        if closes:
            if cutlass.const_expr(self.probe != 9):
                if cutlass.const_expr(self.dsmem_split > 1):
                    self.gather_partials(acc, epi)
                else:
                    self.reduce(acc, self._first_run(t0, e.total, e.runs, e.k_chunks), epi)
            if cutlass.const_expr(self.probe == 13):
                self.stamp(e.stamps, 5, e.t == 0)
            self.store(acc, tile, epi, stage)

    @cute.jit
    def _closed_tile(self, g_begin, nk, k_chunks):
        """(closes, tile, t0): whether the run [g_begin, g_begin + nk) begins inside a row tile that
        ends within it (the run closes it), that tile and its first chunk."""
        tile = g_begin // k_chunks
        t0 = tile * k_chunks
        return (t0 < g_begin) & (t0 + k_chunks <= g_begin + nk), tile, t0

    @cute.jit
    def _first_run(self, t0, total, runs, k_chunks):
        """The run whose chunks include t0 (a tile's chunk 0: the run holding the tile's first piece)."""
        r = ((t0 + 1) * runs - 1) // total  # (of the even cut)
        if cutlass.const_expr(self.closer_bias > 0):  # cuts move by less than half a run: one step
            if self._cut(r, total, runs, k_chunks) > t0:
                r = r - 1
            elif self._cut(r + 1, total, runs, k_chunks) <= t0:
                r = r + 1
        return r

    @cute.jit
    def _cut(self, r, total, runs, k_chunks):
        """First chunk of run r (r = runs: total): gemm_sm90_config.run_cuts, the even cut or, with
        closer_bias, each closing run widened by up to closer_bias chunks."""
        cut = r * total // runs
        if cutlass.const_expr(self.closer_bias > 0):
            b = cutlass.min(Int32(self.closer_bias), (total // runs - 1) // 2)
            if (r > 0) & (r < runs):
                below = self._closes_even(r - 1, total, runs, k_chunks)
                here = self._closes_even(r, total, runs, k_chunks)
                if (below != 0) & (here == 0):
                    cut = cut + b
                if (here != 0) & (below == 0):
                    cut = cut - b
        return cut

    @cute.jit
    def _closes_even(self, r, total, runs, k_chunks):
        """1 if run r of the even cut closes a row tile (_closed_tile of its chunks)."""
        g0 = r * total // runs
        closes, _tile, _t0 = self._closed_tile(g0, (r + 1) * total // runs - g0, k_chunks)
        return Int32(closes)

    @cute.jit
    def _take_flag(self, flag):
        """Wait until a piece flag is full (ld.acquire: this thread's later loads, and through a
        barrier its peers', see the partial it publishes), then set it back to rest."""
        state = ld_acquire_u32(flag)
        polls = Int32(0)
        while state != _FULL_I32:
            polls = polls + 1
            if polls > _MAX_POLLS:  # a partial never came: fail loudly, do not hang
                trap()
            state = ld_acquire_u32(flag)
        st_relaxed_u32(flag, Int32(_EMPTY_I32))

    @cute.jit
    def fetch_partials(
        self, x_pipe, prod, stage_base, ws_addr, g_begin, nk, k_chunks, total, runs, run, bid_m
    ):
        """Producer warp of a prefetch kernel, after its run's last chunk: if the run closes a
        tile, the parked partials of the tile's earlier runs stream into the pipeline's stages while
        the consumers finish their last chunks, one 64-row block per stage (a block's 64 x bn fp32
        partials are the bytes of a stage's bn x 128 bf16 activations), in the order
        finish_prefetched() reads them. Lane i acquires (and resets) flag i of a piece before its
        bulk copies are issued."""
        closes, _tile, t0 = self._closed_tile(g_begin, nk, k_chunks)
        if closes & (nk > 0):
            c_first = self._first_run(t0, total, runs, k_chunks)
            lane = cute.arch.lane_idx()
            block_bytes = self.x_stage_bytes
            for c in cutlass.range(c_first, run, unroll=1):
                base = self._slot_base_of(ws_addr, bid_m, runs, Int32(0), c)
                if lane < 4 * self.row_tiles:
                    self._take_flag(self._flag_of(base, 0, lane))  # lane = 4 block + warp
                cute.arch.sync_warp()
                # the partials were written by other CTAs' generic stores; the bulk copy reads them
                # through the async proxy
                cute.arch.fence_proxy("async.global")
                for b in cutlass.range_constexpr(self.row_tiles):
                    x_pipe.sync_object_empty.wait(prod.index, prod.phase)
                    bar = x_pipe.producer_get_barrier(prod)
                    with cute.arch.elect_one():
                        cute.arch.mbarrier_arrive_and_expect_tx(bar, block_bytes)
                        bulk_g2s(
                            stage_base + prod.index * block_bytes,
                            base + b * block_bytes,
                            block_bytes,
                            bar.toint(),
                        )
                    prod.advance()

    @cute.jit
    def finish_prefetched(self, accs, epis, x_pipe, read, release, epi):
        """finish() of a prefetch kernel, for all blocks of the warpgroup: the closing run adds the
        partials fetch_partials() staged, in run order (each warpgroup waits for and releases every
        stage; the block's owner reads it), and stores the tile through the last partial's stage.
        Entered with `release` at the last chunk's stage (still held)."""
        e = epi
        closes, tile, t0 = self._closed_tile(e.g_begin, e.nk, e.k_chunks)
        if closes:
            c_first = self._first_run(t0, e.total, e.runs, e.k_chunks)
            nv = cute.size(accs[0])
            for _c in cutlass.range(c_first, e.run, unroll=1):
                for b in cutlass.range_constexpr(self.row_tiles):
                    x_pipe.consumer_wait(read)
                    self.release_stage(x_pipe, release, e)  # the stage before: back to the producer
                    release.advance()
                    if e.wg == b // self.mt:
                        acc = accs[b % self.mt]
                        thr = e.stage_base + read.index * self.x_stage_bytes + e.t * 4
                        for v in cutlass.range_constexpr(nv):
                            acc[v] = acc[v] + ld_shared_f32(thr + v * _WG * 4)
                    read.advance()
            for acc, be in zip(accs, epis, strict=True):
                self.store(acc, tile, be, release.index)

    @cute.jit
    def keep_alive(self, acc, epi):
        """Dev probe 5: a store the compiler cannot prove dead (alpha_stride is 0 or 1 at run time),
        so the MMAs feeding acc are not removed with the epilogue (the direct store: the probe has no
        stage to stage through)."""
        if cutlass.const_expr(self.probe == 5):
            if epi.alpha_stride == 12345:
                self.store_direct(acc, Int32(0), epi)

    @cute.jit
    def reduce(self, acc, c_first, epi):
        """acc += the parked partials of runs c_first..run-1, summed in a fixed order (run order;
        decode tiles sum the partials first, prefill tiles add them to acc one by one)."""
        if cutlass.const_expr(piece_flags(self.bn)):
            self.reduce_flagged(acc, c_first, epi)
        else:
            self.reduce_sentinel(acc, c_first, epi)

    @cute.jit
    def reduce_flagged(self, acc, c_first, epi):
        """reduce() for piece_flags tiles. Lane i of the warp acquires piece c_first + i's flag
        (a tile has 2-6 pieces at prefill: one L2 round trip for all of them; the flags were
        published at the end of their runs, about when this one ended) and resets it; the warp
        barrier then orders every lane's loads after those acquires. (Not a relaxed poll + a
        fence.acq_rel, which also waits for the release store publish() has just issued: that
        form measured 0.5-1.2 us slower on o M = 128, qkv M = 128 and 512, same H100 and run.)
        The partials are added piece by piece (in run order, after the CTA's own: deterministic),
        `batch` words per L2 round trip."""
        e = epi
        if cutlass.const_expr(self.probe != 10):
            for c0 in cutlass.range(c_first, e.run, 32, unroll=1):  # (more than 32 pieces: small N, long K)
                c = c0 + e.t % 32
                if c < e.run:
                    self._take_flag(self._flag(c, e))
            cute.arch.sync_warp()
        if cutlass.const_expr(self.probe == 11):
            return
        nv = cute.size(acc)
        # buf + the tile's accumulator(s) fit the registers left after the main loop (ptxas)
        batch = min(nv, 64)
        buf = cute.make_rmem_tensor((batch,), Float32)
        for p in cutlass.range(c_first, e.run, unroll=1):
            pc = self._slot(p, e)
            for v0 in cutlass.range_constexpr(0, nv, batch):
                for j in cutlass.range_constexpr(batch):
                    buf[j] = ld_relaxed_f32(pc + (v0 + j) * _WG * 4)
                for j in cutlass.range_constexpr(batch):
                    acc[v0 + j] = acc[v0 + j] + buf[j]

    @cute.jit
    def reduce_sentinel(self, acc, c_first, epi):
        """reduce() for decode tiles: each word's own value says whether it has arrived."""
        e = epi
        nv = cute.size(acc)
        # Running sums in groups of `grp` values (no second full accumulator), `batch` pieces'
        # words loaded at once: each (group, batch) costs one L2 round trip at the end of the
        # closing CTA's run, on the kernel's critical path (decode tiles have ~3-7 pieces).
        grp, batch = min(8, nv), 8
        tot = cute.make_rmem_tensor((grp,), Float32)
        buf = cute.make_rmem_tensor((batch * grp,), Float32)
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
                            st_relaxed_u32(pc + (v0 + j) * _WG * 4, Int32(_EMPTY_I32))
            for j in cutlass.range_constexpr(grp):
                acc[v0 + j] = tot[j] + acc[v0 + j]

    @cute.jit
    def _red_slot(self, part, v4, epi):
        """Shared address of this thread's values 4 v4 .. 4 v4 + 3 in landing slot `part` (16 bytes
        per thread, consecutive threads adjacent: conflict-free)."""
        nv4 = self.bm * self.bn // (_WG * 4)
        return epi.red_base + ((part * nv4 + v4) * _WG + epi.t) * 16

    @cute.jit
    def send_partial(self, acc, epi):
        """dsmem_split: a lower piece of the row tile (CTA `part` < d - 1 of the cluster) goes into
        landing slot `part` of the cluster's last CTA, which holds the tile's last chunks and
        closes it. st.async completes its bytes on that CTA's mbarrier; nothing here waits."""
        e = epi
        part = e.run % self.dsmem_split  # the cluster is (d, 1, 1) over runs = blockIdx.x
        for v4 in cutlass.range_constexpr(cute.size(acc) // 4):
            vals = [acc[4 * v4 + j] for j in range(4)]
            st_async_peer_v4_f32(self._red_slot(part, v4, e), e.red_bar, Int32(self.dsmem_split - 1), *vals)

    @cute.jit
    def gather_partials(self, acc, epi):
        """dsmem_split, in the closing CTA: wait until all d - 1 peers' partials have landed (the
        mbarrier counts their bytes), then add them in part order (deterministic)."""
        e = epi
        done = mbar_try_wait_cluster(e.red_bar, 0)
        polls = Int32(0)
        while done == 0:
            polls = polls + 1
            if polls > _MAX_POLLS:  # a peer's partial never came: fail loudly, do not hang
                trap()
            done = mbar_try_wait_cluster(e.red_bar, 0)
        for part in cutlass.range_constexpr(self.dsmem_split - 1):
            for v in cutlass.range_constexpr(cute.size(acc)):
                acc[v] = acc[v] + ld_shared_f32(self._red_slot(part, v // 4, e) + (v % 4) * 4)

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
    def store(self, vals, tile, epi, stage=None):
        """out[tile's tokens, tile's rows] = bf16(vals * 2^7 * alpha[row]): staged through shared
        memory and one TMA store where the kernel has the staged epilogue and out allows it."""
        if cutlass.const_expr(self.staged_store):
            if epi.out_tma_ok != 0:
                self.store_staged(vals, tile, epi, stage)
            else:
                self.store_direct(vals, tile, epi)
        else:
            self.store_direct(vals, tile, epi)

    @cute.jit
    def store_staged(self, vals, tile, epi, stage):
        """The staged epilogue. The stage's activations are dead once every consumer warpgroup's
        wgmmas on it have completed (each waited for its own; the barrier joins them). A thread's
        accumulator values of n8 block j are rows g, g + 8 x tokens 8j + 2c, 8j + 2c + 1 (wgmma's C
        fragment, lane 4g + c): as bf16x2 words they are the mma fragments of two 8x8 matrices per
        block, which stmatrix.trans writes token-major, 16 bytes (8 rows) per token: the out tile
        (bn tokens x bm rows) in the layout of an activation stage (tokens at 128 bytes, 16-byte
        column q at q ^ (token % 8) of a 128-byte-swizzled 64-row half; the warpgroup's 64 rows
        are half epi.wg). One thread then stores the tile by TMA, which also drops the rows past N
        and tokens past M. The stage goes back to the producer only after the TMA has read it
        (release_stage)."""
        e = epi
        cute.arch.barrier(barrier_id=_EPI_BARRIER, number_of_threads=_WG * self.row_tiles)
        coords = e.thr_mma.partition_C(cute.make_identity_tensor((ROW_TILE, self.bn)))
        _row0, _tok0, _addr0, scale_lo, scale_hi = self.thread_origin(coords, tile, e)
        lane = e.t % 32
        mat, k = lane // 8, lane % 8  # this lane addresses row k of matrix `mat` of each stmatrix
        q = 2 * (e.t // 32) + mat % 2  # 16-byte column: the warp's 16 rows, upper 8 for odd matrices
        half = e.stage_base + stage * self.x_stage_bytes + e.wg * (self.x_stage_bytes // 2)
        thr = half + (8 * (mat // 2) + k) * 128 + ((q ^ k) << 4)
        for v0 in cutlass.range_constexpr(0, cute.size(vals), 8):  # n8 blocks j, j + 1
            words = [
                pack_bf16x2(vals[v0 + 4 * b + 2 * h] * sc, vals[v0 + 4 * b + 2 * h + 1] * sc)
                for b in range(2)
                for h, sc in ((0, scale_lo), (1, scale_hi))
            ]
            stmatrix_x4_trans(thr + (v0 // 4) * 1024, words)
        cute.arch.fence_proxy("async.shared", space="cta")  # generic-proxy writes -> TMA reads
        cute.arch.barrier(barrier_id=_EPI_BARRIER, number_of_threads=_WG * self.row_tiles)
        if (e.wg == 0) & (e.t == 0):
            s_tile = e.s_out[(None, None, stage * (self.bk // self.bm))]
            g_tile = cute.local_tile(e.tma_out, (self.bn, self.bm), (e.bid_m, tile * self.cluster + e.rank))
            src, dst = cpasync.tma_partition(
                e.store_atom,
                0,
                cute.make_layout(1),
                cute.group_modes(s_tile, 0, 2),
                cute.group_modes(g_tile, 0, 2),
            )
            cute.copy(e.store_atom, src, dst)
            cute.arch.cp_async_bulk_commit_group()

    @cute.jit
    def wait_staged_reads(self, epi):
        """The TMA-issuing thread waits until its stores have read shared memory."""
        if (epi.wg == 0) & (epi.t == 0):
            cute.arch.cp_async_bulk_wait_group(0, read=True)

    @cute.jit
    def store_direct(self, vals, tile, epi):
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
