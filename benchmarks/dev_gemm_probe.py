"""Dev probe (not a benchmark of record): where does decode time go in the SM90 GEMM kernel?

Times the real kernel against crippled copies on the same shape (results are garbage there):
probe 1 = no wgmma (data movement + dequant), probe 2 = data movement only (pipeline + bulk copies),
3 = probe 2 without the stream-K fix-up and stores, 4 = launch + pipeline init + exit only,
5 = the full kernel without the fix-up and stores (what the epilogue costs at prefill),
6 = the full kernel with the packed words as A, no dequant arithmetic (what the dequant costs),
7 = a bf16 GEMM in the same pipeline (SS wgmma, the activation stage as A too; bn = 64 * wgs),
8 = the full kernel without writing parked partials (bn >= 64: what parking costs), 9 = the full
kernel without the stream-K fix-up, stores kept (with 5: what the stores cost), 10 = the full kernel
whose closers load the parked partials without waiting for flags, 11 = flags waited for, no partial
loaded, 20 / 20 + d = the full kernel without the closer's prefetch of the parked partials (flags
released at the end of the run / d chunks after parking), 30 / 30 + d = the same with the prefetch
(probe 0 is the shipped kernel: prefetch with flags 1 chunk after parking where it applies).
--timeline runs probe 13 instead (the full mma.sync kernel stamping %globaltimer per CTA, the
last of a graph of launches like the timed ones) and prints when each CTA's phases ended, by role:
closing runs (sum a tile's parked partials), runs parked whole (inside one tile) and the rest.
--bias b,...: also the dev variant with uneven runs (each closing run widened by up to b chunks).
Probes of one shape and config are replayed interleaved; --cublas adds torch.matmul (bf16) to them.
--baselines also times, in the same harness, what no kernel can beat: a 1-element torch op (the
graph's per-launch cost) and a device copy moving the weight bytes (read + write = 4.5-bit bytes).
    python benchmarks/dev_gemm_probe.py --shape 28672x4096 --m 1
    python benchmarks/dev_gemm_probe.py --shape 4096x4096 --probes 0 --cfg "8,1,4,2,3;8,1,8,2,4"
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvfp4_kit.kernels import gemm_sm90 as G  # noqa: E402
from nvfp4_kit.kernels.gemm_sm90_config import GemmConfig, closes_tile, run_cuts, stream_k_grid  # noqa: E402
from nvfp4_kit.timing import copies_to_exceed_l2, graph_time_us, interleaved_graph_times_us  # noqa: E402

PROBE_NAMES = [
    "full", "no wgmma", "data only", "no fix-up", "launch", "no stores", "no dequant", "bf16 SS", "no park",
    "no fixup", "no wait", "wait only", "B in regs", "timeline",
]


@functools.cache
def compiled(cfg: GemmConfig, probe: int, sync_mma: bool | None = None, accs: int = 2, bias: int = 0):
    import cutlass.cute as cute

    from nvfp4_kit.kernels.gemm_sm90_kernel import Sm90W4A16Kernel

    # 20 / 20 + d: the full kernel without prefetching the parked partials, their flags released at
    # the end of the run / d chunks after parking; 30 / 30 + d: the same with prefetch
    variant = {}
    if probe >= 20:
        variant = {"prefetch": probe >= 30, "publish_after": probe % 10 or -1}
    kern = Sm90W4A16Kernel(
        cfg.bn, cfg.wgs, cfg.stages, cfg.per_step, bool(cfg.pdl), 0 if probe >= 20 else probe, sync_mma,
        cfg.mt, cfg.cluster, sync_accumulators=accs, dsmem_split=cfg.dsmem_split, closer_bias=bias, **variant,
    )
    return cute.compile(kern, *G._compile_args())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="28672x4096")
    p.add_argument("--m", default="1", help="comma list of token counts")
    p.add_argument(
        "--cfg", default="8,1,8,2,3", help='"bn,wgs,stages,per_step,ctas_per_sm[,pdl[,mt[,cluster]]];..."'
    )
    p.add_argument("--probes", default="0,1,2", help="comma list of probes (0 = full kernel)")
    p.add_argument("--baselines", action="store_true")
    p.add_argument("--mma", default="auto", help="comma list of auto, wgmma, sync")
    p.add_argument("--cublas", action="store_true", help="time torch.matmul bf16 with the probes")
    p.add_argument("--accs", default="2", help="comma list: mma.sync accumulators k16 steps alternate over")
    p.add_argument(
        "--dsmem", default="1", help="comma list of dsmem_split (1: stream-K; d: d-CTA clusters per row tile)"
    )
    p.add_argument("--timeline", action="store_true", help="per-CTA phase times (probe 13) instead of probes")
    p.add_argument("--bias", default="0", help="comma list of closer_bias (0: even stream-K runs)")
    a = p.parse_args()
    for shape in a.shape.split(","):
        n, k = (int(v) for v in shape.split("x"))
        if a.baselines:
            baselines(n, k)
        for spec in a.cfg.split(";"):
            cfg = GemmConfig.from_spec(spec)
            if a.timeline:
                for m in (int(v) for v in a.m.split(",")):
                    for bias in (int(v) for v in a.bias.split(",")):
                        timeline(n, k, m, cfg, bias)
                continue
            for mma in a.mma.split(","):
                sync = {"auto": None, "wgmma": False, "sync": True}[mma]
                for m in (int(v) for v in a.m.split(",")):
                    variants = [
                        (int(p), int(acc), int(d), int(b))
                        for b in a.bias.split(",")
                        for d in a.dsmem.split(",")
                        for acc in a.accs.split(",")
                        for p in a.probes.split(",")
                    ]
                    run(n, k, m, cfg, variants, sync, a.cublas)


def baselines(n: int, k: int) -> None:
    nbytes = int(n * k * 0.5625)
    tiny = torch.zeros(1, device="cuda")
    us = graph_time_us([lambda: tiny.add_(1.0)], launches=100, reps=7)
    print(f"baseline 1-element add_ (graph per-launch cost): {us:7.2f} us", flush=True)
    half = nbytes // 2
    pairs = [
        tuple(torch.empty(half, dtype=torch.uint8, device="cuda") for _ in range(2))
        for _ in range(copies_to_exceed_l2(nbytes))
    ]
    us = graph_time_us([lambda d=d, s=s: d.copy_(s) for d, s in pairs], launches=100, reps=7)
    print(
        f"baseline copy_ of {half / 1e6:.1f} MB (moves the {nbytes / 1e6:.1f} MB of N={n} K={k}): "
        f"{us:7.2f} us  {nbytes / us / 1e6:6.2f} TB/s",
        flush=True,
    )


def operands(n: int, k: int, m: int, cfg: GemmConfig):
    """Random packed weights in enough copies to exceed L2, x, alpha and the stream-K workspace."""
    nt, kc = -(-n // 128) * 2, -(-k // 128)  # 64-row tiles (N padded to 128), K chunks
    w = torch.randint(-(2**31), 2**31 - 1, (nt, kc, 2, 128, 4), dtype=torch.int32, device="cuda")
    s = torch.randint(0, 140, (w.shape[0], w.shape[1], 32, 16), dtype=torch.uint8, device="cuda")
    extra = copies_to_exceed_l2(w.numel() * 4 + s.numel()) - 1
    copies = [(w, s)] + [(w.clone(), s.clone()) for _ in range(extra)]
    x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    alpha = torch.ones(1, device="cuda")
    G.reserve_workspace(0, m, n, cfg)
    return copies, x, alpha, G.workspace_of(0, cfg)


def launcher(fn, grid: int, total: int, x, alpha, out_addr: int, ws, m: int, n: int, k: int):
    """call(w, s): one launch of compiled kernel fn on torch's current stream."""
    from cuda.bindings import driver as cuda_driver
    from cutlass import BFloat16, Int64
    from cutlass.cute.runtime import make_ptr
    from cutlass.cute.typing import AddressSpace

    def call(cw, cs):
        stream = cuda_driver.CUstream(torch.cuda.current_stream().cuda_stream)
        fn(
            make_ptr(BFloat16, x.data_ptr(), AddressSpace.gmem, assumed_align=16),
            Int64(cw.data_ptr()),
            Int64(cs.data_ptr()),
            Int64(alpha.data_ptr()),
            Int64(out_addr),
            Int64(ws.data_ptr()),
            m,
            n,
            k,
            -(-k // 128),
            total,
            grid,
            0,
            stream,
        )

    return call


def run(
    n: int, k: int, m: int, cfg: GemmConfig, variants: list[tuple[int, ...]], sync=None, cublas=False
) -> None:
    """Time (probe, accs, dsmem_split, closer_bias) variants of one config and shape, interleaved."""
    copies, x, alpha, ws = operands(n, k, m, cfg)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    nbytes = n * k * 0.5625
    names, call_sets = [], []
    for probe, accs, dsmem, bias in variants:
        tag = f"accs={accs} ds={dsmem} b={bias}"
        try:
            # ctas_per_sm is a run-time value: one compile serves all
            kernel_cfg = dataclasses.replace(cfg, ctas_per_sm=1, dsmem_split=dsmem)
            fn = compiled(kernel_cfg, probe, sync, accs, bias)
            grid, total, _ = stream_k_grid(m, n, k, kernel_cfg if dsmem > 1 else cfg, 132)
        except ValueError as e:  # a combination the kernel does not build (e.g. probe 12 on wgmma)
            print(f"skip {cfg.name} probe {probe} mma={sync} {tag}: {e}", flush=True)
            continue

        call = launcher(fn, grid, total, x, alpha, out.data_ptr(), ws, m, n, k)
        mma = {None: "auto", True: "sync", False: "wgmma"}[sync]
        label = PROBE_NAMES[probe] if probe < 20 else f"{'prefetch' if probe >= 30 else 'no pf'}+{probe % 10}"
        names.append(f"probe {probe} ({label:9s}) {cfg.name} mma={mma} {tag} grid={grid}")
        call_sets.append([lambda cw=cw, cs=cs, call=call: call(cw, cs) for cw, cs in copies])
    if cublas:
        n_copies = copies_to_exceed_l2(n * k * 2)
        bf16 = [torch.randn(n, k, device="cuda").to(torch.bfloat16) for _ in range(n_copies)]
        names.append("cuBLAS bf16 torch.matmul")
        call_sets.append([lambda wb=wb: torch.matmul(x, wb.t(), out=out) for wb in bf16])
    times = interleaved_graph_times_us(call_sets, [100] * len(call_sets), reps=7)
    for name, us in zip(names, times, strict=True):
        print(f"{name} N={n} K={k} M={m}: {us:7.2f} us  {nbytes / us / 1e6:6.2f} TB/s", flush=True)


def timeline(n: int, k: int, m: int, cfg: GemmConfig, bias: int = 0) -> None:
    """Probe 13: replay a graph of launches (weights rotating past L2, as the timed probes), then
    read the last launch's %globaltimer stamps and print each phase's end across CTAs, by role."""
    from nvfp4_kit.kernels.gemm_sm90_kernel import TIMELINE_STAMPS

    copies, x, alpha, ws = operands(n, k, m, cfg)
    grid, total, _ = stream_k_grid(m, n, k, cfg, 132)
    grid_y = -(-m // cfg.bn)
    stamp_at = -(-m * n * 2 // 64) * 64  # bytes: the stamps follow the outputs (kernel.TIMELINE_STAMPS)
    buf = torch.zeros(stamp_at + grid * grid_y * 64, dtype=torch.uint8, device="cuda")
    call = launcher(
        compiled(dataclasses.replace(cfg, ctas_per_sm=1), 13, bias=bias),
        grid,
        total,
        x,
        alpha,
        buf.data_ptr(),
        ws,
        m,
        n,
        k,
    )
    graph_time_us([lambda cw=cw, cs=cs: call(cw, cs) for cw, cs in copies], launches=100, reps=3)
    torch.cuda.synchronize()
    stamps = buf[stamp_at:].view(torch.int64).view(grid * grid_y, 8)[:, : len(TIMELINE_STAMPS)].cpu()
    t = (stamps - stamps[:, 0].min()).double() / 1000.0  # us since the first CTA started
    kc = -(-k // 128)
    role = []
    cuts = run_cuts(grid, total, kc, bias)
    for run in range(grid):  # (token tile 0's runs; the other token tiles repeat them)
        g0, g1 = cuts[run], cuts[run + 1]
        if closes_tile(g0, g1, kc):
            role.append("closing")
        elif (g1 - 1) // kc == g0 // kc and g1 % kc:
            role.append("parked whole")
        else:
            role.append("other")
    role = role * grid_y
    print(
        f"timeline {cfg.name} bias {bias} N={n} K={k} M={m}: grid {grid} x {grid_y}, {total / grid:.2f} "
        "chunks per run; us since the first CTA's start, min / median / max over the CTAs of a role"
    )
    for r in ("closing", "parked whole", "other"):
        rows = torch.tensor([i for i, x_ in enumerate(role) if x_ == r], dtype=torch.long)
        if len(rows) == 0:
            continue
        print(f"  {r} ({len(rows)} CTAs)")
        for j, name in enumerate(TIMELINE_STAMPS):
            if j == 5 and r != "closing":  # (only closing runs stamp it)
                continue
            v = t[rows, j]
            print(f"    {name:14s} {v.min():7.2f} {v.median():7.2f} {v.max():7.2f}")
        if r == "closing":
            v = t[rows, 5] - t[rows, 4]  # fix-up done - main loop end
            print(f"    {'fix-up wait':14s} {v.min():7.2f} {v.median():7.2f} {v.max():7.2f}")
    last = int(t[:, 6].argmax())
    shown = [j for j in range(len(TIMELINE_STAMPS)) if j != 5 or role[last] == "closing"]
    print(f"  last to store: CTA {last} ({role[last]}): " + ", ".join(
        f"{TIMELINE_STAMPS[j]} {t[last, j]:.2f}" for j in shown))


if __name__ == "__main__":
    main()
