"""SM90 W4A16 GEMM: configs, stream-K cut, CPU compile of every shipped config, call guards; and,
on a GPU (`gpu` marker), results against the reference, special blocks and CUDA-graph replay."""

import pytest
import torch

from nvfp4_kit import reference
from nvfp4_kit.kernels import gemm_sm90 as G
from nvfp4_kit.kernels.gemm_sm90_config import (
    COMPILED_SHAPES,
    EXPERIMENTAL_SHAPES,
    GemmConfig,
    fits,
    run_cuts,
    stream_k_grid,
)

cutlass = pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl not installed")


# ------------------------------------------------------------------------------------ CPU
def test_config_dict_round_trip_and_validation():
    cfg = GemmConfig(16, 1, 7, 3)
    assert GemmConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.name == "bn16_wg1_st7_p2_pdl_c3"
    for bad in ({"bn": 24}, {"wgs": 3}, {"stages": 1}, {"bn": 128, "stages": 12}, {"ctas_per_sm": 0}):
        with pytest.raises(ValueError):
            GemmConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        GemmConfig.from_dict({"bn": 16, "split": 2})
    big = GemmConfig(128, 2, 4, 1, per_step=0, mt=2)
    assert big.bm == 256 and big.name == "bn128_wg2_mt2_st4_p0_pdl_c1"
    assert GemmConfig.from_dict(big.to_dict()) == big
    for bad in ({"mt": 3}, {"mt": 2, "per_step": 2}, {"mt": 2, "bn": 8, "per_step": 0}):
        with pytest.raises(ValueError, match="mt"):
            GemmConfig(**bad)
    pair = GemmConfig(128, 2, 4, 1, cluster=2)
    assert pair.name == "bn128_wg2_st4_p2_pdl_cl2_c1" and GemmConfig.from_dict(pair.to_dict()) == pair
    assert pair.compile_key["cluster"] == 2 and "cluster" not in GemmConfig(128, 2, 4, 1).compile_key
    for bad in ({"cluster": 3}, {"cluster": 2, "bn": 16}):
        with pytest.raises(ValueError, match="cluster"):
            GemmConfig(**bad)
    # the benchmarks' spec: bn,wgs,stages,per_step,ctas_per_sm[,pdl[,mt[,cluster]]]
    assert GemmConfig.from_spec("128,2,4,1,3") == GemmConfig(128, 2, 4, 3, per_step=1)
    assert GemmConfig.from_spec("128,2,4,2,1,1,1,2") == pair
    assert GemmConfig.from_spec("128,2,4,0,1,0,2") == GemmConfig(128, 2, 4, 1, per_step=0, pdl=0, mt=2)


def test_dsmem_split_configs():
    split = GemmConfig(8, 1, 8, 1, dsmem_split=4)
    assert split.name == "bn8_wg1_st8_p2_pdl_ds4_c1" and split.compile_key["dsmem_split"] == 4
    assert "dsmem_split" not in GemmConfig(8, 1, 8, 3).compile_key
    assert GemmConfig.from_spec("8,1,8,2,1,1,1,1,4") == split == GemmConfig.from_dict(split.to_dict())
    assert split.smem_bytes == GemmConfig(8, 1, 8, 1).smem_bytes + 3 * 64 * 8 * 4
    # o at M = 1: 64 row tiles x 4 parts of 8 K chunks, one 4-CTA cluster per tile
    assert stream_k_grid(1, 4096, 4096, split, sms=132) == (256, 64 * 32, 64)
    for bad in (dict(bn=16), dict(ctas_per_sm=2), dict(wgs=2), dict(dsmem_split=9)):
        with pytest.raises(ValueError, match="dsmem_split"):
            GemmConfig(**{**dict(bn=8, wgs=1, stages=8, ctas_per_sm=1, dsmem_split=4), **bad})
    with pytest.raises(ValueError, match="fewer than 4 parts"):  # K = 384: 3 chunks for 4 parts
        stream_k_grid(1, 4096, 384, split)
    assert not fits(split, 4096, 384) and fits(split, 4096, 512)
    # experimental shapes (measured on H100, not a win over stream-K: notes v18), never a tuning candidate
    assert split.shape in EXPERIMENTAL_SHAPES
    assert not [c for m in (1, 8, 16) for c in G.candidate_configs(m, 4096, 4096) if c.dsmem_split > 1]


