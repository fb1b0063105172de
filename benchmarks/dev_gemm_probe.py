"""Dev probe (not a benchmark of record): where does decode time go in the SM90 GEMM kernel?

Times the real kernel against two crippled copies on the same shape (results are garbage there):
probe 1 = no wgmma (data movement + dequant), probe 2 = data movement only (pipeline + bulk copies).
    python benchmarks/dev_gemm_probe.py --shape 28672x4096 --m 1
    python benchmarks/dev_gemm_probe.py --shape 4096x4096 --probes 0 --cfg "8,1,4,2,3;8,1,8,2,4"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvfp4_kit.kernels import gemm_sm90 as G  # noqa: E402
from nvfp4_kit.kernels.gemm_sm90_config import GemmConfig, stream_k_grid  # noqa: E402
from nvfp4_kit.timing import copies_to_exceed_l2, graph_time_us  # noqa: E402


def compiled(cfg: GemmConfig, probe: int):
    import cutlass.cute as cute

    from nvfp4_kit.kernels.gemm_sm90_kernel import Sm90W4A16Kernel

    kern = Sm90W4A16Kernel(cfg.bn, cfg.wgs, cfg.stages, cfg.per_step, bool(cfg.pdl), probe)
    return cute.compile(kern, *G._compile_args())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="28672x4096")
    p.add_argument("--m", type=int, default=1)
    p.add_argument("--cfg", default="8,1,8,2,3", help='"bn,wgs,stages,per_step,ctas_per_sm;..."')
    p.add_argument("--probes", default="0,1,2", help="0 full kernel, 1 no wgmma, 2 data movement only")
    a = p.parse_args()
    n, k = (int(v) for v in a.shape.split("x"))
    for spec in a.cfg.split(";"):
        bn, wgs, st, ps, c = (int(v) for v in spec.split(","))
        cfg = GemmConfig(bn, wgs, st, ctas_per_sm=c, per_step=ps)
        run(n, k, a.m, cfg, [int(v) for v in a.probes.split(",")])


def run(n: int, k: int, m: int, cfg: GemmConfig, probes: list[int]) -> None:
    from cuda.bindings import driver as cuda_driver
    from cutlass import BFloat16, Int64
    from cutlass.cute.runtime import make_ptr
    from cutlass.cute.typing import AddressSpace

    nt, kc = -(-n // 128) * 2, -(-k // 128)  # 64-row tiles (N padded to 128), K chunks
    w = torch.randint(-(2**31), 2**31 - 1, (nt, kc, 2, 128, 4), dtype=torch.int32, device="cuda")
    s = torch.randint(0, 140, (w.shape[0], w.shape[1], 32, 16), dtype=torch.uint8, device="cuda")
    extra = copies_to_exceed_l2(w.numel() * 4 + s.numel()) - 1
    copies = [(w, s)] + [(w.clone(), s.clone()) for _ in range(extra)]
    x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    alpha = torch.ones(1, device="cuda")
    grid, total, n_tiles = stream_k_grid(m, n, k, cfg, 132)
    G.reserve_workspace(0, m, n, cfg)
    ws, sem = G._workspaces[0]
    nbytes = n * k * 0.5625
    for probe in probes:
        fn = compiled(cfg, probe)

        def call(cw, cs, fn=fn):
            stream = cuda_driver.CUstream(torch.cuda.current_stream().cuda_stream)
            fn(
                make_ptr(BFloat16, x.data_ptr(), AddressSpace.gmem, assumed_align=16),
                Int64(cw.data_ptr()),
                Int64(cs.data_ptr()),
                Int64(alpha.data_ptr()),
                Int64(out.data_ptr()),
                Int64(ws.data_ptr()),
                Int64(sem.data_ptr()),
                m,
                n,
                k,
                n_tiles,
                -(-k // 128),
                total,
                grid,
                0,
                stream,
            )

        us = graph_time_us([lambda cw=cw, cs=cs: call(cw, cs) for cw, cs in copies], launches=100, reps=7)
        print(
            f"probe {probe} ({['full', 'no wgmma', 'data only'][probe]:9s}) {cfg.name} N={n} K={k} "
            f"M={m}: {us:7.2f} us  {nbytes / us / 1e6:6.2f} TB/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
