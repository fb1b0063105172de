"""Dev probe (not a benchmark of record): host time per eager call of the SM90 GEMM.

Eager callers (prefill without CUDA graphs, vLLM's piecewise graphs between captured ranges) pay the
Python + launch cost of every call. This times back-to-back eager calls of a small GEMM, whose GPU
time is a few microseconds, so the host dominates, for three entry points and cuBLAS, then prints
where the host time of the public op goes (cProfile).
    python benchmarks/dev_host_overhead.py
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvfp4_kit import ops, reference  # noqa: E402
from nvfp4_kit.kernels import gemm_sm90 as G  # noqa: E402


def per_call_us(fn, calls: int = 500) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    n, k, m = 4096, 4096, 1
    q = reference.quantize_weight(torch.randn(n, k, device="cuda"))
    pw = ops.prepare_weight(q["weight"], q["weight_scale"], q["weight_scale_2"], backend="nvfp4_kit")
    x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    wb = torch.randn(n, k, device="cuda").to(torch.bfloat16)
    cfg = G.heuristic_config(m, n, k)
    rows = [
        ("torch.matmul bf16 (cuBLAS)", lambda: torch.matmul(x, wb.T, out=out)),
        ("ops.linear (public op)", lambda: ops.linear(x, pw, out)),
        ("gemm_sm90.gemm_w4a16_out",
         lambda: G.gemm_w4a16_out(x, pw.weight, pw.weight_scale, pw.alpha, out, cfg)),
    ]
    for name, fn in rows:
        print(f"{name:32s} {per_call_us(fn):8.1f} us per eager call (M={m}, N={n}, K={k})", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(200):
        ops.linear(x, pw, out)
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