def test_row_tile_must_divide_padded_n():
    big = GemmConfig(128, 2, 4, 1, per_step=0, mt=2)
    assert stream_k_grid(1024, 4096, 4096, big)[2] == 16
    assert stream_k_grid(1024, 200, 4096, big)[2] == 1  # N padded to 256
    with pytest.raises(ValueError, match="N=320"):
        stream_k_grid(1024, 320, 4096, big)
    assert all(c.mt == 1 for c in G.candidate_configs(1024, 320, 4096))
    assert any(c.mt == 2 for c in G.candidate_configs(1024, 4096, 4096))
    # a 2-CTA cluster needs a pair of row tiles: 128-row tiles, N padded to 384 -> 3 tiles, no pair
    pair = GemmConfig(128, 2, 4, 1, cluster=2)
    assert stream_k_grid(1024, 4096, 4096, pair)[2] == 32
    with pytest.raises(ValueError, match="tile pair"):
        stream_k_grid(1024, 320, 4096, pair)


def _cluster_configs(ctas_per_sm: int = 1) -> list[GemmConfig]:
    """Every 2-CTA cluster kernel, shipped (bn64) or experimental (the prefill tiles)."""
    shapes = [s for s in COMPILED_SHAPES + EXPERIMENTAL_SHAPES if s[5] == 2]
    return [GemmConfig.from_shape(shape, ctas_per_sm) for shape in shapes]


