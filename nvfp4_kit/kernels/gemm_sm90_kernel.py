"""The SM90 W4A16 GEMM kernel in CuTe DSL: out[M, N] = (x[M, K] @ dequant(W)[N, K].T) * alpha.

Design (Hopper, swap-AB, mixed input):
  1. Swap-AB: weight rows are wgmma's M (64 per consumer warpgroup, or two 64-row blocks with
     `mt` 2 for prefill), tokens its N (bn = 8..128), so a decode batch of 1..16 tokens still fills
     the 64-row MMA and a prefill CTA re-reads each activation tile for 256 weight rows, not 128.
  2. One producer warp (a whole warpgroup with mt 2, whose registers setmaxnreg hands to the
     consumers) fills a `stages`-deep mbarrier pipeline: per 128-wide K chunk, the packed
     weights of each 64-row tile (pre-shuffled so they are 4 KB + 512 B contiguous: two 1-D bulk
     copies, no tensor map) and the activation tile (TMA, zero-filled past M and K).
  3. Consumer warpgroups read their own 48 bytes per chunk from shared memory (conflict-free
     16-byte loads), dequantize in registers (gemm_sm90_ptx: e2m1 -> bf16 by bit placement, times
     the e4m3 scale, one bf16x2 multiply per 2 values) into wgmma's register A operand (RS wgmma);
     the activations are the shared-memory B operand. bn = 8 (decode) uses warp-level mma.sync on
     the same A registers instead (consume_sync: no wgmma issue/fence/wait per 1024 weights).
  4. Overlap of dequant and MMA (`per_step`): 2 (default) dequantizes chunk i+1 into a second A
     fragment while chunk i's 8 chained wgmmas run; 1 fences and issues per k16 step with 7 wgmmas
     in flight; 0 waits for each chunk. Measured within 3% of each other at decode (the data
     path dominates there); 2 is up to 15% faster at M >= 128 (benchmarks/notes_gemm.md).
  5. PDL (`pdl`): the first `stages` weight chunks are requested before griddepcontrol.wait, so
     they stream in while the previous kernel finishes; x and every global write come after it.
  6. Stream-K: per token tile, the T = n_tiles * Kc (row tile, K chunk) pairs are cut into
     `grid.x` = G runs [c*T//G, (c+1)*T//G), one per CTA, so every SM streams the same number of
     weight bytes (+-1 chunk) whatever N and K are (or runs of whole tiles where they cost little
     more: gemm_sm90_config). A CTA walks its run from high to low chunks.
     A row tile cut between CTAs is fixed up deterministically by its highest CTA, which waits at
     the end of its run for the lower CTAs' parked partials (gemm_sm90_epilogue: per-word
     arrival for decode tiles, per-warp flags for prefill tiles, whose partials the closing CTA's
     producer prefetches into freed pipeline stages while the last chunks run).
  7. Epilogue (gemm_sm90_epilogue): acc * 2^7 * alpha[row] (alpha [1] or [N] by a run-time
     stride), RN to bf16. Prefill tiles (bn >= 64) go as bf16x2 into the stage their last chunk
     freed (stmatrix.trans: swap-AB puts tokens on the accumulator's N side, out is token-major)
     and out by one TMA store per 64-row block; decode tiles, and an out whose base or row pitch
     is not 16-byte aligned, use 2-byte stores.
  8. 2-CTA clusters (`cluster` 2; shipped for bn 64): the stream-K unit is a pair of neighbouring row tiles;
     the cluster's CTAs walk the same run of chunks, each on its own row tile of the pair, and
     each TMA-loads half of the shared activation tile, multicast into both CTAs' stage. A stage
     is refilled only when the consumers of both CTAs have released it (each consumer warp arrives
     on both CTAs' empty barriers), and a producer waits for every stage to be released before
     its CTA exits, so no peer arrives on or writes into the shared memory of an exited CTA.
  9. DSMEM split-K (`dsmem_split` d, experimental, decode): no stream-K cut; the d CTAs of a cluster
     each take one part of a row tile's K chunks, and the lower parts' fp32 partials go by st.async
     into the shared memory of the CTA with the last part, whose mbarrier counts their bytes; it
     adds them in part order and stores. Peers only write into that CTA, which waits for all of
     them before it exits.

Constraints: K % 16 == 0 (x row stride 16-byte aligned for TMA), x/out contiguous; W prepared by
gemm_sm90_layout.prepare_weight (N padded to 128, K to 128). M, N, K and the grid are run time.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils as utils
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import BFloat16, Float32, Int32, Int64
from cutlass.cute.nvgpu import cpasync, warpgroup

from .gemm_sm90_config import piece_flags
from .gemm_sm90_epilogue import EpilogueArgs, StreamKEpilogue
from .gemm_sm90_layout import K_CHUNK, ROW_TILE, SCALE_GROUPS, STEPS
from .gemm_sm90_ptx import (
    bulk_g2s,
    dequant_step,
    ld_shared_v4,
    ldmatrix_x4,
    mbar_init_expect_tx,
    mma_bf16_m16n8k16,
    scale_pair,
    st_globaltimer,
)

__all__ = ["Sm90W4A16Kernel", "TIMELINE_STAMPS"]

# dev probe 13: what each CTA's stamps record (slot order; 8 u64 slots = 64 bytes per CTA)
TIMELINE_STAMPS = (
    "producer start",  # before the PDL weight loads
    "grid dep done",  # griddepcontrol.wait returned: the previous kernel's writes are visible
    "last issue",  # the producer has issued its run's last chunk
    "first data",  # consumer warp 0: the run's first stage has landed
    "main loop end",  # every chunk multiplied, parked pieces stored
    "fix-up done",  # closing runs only: the tile's parked partials summed
    "stored",  # the closing piece's outputs issued
)

_WG = 128  # threads per warpgroup
_W_CHUNK_BYTES = 2 * _WG * 16  # weight words of one 64-row tile x one K chunk
_S_CHUNK_BYTES = SCALE_GROUPS * 16  # scale codes of one 64-row tile x one K chunk (512 B)
_SYNC_ACCUMULATORS = 2  # mma.sync path: independent accumulators the k16 steps alternate over
# setmaxnreg split of the 64K registers of an SM (one CTA of 3 warpgroups): 128 x 40 + 256 x 232
_PRODUCER_REGS = 40
_CONSUMER_REGS = 232


class Sm90W4A16Kernel(StreamKEpilogue):
    """One compiled variant per (bn, wgs, stages); see gemm_sm90_config.GemmConfig."""

    def __init__(
        self, bn: int, wgs: int, stages: int, per_step: int = 2, pdl: bool = True, probe: int = 0,
        sync_mma: bool | None = None, mt: int = 1, cluster: int = 1, prefetch: bool | None = None,
        publish_after: int | None = None, sync_accumulators: int = _SYNC_ACCUMULATORS, dsmem_split: int = 1,
        closer_bias: int = 0,
    ):
        self.bn, self.wgs, self.stages, self.mt, self.cluster = bn, wgs, stages, mt, cluster
        # sync_mma: warp-level mma.sync m16n8k16 instead of wgmma (default for bn 8; at bn 16 it
        # measured 2-7% slower than wgmma before the v17 loop and 1-9% faster with it, H100,
        # benchmarks/notes_gemm.md v18: the default moves once a GPU has run its tests)
        self.sync_mma = (bn == 8) if sync_mma is None else sync_mma
        if self.sync_mma and bn > 32:  # bn 32 on mma.sync: a dev variant (notes_gemm.md v18)
            raise ValueError(f"bn={bn}: the mma.sync path serves bn 8, 16 and 32")
        if cluster not in (1, 2) or (cluster == 2 and self.sync_mma):
            raise ValueError(f"cluster={cluster}: 1, or 2 on the wgmma path")
        self.pdl = pdl
        # (dev probes) independent mma.sync accumulators the k16 steps alternate over: 2 ships
        if STEPS % sync_accumulators:
            raise ValueError(f"sync_accumulators={sync_accumulators}: a divisor of {STEPS}")
        self.sync_accumulators = sync_accumulators
        # (experimental) dsmem_split d > 1: clusters of d CTAs share each row tile's K chunks (the
        # grid is n_tiles * d runs, gemm_sm90_config.dsmem_split_grid); the d - 1 lower pieces go
        # by st.async into the shared memory of the CTA holding the tile's last chunks, which sums
        # them (gemm_sm90_epilogue.send_partial / gather_partials): no L2 round trip, no workspace.
        if dsmem_split > 1 and not (self.sync_mma and cluster == 1 and wgs == 1 and mt == 1):
            raise ValueError(f"dsmem_split={dsmem_split}: the mma.sync path with wgs 1, mt 1, cluster 1")
        if not 1 <= dsmem_split <= 8:
            raise ValueError(f"dsmem_split={dsmem_split}: 1..8 (portable cluster size)")
        self.dsmem_split = dsmem_split
        # (dev variant) closer_bias b > 0: uneven stream-K runs, each closing run widened by up to b
        # chunks (gemm_sm90_config.run_cuts), so the runs whose partials it sums end before it does
        if closer_bias and (bn > 32 or cluster != 1 or dsmem_split != 1):
            raise ValueError(f"closer_bias={closer_bias}: decode tiles (bn <= 32), no cluster, no dsmem")
        self.closer_bias = closer_bias
        # probe (benchmarks/dev_gemm_probe.py only; results are wrong): 1 = no wgmma,
        # 2 = no dequant and no wgmma (pure data movement through the pipeline), 3 = 2 without
        # the stream-K fix-up and stores, 4 = nothing but launch, pipeline init and exit,
        # 5 = the full kernel without the fix-up and stores, 6 = the full kernel with the packed
        # words themselves as A (no dequant arithmetic; wgmma path), 7 = a bf16 GEMM in the same
        # pipeline: SS wgmma with the activation stage's first 64 * wgs rows as A, 8 = the full
        # kernel without writing parked partials (flags still published; piece_flags tiles only),
        # 9 = the full kernel without the stream-K fix-up (no parking, no reduce), stores kept,
        # 10 = the full kernel whose closers load the parked partials without waiting for their
        # flags (none published), 11 = the flags published and waited for, no partials loaded,
        # 12 = the mma.sync path (bn 8) with its B operands from registers (no shared loads of x),
        # 13 = the full kernel (mma.sync, no clusters) writing a timeline: %globaltimer stamps of
        # each CTA (TIMELINE_STAMPS, u64) after the outputs, at out + round_up(m n 2 bytes, 64) +
        # 64 * CTA (the caller allocates the room)
        self.probe = probe
        # piece_flags tiles without clusters (default there; the probes keep the other path): the
        # closing run's producer bulk-copies the parked partials into the pipeline's stages while
        # the consumers run their last chunks (gemm_sm90_epilogue.fetch_partials)
        if prefetch is None:
            prefetch = piece_flags(bn) and cluster == 1 and probe == 0
        if prefetch and (not piece_flags(bn) or cluster != 1 or probe != 0):
            raise ValueError(f"prefetch: needs bn >= 64, cluster 1, probe 0; got {bn}, {cluster}, {probe}")
        self.prefetch = prefetch
        # piece_flags tiles: a parked piece's flags are released this many chunks after it (< 0: at
        # the end of the run). Default: 1 chunk with prefetch (its stores have drained by then, so
        # the release is cheap, and the closer's producer can fetch the partial before the closing
        # chunks end), else the end of the run.
        if publish_after is None:
            publish_after = 1 if prefetch else -1
        self.publish_after = publish_after
        if probe == 13 and not (self.sync_mma and cluster == 1 and dsmem_split == 1):
            raise ValueError("probe 13 (timeline) stamps the mma.sync path without clusters")
        if probe == 12 and not self.sync_mma:
            raise ValueError("probe 12 changes the mma.sync path's B operands: bn 8 (or sync_mma)")
        if probe in (8, 10, 11) and bn < 64:
            raise ValueError(f"probe {probe} changes the piece-flag fix-up: piece_flags tiles (bn >= 64)")
        if probe == 7 and (bn < ROW_TILE * wgs or mt != 1):
            raise ValueError("probe 7 reads the activation stage's first rows as the A tile: bn >= 64 * wgs")
        # Epilogue (gemm_sm90_epilogue): tiles of 64+ tokens read alpha once per row and store
        # predicated at folded offsets; bn <= 32 keeps the per-value load: with the hoisted form
        # the bn32 per_step-0 kernel ran 18-25% slower on H100 (gate_up M=32: 35.9 -> 43.3 us; its
        # main loop's SASS differs only in instruction order), bn 8/16 measured the same either way.
        self.hoist_alpha = bn >= 64
        self.skip_math = probe in (2, 3, 4)
        self.skip_epilogue = probe in (3, 4, 5)
        # per_step 1: fence + wgmma per k16 step, 7 in flight under each dequant;
        # 0: dequant the whole chunk, one fence, 8 chained wgmmas, wait for them;
        # 2: as 0 but two A fragments: the next chunk's dequant runs under this chunk's wgmmas.
        self.per_step = per_step
        if mt > 1 and (per_step != 0 or self.sync_mma):
            raise ValueError(f"mt={mt}: needs per_step 0 and the wgmma path (register budget)")
        self.row_tiles = wgs * mt  # 64-row weight tiles per CTA; warpgroup w owns w*mt .. w*mt+mt-1
        self.w_stage_bytes = self.row_tiles * (_W_CHUNK_BYTES + _S_CHUNK_BYTES)
        # a stage's bn x 128 bf16 activations (also one 64-row block's 64 x bn fp32 partials, or a
        # bn x 128 bf16 out tile: the stream-K prefetch and the staged epilogue reuse the stage)
        self.x_stage_bytes = bn * K_CHUNK * 2
        self.bm = ROW_TILE * self.row_tiles
        # dsmem_split: fp32 words of the closing CTA's d - 1 landing slots (one bm x bn partial each)
        self.landing_words = (dsmem_split - 1) * self.bm * bn
        self.bk = K_CHUNK
        self.producer_warp = 4 * wgs
        # mt 2 holds 2 accumulators + 2 A fragments (~210 registers per consumer thread, above the
        # 168 that 384 threads get by default): a whole producer warpgroup gives its registers to
        # the consumers with setmaxnreg (which acts per warpgroup).
        # bn 256 (prefill): a 64 x 256 fp32 accumulator is 128 registers per thread, plus one or
        # two 32-register A fragments; the same setmaxnreg split serves it.
        self.realloc_registers = mt > 1 or bn > 128
        # Staged epilogue (gemm_sm90_epilogue.store): a finished tile goes bf16 into the pipeline
        # stage its last chunk came through (bn x 128 activations = bn x bm outputs when bm <= 128)
        # by stmatrix.trans, then out by one TMA store; decode tiles (bn <= 32) store directly.
        self.staged_store = bn >= 64 and mt == 1 and not self.sync_mma
        self.num_threads = _WG * wgs + (_WG if self.realloc_registers else 32)

    def _mma(self):
        return sm90_utils.make_trivial_tiled_mma(
            BFloat16,
            BFloat16,
            warpgroup.OperandMajorMode.K,
            warpgroup.OperandMajorMode.K,
            Float32,
            (1, 1, 1),
            (ROW_TILE, self.bn),
            warpgroup.OperandSource.RMEM,
        )

    # ------------------------------------------------------------------ host side
    @cute.jit
    def __call__(
        self,
        x_ptr: cute.Pointer,  # bf16 [m, k] row-major, 16-byte aligned
        w_addr: Int64,  # int32 words (Nt, Kc, 2, 128, 4)
        s_addr: Int64,  # uint8 codes (Nt, Kc, 32, 16)
        alpha_addr: Int64,  # fp32 [1] or [n]
        out_addr: Int64,  # bf16 [m, n] row-major
        ws_addr: Int64,  # stream-K slots (m_tiles, grid_x, slot_words): gemm_sm90_epilogue
        m: Int32,
        n: Int32,
        k: Int32,
        k_chunks: Int32,  # K_pad / 128
        total: Int32,  # N_pad / (bm * cluster) * k_chunks: (unit, K chunk) pairs per token tile
        grid_x: Int32,  # CTAs per token tile: cluster x G stream-K runs, G <= total
        alpha_stride: Int32,  # 0 for a scalar alpha, 1 per row
        stream,
    ):
        k16 = cute.assume(k, divby=16)
        mX = cute.make_tensor(x_ptr, cute.make_layout((m, k16), stride=(k16, 1)))
        b_smem_staged = sm90_utils.make_smem_layout_b(
            utils.LayoutEnum.ROW_MAJOR, (self.bm, self.bn, self.bk), BFloat16, self.stages
        )
        b_smem_one = cute.slice_(b_smem_staged, (None, None, 0))
        if cutlass.const_expr(self.cluster > 1):
            x_op = cpasync.CopyBulkTensorTileG2SMulticastOp()
        else:
            x_op = cpasync.CopyBulkTensorTileG2SOp()
        tma_atom, tma_x = cpasync.make_tiled_tma_atom(
            x_op, mX, b_smem_one, (self.bn, self.bk), num_multicast=self.cluster
        )

        if cutlass.const_expr(self.staged_store):
            o_smem_staged, store_atom, tma_out, out_tma_ok = self._out_tma(out_addr, m, n)
        else:
            o_smem_staged, store_atom, tma_out, out_tma_ok = None, None, None, Int32(0)

        self.shared_storage = self._shared_storage(b_smem_staged)
        grid_y = (m + self.bn - 1) // self.bn
        self.kernel(
            tma_atom,
            tma_x,
            self._mma(),
            self._mma(),
            b_smem_staged,
            w_addr,
            s_addr,
            alpha_addr,
            out_addr,
            ws_addr,
            m,
            n,
            k_chunks,
            total,
            grid_x,
            alpha_stride,
            o_smem_staged,
            store_atom,
            tma_out,
            out_tma_ok,
        ).launch(
            grid=[grid_x, grid_y, 1],
            block=[self.num_threads, 1, 1],
            cluster=[self.cluster_size, 1, 1] if self.cluster_size > 1 else None,
            stream=stream,
            use_pdl=self.pdl,
            # setmaxnreg only acts on a kernel with a register cap at entry (minctasm 1)
            min_blocks_per_mp=1 if self.realloc_registers else 0,
        )

    @property
    def cluster_size(self) -> int:
        """CTAs per cluster: row-tile pairs (cluster) or a row tile's K split (dsmem_split)."""
        return self.cluster * self.dsmem_split

    def _shared_storage(self, b_smem_staged):
        """The CTA's shared memory: pipeline barriers, activation stages, weight stages; with
        dsmem_split, the closing CTA's landing slots for its peers' partials and their mbarrier.
        (Built from evaluated field types: this module's annotations are strings, which cute.struct
        resolves only inside a jit function's own scope.)"""
        w_bytes = self.stages * self.w_stage_bytes
        fields = {
            "bars": cute.struct.MemRange[cutlass.Int64, self.stages * 2],
            "sB": cute.struct.Align[cute.struct.MemRange[BFloat16, cute.cosize(b_smem_staged)], 1024],
            "sW": cute.struct.Align[cute.struct.MemRange[cutlass.Uint8, w_bytes], 128],
        }
        if self.dsmem_split > 1:
            fields["red_bar"] = cute.struct.MemRange[cutlass.Int64, 1]
            fields["red"] = cute.struct.Align[cute.struct.MemRange[Float32, self.landing_words], 16]
        return cute.struct(type("SharedStorage", (), {"__annotations__": fields}))

    @cute.jit
    def _out_tma(self, out_addr: Int64, m: Int32, n: Int32):
        """The staged epilogue's TMA store: out as an (m, n) tensor in (bn, bm) boxes from a
        128-byte-swizzled tile laid out like an activation stage. TMA needs a 16-byte aligned base
        and row pitch; where out has neither (n % 8, an offset view), out_tma_ok is 0, the map is
        built over an aligned stand-in that is never used, and the kernel stores directly."""
        o_smem_staged = sm90_utils.make_smem_layout_b(
            utils.LayoutEnum.ROW_MAJOR,
            (self.bm, self.bn, self.bm),
            BFloat16,
            self.stages * (self.bk // self.bm),
        )
        out_tma_ok = Int32(((n % 8) == 0) & ((out_addr % 16) == 0))
        n8 = cute.assume(cutlass.max(n - n % 8, 8), divby=8)
        out_ptr = cute.make_ptr(BFloat16, out_addr - out_addr % 16, cute.AddressSpace.gmem, assumed_align=16)
        m_out = cute.make_tensor(out_ptr, cute.make_layout((m, n8), stride=(n8, 1)))
        store_atom, tma_out = cpasync.make_tiled_tma_atom(
            cpasync.CopyBulkTensorTileS2GOp(),
            m_out,
            cute.slice_(o_smem_staged, (None, None, 0)),
            (self.bn, self.bm),
        )
        return o_smem_staged, store_atom, tma_out, out_tma_ok

    # ---------------------------------------------------------------- device side
    @cute.kernel
    def kernel(
        self,
        tma_atom: cute.CopyAtom,
        tma_x: cute.Tensor,
        mma_first: cute.TiledMma,  # step 0 of a chunk: overwrites acc when a piece starts (the
        # tile's last chunk)
        mma_acc: cute.TiledMma,  # steps 1..7: always accumulate
        b_smem_staged: cute.ComposedLayout,
        w_addr: Int64,
        s_addr: Int64,
        alpha_addr: Int64,
        out_addr: Int64,
        ws_addr: Int64,
        m: Int32,
        n: Int32,
        k_chunks: Int32,
        total: Int32,
        grid_x: Int32,
        alpha_stride: Int32,
        o_smem_staged,  # staged epilogue (None without): the out tile's layout in a stage
        store_atom,
        tma_out,
        out_tma_ok: Int32,
    ):
        tidx, _, _ = cute.arch.thread_idx()
        bid_x, bid_m, _ = cute.arch.block_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        if warp_idx == self.producer_warp:
            cpasync.prefetch_descriptor(tma_atom)

        # ---- this CTA's run of (unit, K chunk) pairs, linear index g = unit * Kc + kc; a unit is
        # a row tile, or with clusters a pair of them: CTA `rank` of the cluster takes row tile
        # unit * cluster + rank, over the same run as its peer
        if cutlass.const_expr(self.cluster > 1):
            run = bid_x // self.cluster
            rank = bid_x - run * self.cluster
            runs = grid_x // self.cluster
        else:
            run, rank, runs = bid_x, Int32(0), grid_x
        g_begin = self._cut(run, total, runs, k_chunks)
        nk = self._cut(run + 1, total, runs, k_chunks) - g_begin
        stamps = Int64(0)
        if cutlass.const_expr(self.probe == 13):
            stamps = (Int64(m) * Int64(n) * 2 + 63) // 64 * 64 + Int64(out_addr)
            stamps = stamps + (Int64(bid_m) * Int64(grid_x) + Int64(bid_x)) * 64
        g_last = g_begin + nk - 1  # runs are walked from high to low chunks: step i is g_last - i
        if cutlass.const_expr(self.probe == 4):
            nk = Int32(0)

        # ---- shared memory and the activation pipeline
        smem = utils.SmemAllocator()
        storage = smem.allocate(self.shared_storage)
        sB = storage.sB.get_tensor(b_smem_staged.outer, swizzle=b_smem_staged.inner)
        s_out = None
        if cutlass.const_expr(self.staged_store):
            s_out = storage.sB.get_tensor(o_smem_staged.outer, swizzle=o_smem_staged.inner)
        tx_bytes = cute.size_in_bytes(BFloat16, cute.slice_(b_smem_staged, (None, None, 0)))
        tx_bytes = tx_bytes + self.w_stage_bytes
        sw_base = storage.sW.data_ptr().toint()  # 32-bit shared address of the weight stages
        x_pipe = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.bars.data_ptr(),
            num_stages=self.stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
            # one arrival per consumer warp of every CTA that reads the stage's activations
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 4 * self.wgs * self.cluster),
            tx_count=tx_bytes,
            cta_layout_vmnk=cute.make_layout((1, self.cluster, 1, 1)),
            defer_sync=True,
        )
        red_bar, red_base = Int32(0), Int32(0)
        if cutlass.const_expr(self.dsmem_split > 1):
            red_bar = storage.red_bar.data_ptr().toint()
            red_base = storage.red.data_ptr().toint()
            if tidx == 0:  # (only the closing CTA's is used; every CTA has one)
                mbar_init_expect_tx(red_bar, Int32(self.landing_words * 4))
        # (clusters: the peer's barriers are initialized before anything multicasts or stores
        # into them)
        pipeline.pipeline_init_arrive(cluster_shape_mn=(self.cluster_size, 1), is_relaxed=True)
        pipeline.pipeline_init_wait(cluster_shape_mn=(self.cluster_size, 1))

        if warp_idx >= self.producer_warp:
            producer_args = (
                tma_atom, tma_x, sB, x_pipe, sw_base, w_addr, s_addr, k_chunks, nk, g_last, bid_m, rank,
                (ws_addr, total, runs, run), stamps,
            )
            if cutlass.const_expr(self.realloc_registers):
                cute.arch.setmaxregister_decrease(_PRODUCER_REGS)
                if warp_idx == self.producer_warp:  # the other 3 warps of the warpgroup just exit
                    self.produce(*producer_args)
            else:
                self.produce(*producer_args)
        else:
            if cutlass.const_expr(self.realloc_registers):
                cute.arch.setmaxregister_increase(_CONSUMER_REGS)
            # ================= consumer warpgroups: dequant + MMA =================
            wg = tidx // _WG
            t = tidx % _WG
            epi = EpilogueArgs(
                alpha_addr=alpha_addr,
                out_addr=out_addr,
                ws_addr=ws_addr,
                m=m,
                n=n,
                k_chunks=k_chunks,
                total=total,
                runs=runs,
                g_begin=g_begin,
                nk=nk,
                alpha_stride=alpha_stride,
                wg=wg,
                t=t,
                run=run,
                rank=rank,
                bid_m=bid_m,
                thr_mma=mma_acc.get_slice(t),
                stage_base=sB.iterator.toint(),
                s_out=s_out,
                store_atom=store_atom,
                tma_out=tma_out,
                out_tma_ok=out_tma_ok,
                red_bar=red_bar,
                red_base=red_base,
                stamps=stamps,
            )
            if cutlass.const_expr(self.sync_mma):
                self.consume_sync(sB, x_pipe, sw_base, epi)
            else:
                self.consume(mma_first, mma_acc, sB, x_pipe, sw_base, epi)

    @cute.jit
    def produce(
        self, tma_atom, tma_x, sB, x_pipe, sw_base, w_addr, s_addr, k_chunks, nk, g_last, bid_m, rank, fix_up,
        stamps,
    ):
        """Producer warp: per chunk of the run (high to low), the activation tile by TMA (with
        clusters: this CTA's half of it, multicast to both) and the weight chunks of every row tile
        by bulk copy, into one pipeline stage."""
        gX = cute.local_tile(tma_x, (self.bn, self.bk), (bid_m, None))  # (bn, bk, Kc)
        tXs, tXg = cpasync.tma_partition(
            tma_atom,
            rank,
            cute.make_layout(self.cluster),
            cute.group_modes(sB, 0, 2),
            cute.group_modes(gX, 0, 2),
        )
        prod = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.stages)
        start = Int32(0)
        self.stamp(stamps, 0, cute.arch.lane_idx() == 0)
        if cutlass.const_expr(self.pdl):
            # PDL: the weights do not depend on the kernel before us, so the first `stages`
            # chunks of them stream in before griddepcontrol.wait; x (and every later write:
            # workspace, out) waits for the previous grid.
            cute.arch.griddepcontrol_launch_dependents()
            start = cutlass.min(self.stages, nk)
            for i in cutlass.range(start, unroll=1):
                x_pipe.producer_acquire(prod)
                self.load_weights(
                    x_pipe.producer_get_barrier(prod),
                    prod.index,
                    g_last - i,
                    sw_base,
                    w_addr,
                    s_addr,
                    k_chunks,
                    rank,
                )
                prod.advance()
            cute.arch.griddepcontrol_wait()
            self.stamp(stamps, 1, cute.arch.lane_idx() == 0)
            first = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.stages)
            for i in cutlass.range(start, unroll=1):
                g = g_last - i
                kc = g - (g // k_chunks) * k_chunks
                bar = x_pipe.producer_get_barrier(first)
                self.load_x(tma_atom, tXg[(None, kc)], tXs[(None, first.index)], bar)
                first.advance()
        for i in cutlass.range(start, nk, unroll=1):
            g = g_last - i
            kc = g - (g // k_chunks) * k_chunks
            x_pipe.producer_acquire(prod)
            bar = x_pipe.producer_get_barrier(prod)
            self.load_x(tma_atom, tXg[(None, kc)], tXs[(None, prod.index)], bar)
            self.load_weights(bar, prod.index, g, sw_base, w_addr, s_addr, k_chunks, rank)
            x_pipe.producer_commit(prod)
            prod.advance()
        self.stamp(stamps, 2, cute.arch.lane_idx() == 0)
        if cutlass.const_expr(self.prefetch):
            ws_addr, total, runs, run = fix_up
            g_begin = g_last - nk + 1
            self.fetch_partials(
                x_pipe, prod, sB.iterator.toint(), ws_addr, g_begin, nk, k_chunks, total, runs, run, bid_m
            )
        if cutlass.const_expr(self.cluster > 1):
            # every stage released by both CTAs' consumers: no peer arrival or multicast is still
            # headed for this CTA's shared memory when it exits
            x_pipe.producer_tail(prod)

    @cute.jit
    def load_x(self, tma_atom, src, dst, bar):
        """The activation tile of one stage by TMA; with clusters this CTA's half, into both CTAs."""
        if cutlass.const_expr(self.cluster > 1):
            both = cutlass.Int16((1 << self.cluster) - 1)
            cute.copy(tma_atom, src, dst, tma_bar_ptr=bar, mcast_mask=both)
        else:
            cute.copy(tma_atom, src, dst, tma_bar_ptr=bar)

    @cute.jit
    def load_weights(self, bar, stage, g, sw_base, w_addr, s_addr, k_chunks, rank):
        """Bulk-copy chunk g's packed weights (4 KB) and scale codes (512 B) of each of the CTA's
        64-row tiles into pipeline stage `stage` (contiguous in gemm_sm90_layout's order)."""
        unit = g // k_chunks
        kc = g - unit * k_chunks
        tile = unit * self.cluster + rank
        dst = sw_base + stage * self.w_stage_bytes
        with cute.arch.elect_one():
            for j in cutlass.range_constexpr(self.row_tiles):
                lin = Int64(tile * self.row_tiles + j) * Int64(k_chunks) + Int64(kc)
                bulk_g2s(
                    dst + j * _W_CHUNK_BYTES,
                    Int64(w_addr) + lin * _W_CHUNK_BYTES,
                    _W_CHUNK_BYTES,
                    bar.toint(),
                )
                bulk_g2s(
                    dst + self.row_tiles * _W_CHUNK_BYTES + j * _S_CHUNK_BYTES,
                    Int64(s_addr) + lin * _S_CHUNK_BYTES,
                    _S_CHUNK_BYTES,
                    bar.toint(),
                )

    @cute.jit
    def thread_chunk_addrs(self, sw_base, epi):
        """Shared addresses of this thread's 2 x 16 weight bytes and 16 scale-code bytes in stage 0
        of row tile epi.wg (a block epi: block_epis)."""
        w_thr = sw_base + epi.wg * _W_CHUNK_BYTES + epi.t * 16
        # the 4 threads sharing rows g, g+8 read the same 16 bytes (layout: scale group 8w + l//4)
        s_group = 8 * (epi.t // 32) + (epi.t % 32) // 4
        s_thr = sw_base + self.row_tiles * _W_CHUNK_BYTES + epi.wg * _S_CHUNK_BYTES + s_group * 16
        return w_thr, s_thr

    def block_epis(self, epi):
        """One EpilogueArgs per 64-row block of this warpgroup, its `wg` the block's row tile in
        the CTA (what the epilogue and thread_chunk_addrs index by)."""
        if self.mt == 1:
            return [epi]
        return [epi._replace(wg=epi.wg * self.mt + b) for b in range(self.mt)]

    @cute.jit
    def read_chunk_words(self, wbuf, w_thr, s_thr, stage):
        """wbuf = this thread's 8 nibble words of the chunk in `stage`, then its scales as bf16x2
        pairs: wbuf[8 + 2 p + r] = (S of step 2p | S of step 2p + 1) of row g (r 0) or g + 8 (r 1),
        from bytes 2 (p % 2), +1 of code word 2 (p // 2) + r (one conversion per two steps)."""
        for slot in cutlass.range_constexpr(2):
            v = ld_shared_v4(w_thr + stage + slot * _WG * 16)
            for j in cutlass.range_constexpr(4):
                wbuf[4 * slot + j] = v[j]
        codes = ld_shared_v4(s_thr + stage)
        for p in cutlass.range_constexpr(STEPS // 2):
            for r in cutlass.range_constexpr(2):
                wbuf[8 + 2 * p + r] = scale_pair(codes[2 * (p // 2) + r], 2 * (p % 2))

    @cute.jit
    def consume(self, mma_first, mma_acc, sB, x_pipe, sw_base, epi):
        """Consumer warpgroups (bn >= 16): dequantized weights as the register A operand of wgmma.
        With mt 2 each warpgroup runs two 64-row blocks, each with its own accumulator and A
        fragment, through the same activation tile (the B operand)."""
        g_begin, nk, k_chunks = epi.g_begin, epi.nk, epi.k_chunks
        tCrB = mma_acc.make_fragment_B(epi.thr_mma.partition_B(sB))  # (MMA, MMA_N, 8 steps, STAGES)
        acc_shape = epi.thr_mma.partition_shape_C((ROW_TILE, self.bn))
        accs = [cute.make_rmem_tensor(acc_shape, Float32) for _ in range(self.mt)]
        for acc in accs:
            acc.fill(0.0)
        mma_acc.set(warpgroup.Field.ACCUMULATE, True)
        # A fragments per block (bf16, (8 values, 1, 8 k16 steps)); two sets when chunks are
        # software-pipelined.
        frags = [
            [cute.make_rmem_tensor(((2, 2, 2), 1, STEPS), BFloat16) for _ in range(self.mt)]
            for _ in range(2 if self.per_step == 2 else 1)
        ]
        wbuf = cute.make_rmem_tensor((16,), Int32)  # a chunk's 8 nibble words + 8 scale pairs
        epis = self.block_epis(epi)
        addrs = [self.thread_chunk_addrs(sw_base, e) for e in epis]
        if cutlass.const_expr(self.probe == 7):
            # (probe) a bf16 GEMM through the same pipeline: warpgroup w's A is rows 64w.. of the
            # activation stage, so the tensor work per chunk equals the real kernel's
            mma_ss = sm90_utils.make_trivial_tiled_mma(
                BFloat16, BFloat16, warpgroup.OperandMajorMode.K, warpgroup.OperandMajorMode.K,
                Float32, (self.wgs, 1, 1), (ROW_TILE, self.bn), warpgroup.OperandSource.SMEM,
            )
            mma_ss.set(warpgroup.Field.ACCUMULATE, True)
            thr_ss = mma_ss.get_slice(epi.wg * _WG + epi.t)
            sA = cute.local_tile(sB, (ROW_TILE * self.wgs, self.bk), (0, 0, None))
            tCrA_ss = mma_ss.make_fragment_A(thr_ss.partition_A(sA))
            tCrB = mma_ss.make_fragment_B(thr_ss.partition_B(sB))
            mma_acc = mma_ss
        else:
            tCrA_ss = None
        # (mma_first is passed to chunk() explicitly: it is re-set per chunk, and a copy captured
        # in a tuple before the loop would keep the stale pre-loop value)
        ctx = (mma_acc, accs, tCrB, wbuf, x_pipe, addrs, tCrA_ss)

        read = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.stages)
        release = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.stages)
        g_last = g_begin + nk - 1
        kc = g_last - (g_last // k_chunks) * k_chunks  # K chunk of step i, counted down (consume_sync)
        publish_at = self.publish_step(epi)
        # A piece of a row tile starts at the tile's last chunk (chunks run high to low) and ends
        # at its chunk 0 or at the run's end; flush() stores or parks it, finish() closes the
        # tile an earlier CTA began.
        if cutlass.const_expr(self.per_step == 2):
            # Software-pipelined chunks: chunk i+1 is read and dequantized into the other A
            # fragment while chunk i's 8 wgmmas run (wait_group(1) at each chunk's end).
            n_main = nk - nk % 2
            n_looped = n_main  # publish_at below this: published inside the loop
            for i0 in cutlass.range(0, n_main, 2, unroll=1):
                for d in cutlass.range_constexpr(2):
                    i = i0 + d
                    g = g_last - i
                    mma_first.set(warpgroup.Field.ACCUMULATE, kc != k_chunks - 1)
                    self.chunk(ctx, mma_first, frags[d], read, 1)
                    if i > 0:  # chunk i-1 retired by the wait above: its stage is free
                        self.release_stage(x_pipe, release, epi)
                        release.advance()
                    read.advance()
                    if (kc == 0) | (i == nk - 1):  # a piece ends: store or park it
                        warpgroup.wait_group(0)
                        self.flush_blocks(accs, g, epis, release.index)
                    if i == publish_at:
                        self.publish_blocks(epis)
                    kc = self._prev_chunk(kc, k_chunks)
            warpgroup.wait_group(0)
            if nk > n_main:  # odd tail chunk: nothing in flight around its branches
                g = g_last - n_main
                mma_first.set(warpgroup.Field.ACCUMULATE, kc != k_chunks - 1)
                self.chunk(ctx, mma_first, frags[0], read, 0)
                if n_main > 0:
                    self.release_stage(x_pipe, release, epi)
                    release.advance()
                read.advance()
                self.flush_blocks(accs, g, epis, release.index)
        else:
            n_looped = nk
            for i in cutlass.range(nk, unroll=1):
                g = g_last - i
                mma_first.set(warpgroup.Field.ACCUMULATE, kc != k_chunks - 1)
                self.chunk(ctx, mma_first, frags[0], read, 0)
                if i > 0:  # chunk i-1's wgmmas have retired: its stage is free
                    self.release_stage(x_pipe, release, epi)
                    release.advance()
                read.advance()
                if (kc == 0) | (i == nk - 1):  # a piece ends: store or park it
                    warpgroup.wait_group(0)
                    self.flush_blocks(accs, g, epis, release.index)
                if i == publish_at:
                    self.publish_blocks(epis)
                kc = self._prev_chunk(kc, k_chunks)
        warpgroup.wait_group(0)
        if publish_at >= n_looped:  # every run publishes its parked piece before any closing waits
            self.publish_blocks(epis)
        if cutlass.const_expr(self.prefetch):
            self.finish_prefetched(accs, epis, x_pipe, read, release, epi)
        else:
            # the last chunk's stage is still held: finish() may stage the closed tile in it
            for acc, e in zip(accs, epis, strict=True):
                self.finish(acc, e, release.index)
        if cutlass.const_expr(self.staged_store):
            self.wait_staged_reads(epi)  # (shared memory must outlive the TMA store's reads)
        if cutlass.const_expr(self.cluster > 1):
            if nk > 0:  # the last chunk's stage too: the producers' tails wait for it
                x_pipe.consumer_release(release)

    @cute.jit
    def release_stage(self, x_pipe, release, epi):
        """Hand a consumed stage back to the producer; a tile staged in it must have been read out
        by its TMA store first (the issuing thread waits, and its warp's arrival comes after)."""
        if cutlass.const_expr(self.staged_store):
            self.wait_staged_reads(epi)
        x_pipe.consumer_release(release)

    @cute.jit
    def publish_blocks(self, epis):
        for e in epis:
            self.publish(e)

    @cute.jit
    def flush_blocks(self, accs, g, epis, stage):
        for acc, e in zip(accs, epis, strict=True):
            self.flush(acc, g, e, stage)

    @cute.jit
    def consume_sync(self, sB, x_pipe, sw_base, epi):
        """Decode consumer (bn 8/16): each warp multiplies its 16 rows of the dequantized tile with
        mma.sync m16n8k16, reading the activations' B fragments straight from the swizzled stage.

        Why not wgmma here: at decode a wgmma m64n8k16 does 8 K-FMA of work but costs ~40 cycles
        of issue, fence and completion per 1024 weights; a CTA's few chunks arrive near the end
        of the kernel, so that cost lands on the critical path (dev probe: full kernel vs no
        wgmma, ~3 us on the 4096 x 4096 shape). mma.sync takes the same A fragment registers.
        The 8 k16 steps of a chunk alternate between two accumulators (summed at each flush), so
        consecutive mma.syncs do not wait for each other.
        """
        g_begin, nk, k_chunks, t = epi.g_begin, epi.nk, epi.k_chunks, epi.t
        # epi.thr_mma (a wgmma slice) only gives the accumulator layout: per warp, wgmma's C
        # fragment is mma.sync's
        acc_shape = epi.thr_mma.partition_shape_C((ROW_TILE, self.bn))
        accs = [cute.make_rmem_tensor(acc_shape, Float32) for _ in range(self.sync_accumulators)]
        for a in accs:
            a.fill(0.0)
        acc = cute.make_rmem_tensor(acc_shape, Float32)  # their sum, what flush() reads
        wbuf = cute.make_rmem_tensor((16,), Int32)
        w_thr, s_thr = self.thread_chunk_addrs(sw_base, epi)
        # B fragment of lane (g, c): x[token g (+8j), k 2c, 2c+1 (+8)] of a K-major, 128-byte
        # swizzled stage (TMA SWIZZLE_128B, 1024-byte aligned): token rows of 128 bytes (64 k),
        # 16-byte column chunk q stored at q ^ (row % 8); 8-row atoms 1 KB apart, the two 64-wide
        # K halves bn/8 KB apart (layout ((8, bn/8), (64, 2)) : ((64, 512), (1, 64 bn)) elements).
        # That is what a non-transposed ldmatrix hands out when its matrix rows are token rows
        # (8 k each): one x4 per two k16 steps of a token block, chunks q = 4 p .. 4 p + 3 of the
        # step pair's 64-wide K half (p = s // 2 % 2), lane l supplying token l % 8 of chunk
        # 4 p + l // 8. (16 ld.shared + their address arithmetic per chunk were ~35 of the ~212
        # SASS instructions of a decode chunk, where instruction issue is the limit.)
        lane = t % 32
        row = lane % 8
        ldm_lane = [sB.iterator.toint() + row * 128 + (((4 * p + lane // 8) ^ row) << 4) for p in range(2)]
        g_last = g_begin + nk - 1
        # K chunk of step i, counted down (no division per step: at decode the consumer's
        # instruction issue is what the chunk time is made of, and g // k_chunks by a run-time
        # divisor was ~25 uniform instructions of a ~250-instruction chunk)
        kc = g_last - (g_last // k_chunks) * k_chunks
        read = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.stages)
        for i in cutlass.range(nk, unroll=1):
            g = g_last - i
            if kc == k_chunks - 1:  # a piece starts
                for a in accs:
                    a.fill(0.0)
            x_pipe.consumer_wait(read)
            if cutlass.const_expr(self.probe == 13):
                self.stamp(epi.stamps, 3, (i == 0) & (t == 0))
            if cutlass.const_expr(not self.skip_math):
                self.read_chunk_words(wbuf, w_thr, s_thr, read.index * self.w_stage_bytes)
                x_stage = read.index * self.x_stage_bytes
                pair = []
                for s in cutlass.range_constexpr(STEPS):
                    r = self.dequant_or_probe(wbuf, s)
                    if cutlass.const_expr(self.probe != 1 and self.probe != 12 and s % 2 == 0):
                        # B registers of steps s, s + 1 for every token block
                        half = (s // 4) * (self.bn // 8)  # the step pair's K half, in 1 KB token blocks
                        pair = [
                            ldmatrix_x4(ldm_lane[s // 2 % 2] + x_stage + (half + nb) * 1024)
                            for nb in range(self.bn // 8)
                        ]
                    if cutlass.const_expr(self.probe != 1):
                        a = accs[s % self.sync_accumulators]
                        for nb in cutlass.range_constexpr(self.bn // 8):
                            if cutlass.const_expr(self.probe == 12):  # B from registers
                                b = [wbuf[(s + h) % 8] for h in range(2)]
                            else:
                                b = pair[nb][2 * (s % 2) : 2 * (s % 2) + 2]
                            d = mma_bf16_m16n8k16(r, b[0], b[1], [a[4 * nb + e] for e in range(4)])
                            for e in cutlass.range_constexpr(4):
                                a[4 * nb + e] = d[e]
            x_pipe.consumer_release(read)  # every read of the stage has returned (values used)
            read.advance()
            if (kc == 0) | (i == nk - 1):  # a piece ends: store or park it
                self.sum_into(acc, accs)
                self.flush(acc, g, epi)
            kc = self._prev_chunk(kc, k_chunks)
        self.sum_into(acc, accs)
        self.stamp(epi.stamps, 4, t == 0)
        self.finish(acc, epi)
        self.stamp(epi.stamps, 6, t == 0)

    @cute.jit
    def stamp(self, stamps, slot: int, who):
        """Dev probe 13: thread `who` stamps TIMELINE_STAMPS[slot] of this CTA (no code otherwise)."""
        if cutlass.const_expr(self.probe == 13):
            if who:
                st_globaltimer(stamps + slot * 8)

    @cute.jit
    def _prev_chunk(self, kc, k_chunks):
        """The K chunk after kc in a run's order (high to low, wrapping into the next row tile's last)."""
        kc = kc - 1
        if kc < 0:
            kc = k_chunks - 1
        return kc

    @cute.jit
    def sum_into(self, out, accs):
        for v in cutlass.range_constexpr(cute.size(out)):
            total = accs[0][v]
            for j in cutlass.range_constexpr(1, len(accs)):
                total = total + accs[j][v]
            out[v] = total

    def dequant_or_probe(self, wbuf, s):
        """Step s's 4 A registers (8 bf16 weights) from the chunk's words; probe 6 passes the words
        through undecoded to time the kernel without the dequant arithmetic."""
        pair_g, pair_g8 = wbuf[8 + 2 * (s // 2)], wbuf[9 + 2 * (s // 2)]
        if cutlass.const_expr(self.probe == 6):
            return [wbuf[s], pair_g, pair_g8, wbuf[(s + 1) % 8]]
        return dequant_step(wbuf[s], pair_g, pair_g8, s % 2)

    @cute.jit
    def chunk(self, ctx, mma_first, frag_a, read, keep_in_flight: int):
        """One 128-wide K chunk: each block's 48 bytes from shared memory, dequant, 8 RS wgmmas
        per block (frag_a: one A fragment per block)."""
        mma_acc, accs, tCrB, wbuf, x_pipe, addrs, tCrA_ss = ctx
        frag_u = [
            cute.make_tensor(cute.recast_ptr(f.iterator, dtype=Int32), cute.make_layout(4 * STEPS))
            for f in frag_a
        ]
        x_pipe.consumer_wait(read)
        stage = read.index * self.w_stage_bytes
        if cutlass.const_expr(self.skip_math):
            return
        if cutlass.const_expr(self.probe == 7):
            warpgroup.fence()
            for s in cutlass.range_constexpr(STEPS):
                cute.gemm(mma_acc, accs[0], tCrA_ss[None, None, s, read.index],
                          tCrB[None, None, s, read.index], accs[0])
            warpgroup.commit_group()
            # (per_step 1 keeps one chunk in flight here: one commit group per chunk)
            warpgroup.wait_group(keep_in_flight if self.per_step == 2 else min(self.per_step, 1))
            return
        if cutlass.const_expr(self.per_step == 1):  # mt 1 only (checked in __init__)
            w_thr, s_thr = addrs[0]
            self.read_chunk_words(wbuf, w_thr, s_thr, stage)
            for s in cutlass.range_constexpr(STEPS):
                # A registers of step s are free once <= 7 wgmma groups are pending
                warpgroup.wait_group(STEPS - 1)
                r = self.dequant_or_probe(wbuf, s)
                for j in cutlass.range_constexpr(4):
                    frag_u[0][4 * s + j] = r[j]
                warpgroup.fence()
                mma = mma_first if s == 0 else mma_acc
                cute.gemm(mma, accs[0], frag_a[0][None, None, s], tCrB[None, None, s, read.index], accs[0])
                warpgroup.commit_group()
            warpgroup.wait_group(STEPS - 1)  # chunk i-1 fully retired (its stage may go)
        else:
            for b in cutlass.range_constexpr(self.mt):
                w_thr, s_thr = addrs[b]
                self.read_chunk_words(wbuf, w_thr, s_thr, stage)
                for s in cutlass.range_constexpr(STEPS):
                    r = self.dequant_or_probe(wbuf, s)
                    for j in cutlass.range_constexpr(4):
                        frag_u[b][4 * s + j] = r[j]
            if cutlass.const_expr(self.probe == 1):
                return
            warpgroup.fence()
            for s in cutlass.range_constexpr(STEPS):
                mma = mma_first if s == 0 else mma_acc
                b_step = tCrB[None, None, s, read.index]
                for b in cutlass.range_constexpr(self.mt):
                    cute.gemm(mma, accs[b], frag_a[b][None, None, s], b_step, accs[b])
            warpgroup.commit_group()
            warpgroup.wait_group(keep_in_flight)