@pytest.mark.parametrize("m", [1, 7, 16, 100, 128, 512, 1000, 8192])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336), (200, 272), (28672, 4096)])
def test_stream_k_grid_covers_work_once(m, n, k):
    clusters = [c for c in _cluster_configs(1) + _cluster_configs(2) if fits(c, n)]
    splits = [GemmConfig.from_shape(s) for s in EXPERIMENTAL_SHAPES if s[6] > 1]
    for cfg in G.candidate_configs(m, n, k) + clusters + [c for c in splits if fits(c, n, k)]:
        assert cfg.shape in COMPILED_SHAPES + EXPERIMENTAL_SHAPES
        grid, total, n_tiles = stream_k_grid(m, n, k, cfg, sms=132)
        assert grid % cfg.cluster == 0 and n_tiles % cfg.cluster == 0
        runs = grid // cfg.cluster  # a run is one CTA, or one 2-CTA cluster on a row-tile pair
        assert total == n_tiles // cfg.cluster * (-(-k // 128)) and 1 <= runs <= total  # no empty run
        starts = [c * total // runs for c in range(runs + 1)]
        assert starts[0] == 0 and starts[-1] == total  # runs tile [0, total)
        lengths = [starts[c + 1] - starts[c] for c in range(runs)]
        assert max(lengths) - min(lengths) <= 1  # balanced to one chunk
        for g in range(0, total, max(1, total // 97)):  # the kernel's owner formula
            c = ((g + 1) * runs - 1) // total
            assert starts[c] <= g < starts[c + 1]
        m_tiles = -(-m // cfg.bn)
        if cfg.dsmem_split > 1:  # one cluster per row tile: each run is a part of one tile
            assert grid == n_tiles * cfg.dsmem_split
            assert all(starts[c] // (-(-k // 128)) == (starts[c + 1] - 1) // (-(-k // 128)) for c in range(runs))
        else:
            assert grid * m_tiles <= max(132 * cfg.ctas_per_sm, m_tiles * cfg.cluster)  # <= 1 wave
    assert G.candidate_configs(m, n, k)[0] == G.heuristic_config(m, n, k)


@pytest.mark.parametrize("runs,total,k_chunks", [(264, 2048, 32), (264, 3072, 32), (264, 7168, 112), (37, 300, 3)])
@pytest.mark.parametrize("bias", [1, 2, 3])
def test_closer_bias_cuts(runs, total, k_chunks, bias):
    """The dev variant's uneven runs (what the kernel's _cut computes): still a partition of
    [0, total) with no empty run, each cut at most `bias` from the even one; a run widened only where
    it closes a row tile, and the owner of a tile's first chunk found one step from the even guess
    (the kernel's _first_run)."""
    even = run_cuts(runs, total, k_chunks)
    assert even == [r * total // runs for r in range(runs + 1)]
    cuts = run_cuts(runs, total, k_chunks, bias)
    assert cuts[0] == 0 and cuts[-1] == total and all(a < b for a, b in zip(cuts, cuts[1:], strict=False))
    assert max(abs(c - e) for c, e in zip(cuts, even, strict=True)) == min(bias, (total // runs - 1) // 2)
    for r in range(runs):
        g0, g1 = even[r], even[r + 1]
        closes = g0 % k_chunks != 0 and (g0 // k_chunks + 1) * k_chunks <= g1
        if cuts[r + 1] - cuts[r] > g1 - g0:
            assert closes
    for t0 in range(0, total, k_chunks):
        guess = ((t0 + 1) * runs - 1) // total
        owner = next(r for r in range(runs) if cuts[r] <= t0 < cuts[r + 1])
        assert abs(owner - guess) <= 1


def test_whole_tile_runs_where_they_cost_little_more():
    cfg = GemmConfig(128, 2, 4, 1)  # 128 x 128 tiles, one CTA per SM
    # o / down at M = 512: 4 token tiles x 32 row tiles = 128 tiles for 132 SMs -> whole tiles
    assert stream_k_grid(512, 4096, 4096, cfg, sms=132) == (32, 32 * 32, 32)
    assert stream_k_grid(512, 4096, 14336, cfg, sms=132) == (32, 32 * 112, 32)
    # 70B down, 128x256 tiles, M = 1024: 256 tiles -> 2 whole tiles per CTA (1.94 in stream-K)
    wide = GemmConfig(256, 2, 3, 1, per_step=1)
    assert stream_k_grid(1024, 8192, 28672, wide, sms=132) == (32, 64 * 224, 64)
    # whole tiles would cost too much more: 64 of 132 SMs busy, 192 tiles (2 per CTA vs 1.45),
    # 896 tiles (7 vs 6.79): stream-K as before
    assert stream_k_grid(256, 4096, 4096, cfg, sms=132) == (66, 32 * 32, 32)
    assert stream_k_grid(512, 6144, 4096, cfg, sms=132) == (33, 48 * 32, 48)
    assert stream_k_grid(1024, 28672, 4096, wide, sms=132) == (33, 224 * 32, 224)
    # clusters cut row-tile pairs over 66 two-CTA runs: o at M = 512, 64 pairs -> whole pairs;
    # qkv at M = 512, 96 pairs on 66 runs -> stream-K over 16 runs per token tile (32 CTAs)
    pair = GemmConfig(128, 2, 4, 1, cluster=2)
    assert stream_k_grid(512, 4096, 4096, pair, sms=132) == (32, 16 * 32, 32)
    assert stream_k_grid(512, 6144, 4096, pair, sms=132) == (32, 24 * 32, 48)


def _piece_roles(c, total, grid, k_chunks):
    """The fix-up rules of gemm_sm90_epilogue for CTA c, as the kernel applies them: its run walked
    high to low, each piece (tile, lowest chunk) is "whole", "parked" (its tile goes on past the run)
    or "closing" (it ends a tile begun by earlier CTAs; the closer expects c - c_first partials)."""
    g_begin, g_end = c * total // grid, (c + 1) * total // grid
    roles, g = [], g_end - 1
    while g >= g_begin:
        tile = g // k_chunks
        t0 = tile * k_chunks
        low = max(t0, g_begin)
        if t0 + k_chunks > g_end:
            roles.append(("parked", tile, None))
        elif t0 >= g_begin:
            roles.append(("whole", tile, None))
        else:
            c_first = ((t0 + 1) * grid - 1) // total
            roles.append(("closing", tile, c - c_first))
        g = low - 1
    return roles


@pytest.mark.parametrize("k_chunks", [1, 3, 32, 112])
@pytest.mark.parametrize("n_tiles", [1, 5, 64, 448])
def test_stream_k_fix_up_roles(k_chunks, n_tiles):
    """What the one-slot-per-CTA workspace and the closer's wait rely on: a CTA parks at most one
    piece (its first) and closes at most one (its last); every cut tile has exactly one closer,
    which expects exactly the number of pieces parked for it; every other tile is whole in one CTA."""
    total = n_tiles * k_chunks
    for grid in sorted({1, 2, 7, 132, 264, 396, 528, total} & set(range(1, total + 1))):
        parked, whole, closers = {}, {}, {}
        for c in range(grid):
            roles = _piece_roles(c, total, grid, k_chunks)
            for i, (role, tile, expect) in enumerate(roles):
                if role == "parked":
                    assert i == 0
                    parked[tile] = parked.get(tile, 0) + 1
                elif role == "closing":
                    assert i == len(roles) - 1 and tile not in closers
                    closers[tile] = expect
                else:
                    whole[tile] = whole.get(tile, 0) + 1
        for tile in range(n_tiles):
            if tile in closers:
                assert tile not in whole and parked.get(tile, 0) == closers[tile] >= 1
            else:
                assert whole.get(tile) == 1 and tile not in parked


def test_every_config_compiles_for_sm90a():
    keys = G.precompile("sm_90a")
    assert len(keys) == len(COMPILED_SHAPES)


def test_committed_table_names_only_shipped_kernels():
    """Every config of the committed H100 tuning table is a COMPILED_SHAPES kernel that fits its N:
    precompile() builds exactly those, and a table entry outside them would compile at first use
    (or raise under CUDA-graph capture)."""
    import json

    from nvfp4_kit import dispatch

    doc = json.loads((dispatch._DATA_DIR / "tuning_sm90_h100.json").read_text())
    assert doc["entries"]
    for entry in doc["entries"]:
        cfg = GemmConfig.from_dict(entry["config"])
        where = (entry["n"], entry["k"], entry["m_bucket"], cfg.name)
        assert cfg.shape in COMPILED_SHAPES and fits(cfg, entry["n"]), where


def test_experimental_configs_compile_for_sm90a():
    """The 2-CTA prefill kernels and the dsmem_split decode kernels (both measured, not a win) are no
    candidates; they must still build."""
    keys = G.precompile("sm_90a", [GemmConfig.from_shape(shape) for shape in EXPERIMENTAL_SHAPES])
    assert len(keys) == len(EXPERIMENTAL_SHAPES) and all("_cl2" in key or "_ds" in key for key in keys)


@pytest.mark.parametrize("bn,stages", [(16, 7), (32, 5)])
def test_mma_sync_wide_tiles_compile_for_sm90a(bn, stages):
    """Dev variants (dev_gemm_probe --mma sync, dev_sass_loop --bn): the 16- and 32-token tiles on the
    mma.sync consumer must keep building; 64 tokens and up are wgmma's (register budget)."""
    import cutlass.cute as cute

    from nvfp4_kit.kernels.gemm_sm90_kernel import Sm90W4A16Kernel

    assert cute.compile(Sm90W4A16Kernel(bn, 1, stages, 2, True, sync_mma=True), *G._compile_args())
    with pytest.raises(ValueError, match="mma.sync"):
        Sm90W4A16Kernel(64, 1, 4, 2, True, sync_mma=True)


def test_check_shape():
    G.check_shape(4096, 4096)
    G.check_shape(200, 272)
    with pytest.raises(ValueError, match="k="):
        G.check_shape(64, 24)
    with pytest.raises(ValueError, match="n="):
        G.check_shape(0, 64)


def test_call_guards_name_the_argument():
    q = reference.quantize_weight(torch.randn(128, 256))
    w, s = G.prepare_weight(q["weight"], q["weight_scale"])
    x = torch.randn(3, 256).to(torch.bfloat16)
    alpha = torch.ones(1)
    out = torch.empty(3, 128, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="x:"):
        G.gemm_w4a16_out(x.float(), w, s, alpha, out)
    with pytest.raises(ValueError, match="out:"):
        G.gemm_w4a16_out(x, w, s, alpha, out[:2])
    with pytest.raises(ValueError, match="w:"):
        G.gemm_w4a16_out(x, w[:1], s, alpha, out)
    with pytest.raises(ValueError, match="w_scale:"):
        G.gemm_w4a16_out(x, w, s.view(torch.int8), alpha, out)
    with pytest.raises(ValueError, match="alpha:"):
        G.gemm_w4a16_out(x, w, s, torch.ones(7), out)
    with pytest.raises(ValueError, match="CUDA"):
        G.gemm_w4a16_out(x, w, s, alpha, out)  # CPU tensors: a clear error, not a crash


def test_token_tiles_stay_within_cuda_grid_y():
    narrow = GemmConfig(8, 1, 8, 3)
    G._check_token_tiles(65535 * 8, narrow)
    with pytest.raises(ValueError, match=r"x: M=524281 needs more than 65535 token tiles"):
        G._check_token_tiles(65535 * 8 + 1, narrow)
    for m in (1, 8192, 1 << 20):  # what the heuristic picks is always launchable
        G._check_token_tiles(m, G.heuristic_config(m, 4096, 4096))


def test_workspace_bytes_bounds_every_m():
    cfg = GemmConfig(8, 1, 8, 3)
    need = G.workspace_bytes(64, 4096, cfg)
    for m in range(1, 65):
        assert 4 * G._ws_need(m, 4096, 4096, cfg, 132) <= need
    for cfg in (GemmConfig(128, 2, 4, 1, cluster=2), GemmConfig(64, 1, 4, 2, cluster=2)):
        need = G.workspace_bytes(8192, 4096, cfg)
        for m in (1, 65, 200, 512, 1000, 4096, 8192):
            assert 4 * G._ws_need(m, 4096, 4096, cfg, 132) <= need


def test_piece_flag_layout_fits_every_shipped_shape():
    """Each (64-row block, warp) of a prefill tile has its own flag word inside the slot's flag
    area; the flag values are NaN payloads no fp32 arithmetic writes (so stale partials never read
    as a flag) and differ from each other and from the canonical NaN."""
    import struct

    from nvfp4_kit.kernels.gemm_sm90_config import (
        FLAG_WORDS,
        PIECE_FULL,
        SLOT_EMPTY_BITS,
        piece_flags,
        slot_words,
    )

    for shape in COMPILED_SHAPES + EXPERIMENTAL_SHAPES:
        cfg = GemmConfig.from_shape(shape)
        flags = cfg.wgs * cfg.mt * 4 if piece_flags(cfg.bn) else 0
        assert flags <= FLAG_WORDS, cfg.name
        assert slot_words(cfg.bm, cfg.bn) == cfg.bm * cfg.bn + (FLAG_WORDS if flags else 0)
    for bits in (PIECE_FULL, SLOT_EMPTY_BITS):
        value = struct.unpack("<f", struct.pack("<I", bits))[0]
        assert value != value and bits != 0x7FFFFFFF  # a NaN, not the canonical one
    assert PIECE_FULL != SLOT_EMPTY_BITS


# ------------------------------------------------------------------------------------ GPU
def _case(m, n, k, device="cuda", seed=0):
    torch.manual_seed(seed)
    q = reference.quantize_weight(torch.randn(n, k, device=device))
    w, s = G.prepare_weight(q["weight"], q["weight_scale"])
    x = torch.randn(m, k, device=device).to(torch.bfloat16)
    return q, w, s, x


def _ref(x, q, alpha):
    deq = reference.dequantize(q["weight"], q["weight_scale"])
    return (x.float() @ deq.T) * alpha.float().reshape(1, -1)


def _assert_close_to_reference(out, ref):
    # bf16 output of an fp32 accumulation: relative error of a bf16 rounding, never a NaN mismatch
    assert torch.equal(torch.isnan(out.float()), torch.isnan(ref))
    fin = torch.isfinite(ref)
    err = (out.float() - ref)[fin].norm() / ref[fin].norm().clamp(min=1e-30)
    assert err < 4e-3, err


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (200, 272)])
@pytest.mark.parametrize("m", [1, 7, 16, 199])
def test_gpu_matches_reference(m, n, k):
    torch.backends.cuda.matmul.allow_tf32 = False
    q, w, s, x = _case(m, n, k)
    for alpha in (torch.tensor([0.3], device="cuda"), torch.rand(n, device="cuda") + 0.5):
        ref = _ref(x, q, alpha)
        for cfg in G.candidate_configs(m, n, k)[:3]:
            out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
            G.gemm_w4a16_out(x, w, s, alpha, out, cfg)
            _assert_close_to_reference(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(4096, 4096), (640, 1040), (200, 272)])
@pytest.mark.parametrize("m", [199, 300, 1000])
def test_gpu_prefill_configs_match_reference(m, n, k):
    """Every prefill candidate (128x128, 256x128, 128x256 tiles) at odd M and N, both alphas."""
    torch.backends.cuda.matmul.allow_tf32 = False
    q, w, s, x = _case(m, n, k)
    cfgs = G.candidate_configs(m, n, k)
    assert any(c.bn == 256 for c in cfgs)
    for alpha in (torch.tensor([0.3], device="cuda"), torch.rand(n, device="cuda") + 0.5):
        ref = _ref(x, q, alpha)
        for cfg in cfgs:
            out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
            G.gemm_w4a16_out(x, w, s, alpha, out, cfg)
            _assert_close_to_reference(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(4096, 4096), (768, 1040), (6144, 4096)])
@pytest.mark.parametrize("m", [64, 199, 300, 1000])
def test_gpu_cluster_configs_match_reference(m, n, k):
    """2-CTA cluster kernels (each CTA of a pair multicasts half the activation tile into both;
    stream-K over row-tile pairs) against the reference, both alphas, 1 and 2 CTAs per SM."""
    torch.backends.cuda.matmul.allow_tf32 = False
    q, w, s, x = _case(m, n, k)
    for alpha in (torch.tensor([0.3], device="cuda"), torch.rand(n, device="cuda") + 0.5):
        ref = _ref(x, q, alpha)
        for cfg in _cluster_configs(1) + _cluster_configs(2):
            if not fits(cfg, n):
                continue
            out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
            G.gemm_w4a16_out(x, w, s, alpha, out, cfg)
            _assert_close_to_reference(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("n,offset", [(1000, 0), (1004, 0), (1000, 1)])
def test_gpu_prefill_stores_stay_inside_out(n, offset):
    """The prefill tiles store through shared memory and a TMA store where out's base and row
    pitch are 16-byte aligned (n = 1000), directly where they are not (n % 8 = 4; a base 2 bytes
    past alignment). Either way out equals the reference and nothing next to it is written."""
    torch.backends.cuda.matmul.allow_tf32 = False
    m, k = 300, 512
    q, w, s, x = _case(m, n, k)
    alpha = torch.rand(n, device="cuda") + 0.5
    ref = _ref(x, q, alpha)
    cfgs = [
        GemmConfig(64, 1, 4, 2),
        GemmConfig(64, 1, 4, 2, cluster=2),
        GemmConfig(128, 2, 4, 1, per_step=1),
        GemmConfig(128, 2, 4, 1, per_step=2),
        GemmConfig(256, 2, 3, 1, per_step=1),
    ]
    for cfg in cfgs:
        if not fits(cfg, n):
            continue
        buf = torch.full((offset + m * n + 64,), 7.0, dtype=torch.bfloat16, device="cuda")
        out = buf[offset : offset + m * n].view(m, n)
        G.gemm_w4a16_out(x, w, s, alpha, out, cfg)
        _assert_close_to_reference(out, ref)
        assert bool((buf[:offset] == 7.0).all()) and bool((buf[offset + m * n :] == 7.0).all()), cfg.name


@pytest.mark.gpu
def test_gpu_special_blocks():
    from nvfp4_kit.formats import pack_e2m1

    n, k, m = 128, 256, 5
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    sf = (torch.rand(n, k // 16) * 400 + 1).to(torch.float8_e4m3fn)
    codes[3, :16], sf[3, 0] = 8, 0.0  # zero block
    sf[5, 2] = float("nan")  # NaN scale -> NaN row
    codes[7, :], sf[7, :] = 7, 448.0  # saturated
    q = {"weight": pack_e2m1(codes).cuda(), "weight_scale": sf.cuda()}
    w, s = G.prepare_weight(q["weight"], q["weight_scale"])
    x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    alpha = torch.ones(1, device="cuda")
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    G.gemm_w4a16_out(x, w, s, alpha, out, GemmConfig(8, 1, 8, 3))
    _assert_close_to_reference(out, _ref(x, q, alpha))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "m,cfg",
    [
        (3, GemmConfig(8, 1, 8, 3)),  # stream-K pieces: every workspace word must be empty again
        (64, GemmConfig(64, 1, 4, 2, cluster=2)),  # a 2-CTA cluster launch captured in the graph
        (1, GemmConfig(8, 1, 8, 1, dsmem_split=4)),  # 4-CTA clusters summing through DSMEM
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_gpu_graph_replay_equals_eager(m, cfg):
    q, w, s, x = _case(m, 4096, 4096)
    alpha = torch.ones(1, device="cuda")
    eager = torch.empty(m, 4096, dtype=torch.bfloat16, device="cuda")
    G.gemm_w4a16_out(x, w, s, alpha, eager, cfg)
    out = torch.empty_like(eager)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        G.gemm_w4a16_out(x, w, s, alpha, out, cfg)
    for _ in range(3):
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager)  # deterministic fix-up: bit-identical every time


def _at_rest(cfg) -> bool:
    """Whether cfg's workspace is back at rest: every word empty (decode tiles), or no flag left
    full (prefill tiles: their partials stay behind, and a call with another tile or grid finds
    its flag words among them; PIECE_FULL is the one value none of them can hold)."""
    from nvfp4_kit.kernels.gemm_sm90_config import PIECE_FULL, SLOT_EMPTY_BITS, piece_flags

    ws = G.workspace_of(torch.cuda.current_device(), cfg).view(torch.int32)
    if piece_flags(cfg.bn):
        return not bool((ws == PIECE_FULL - (1 << 32)).any())
    return bool((ws == SLOT_EMPTY_BITS - (1 << 32)).all())


@pytest.mark.gpu
def test_gpu_stream_k_workspace_rests_empty_across_grids():
    """Calls with different grids share a workspace: each must leave it at rest (every word or
    flag empty: the fix-up's arrival signal) and repeat bit-identically whatever ran before it;
    decode and prefill calls interleaved must not take each other's partials."""

    alpha = torch.ones(1, device="cuda")
    cases = [(_case(3, 4096, 4096), GemmConfig(8, 1, 8, c)) for c in (3, 2, 4)]
    cases += [(_case(20, 28672, 4096, seed=1), GemmConfig(16, 1, 7, 3))]
    cases += [(_case(9, 384, 14336, seed=2), GemmConfig(8, 1, 8, 8))]  # many pieces per tile
    # 256-row tiles, two 64-row blocks per warpgroup, each parked and closed on its own
    cases += [(_case(300, 4096, 4096, seed=3), GemmConfig(128, 2, 4, 2, per_step=0, mt=2))]
    cases += [(_case(600, 4096, 4096, seed=4), GemmConfig(256, 2, 3, 1, per_step=1))]  # 128x256
    # 256 one-chunk runs: 128 pieces per tile, more than a warp's lanes wait for at once
    cases += [(_case(64, 128, 16384, seed=8), GemmConfig(64, 1, 4, 2))]
    # 2-CTA clusters: both CTAs of a run park and close pieces of their own row tiles
    cases += [(_case(64, 4096, 4096, seed=7), GemmConfig(64, 1, 4, 2, cluster=2))]  # shipped, 2 per SM
    cases += [(_case(300, 6144, 4096, seed=5), GemmConfig(128, 2, 4, 1, cluster=2))]
    cases += [(_case(600, 4096, 4096, seed=6), GemmConfig(256, 2, 3, 1, per_step=1, cluster=2))]
    first = []
    for rnd in range(2):
        for i, ((q, w, s, x), cfg) in enumerate(cases):
            out = torch.empty(x.shape[0], q["weight"].shape[0], dtype=torch.bfloat16, device="cuda")
            G.gemm_w4a16_out(x, w, s, alpha, out, cfg)
            if rnd == 0:
                _assert_close_to_reference(out, _ref(x, q, alpha))
                first.append(out)
            else:
                assert torch.equal(out, first[i]), cfg.name
            assert _at_rest(cfg), f"{cfg.name}: workspace not at rest"


def _launch_variant(kernel, x, w, s, alpha, out, cfg):
    """Compile a kernel object outside the shipped cache and launch it with the arguments
    gemm_w4a16_out passes (dev variants of the shipped kernel)."""
    import cutlass.cute as cute

    fn = cute.compile(kernel, *G._compile_args())
    (m, k), n = x.shape, out.shape[1]
    grid, total, _ = stream_k_grid(m, n, k, cfg, G._sms(x.device))
    G.reserve_workspace(x.device, m, n, cfg)
    ws = G.workspace_of(torch.cuda.current_device(), cfg)
    ptrs = (x, w, s, alpha, out, ws)
    values = (*(t.data_ptr() for t in ptrs), m, n, k, -(-k // 128), total, grid, int(alpha.numel() > 1))
    fn(*G._dsl_args((*values, torch.cuda.current_stream().cuda_stream)))


def _assert_variant_matches_reference(kernel, cfg, m, n, k):
    """A dev variant on a random case with a per-row alpha: close to the reference, and the
    stream-K workspace of cfg left at rest."""
    q, w, s, x = _case(m, n, k)
    alpha = torch.rand(n, device="cuda") + 0.5
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    _launch_variant(kernel, x, w, s, alpha, out, cfg)
    torch.cuda.synchronize()
    _assert_close_to_reference(out, _ref(x, q, alpha))
    assert _at_rest(cfg)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "m,n,k,cfg",
    [
        (128, 6144, 4096, GemmConfig(128, 2, 4, 1, per_step=2)),  # 2-3 pieces per tile
        (512, 4096, 14336, GemmConfig(256, 2, 3, 1, per_step=1)),  # 128x256 tiles, 64 KB per block
        (300, 4096, 4096, GemmConfig(128, 2, 4, 1, per_step=0, mt=2)),  # 4 blocks per CTA
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_gpu_prefetched_fix_up_equals_l2_fix_up(m, n, k, cfg):
    """The shipped prefill fix-up (the closer's producer stages the parked partials in shared
    memory) adds the same partials in the same order as the reduce from L2 it replaced: the two
    kernels' outputs are bit-identical, and both leave no flag full."""
    from nvfp4_kit.kernels.gemm_sm90_kernel import Sm90W4A16Kernel

    q, w, s, x = _case(m, n, k)
    alpha = torch.rand(n, device="cuda") + 0.5
    shipped = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    G.gemm_w4a16_out(x, w, s, alpha, shipped, cfg)
    _assert_close_to_reference(shipped, _ref(x, q, alpha))
    assert _at_rest(cfg)
    l2_reduce = Sm90W4A16Kernel(
        cfg.bn, cfg.wgs, cfg.stages, cfg.per_step, bool(cfg.pdl), mt=cfg.mt, prefetch=False, publish_after=-1
    )
    assert not l2_reduce.prefetch and G._kernel_for(cfg).prefetch
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    _launch_variant(l2_reduce, x, w, s, alpha, out, cfg)
    torch.cuda.synchronize()
    assert torch.equal(out, shipped)
    assert _at_rest(cfg)


@pytest.mark.gpu
@pytest.mark.parametrize("accs", [4, 8])
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (7, 200, 272), (8, 640, 1040)])
def test_gpu_sync_accumulators_match_reference(m, n, k, accs):
    """Dev variant of the decode kernel: the mma.sync k16 steps over 4 / 8 accumulators sum the
    same products as the shipped 2 (another fp32 order: close to the reference, not bit-equal)."""
    from nvfp4_kit.kernels.gemm_sm90_kernel import Sm90W4A16Kernel

    cfg = GemmConfig(8, 1, 8, 2, per_step=2)  # the shipped decode config
    kernel = Sm90W4A16Kernel(cfg.bn, cfg.wgs, cfg.stages, cfg.per_step, bool(cfg.pdl), sync_accumulators=accs)
    _assert_variant_matches_reference(kernel, cfg, m, n, k)


@pytest.mark.gpu
@pytest.mark.parametrize("bn,stages,ctas", [(16, 7, 3), (32, 5, 3)])
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (13, 200, 272), (45, 640, 1040), (32, 6144, 4096)])
def test_gpu_mma_sync_wide_tiles_match_reference(m, n, k, bn, stages, ctas):
    """Dev variant: the 16- and 32-token tiles built on the mma.sync consumer (bn / 8 token blocks
    per warp, B fragments by ldmatrix) instead of wgmma, with partial token tiles (M = 13, 45) and
    the stream-K fix-up: close to the reference, the workspace left at rest."""
    from nvfp4_kit.kernels.gemm_sm90_kernel import Sm90W4A16Kernel

    cfg = GemmConfig(bn, 1, stages, ctas, per_step=2)
    kernel = Sm90W4A16Kernel(bn, 1, stages, cfg.per_step, True, sync_mma=True)
    _assert_variant_matches_reference(kernel, cfg, m, n, k)


@pytest.mark.gpu
@pytest.mark.parametrize("bias", [1, 2])
@pytest.mark.parametrize("m,n,k,bn", [(1, 4096, 4096, 8), (5, 6144, 4096, 8), (13, 4096, 14336, 16), (7, 200, 272, 8)])
def test_gpu_closer_bias_matches_reference(m, n, k, bn, bias):
    """Dev variant: uneven stream-K runs (closing runs widened by `bias` chunks) sum every piece
    once: close to the reference, the workspace at rest."""
    from nvfp4_kit.kernels.gemm_sm90_kernel import Sm90W4A16Kernel

    cfg = GemmConfig(bn, 1, 8 if bn == 8 else 7, 2, per_step=2)
    kernel = Sm90W4A16Kernel(bn, 1, cfg.stages, cfg.per_step, True, closer_bias=bias)
    _assert_variant_matches_reference(kernel, cfg, m, n, k)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "m,n,k,split",
    [(1, 4096, 4096, 4), (8, 4096, 4096, 2), (13, 6144, 4096, 4), (7, 200, 272, 3), (5, 640, 1040, 8)],
)
def test_gpu_dsmem_split_matches_reference(m, n, k, split):
    """The decode kernel with clusters of `split` CTAs per row tile, the lower K parts' partials
    summed in the last CTA's shared memory (st.async + mbarrier): close to the reference and the
    same bits on every launch (parts added in a fixed order). It gets no workspace (a null
    address: any access to one would fault the launch)."""
    cfg = GemmConfig(8, 1, 8, 1, per_step=2, dsmem_split=split)
    q, w, s, x = _case(m, n, k)
    for alpha in (torch.tensor([0.3], device="cuda"), torch.rand(n, device="cuda") + 0.5):
        outs = []
        for _ in range(3):
            out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
            G.gemm_w4a16_out(x, w, s, alpha, out, cfg)
            outs.append(out)
        _assert_close_to_reference(outs[0], _ref(x, q, alpha))
        assert all(torch.equal(o, outs[0]) for o in outs[1:])
