"""`python -m nvfp4_kit.tune`: measure every candidate kernel config per layer shape and M bucket.

Writes the winners into the tuning table under NVFP4_KIT_CACHE_DIR (read by nvfp4_kit.dispatch), or
into `--out`. Needs a GPU; SM90 only for now. The committed H100 default,
nvfp4_kit/data/tuning_sm90_h100.json, comes from `benchmarks/bench_gemm.py bench --table-out`, which
times the same candidates (interleaved, next to the peers) on the benchmark's shapes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from . import dispatch, reference
from .shapes import parse_shapes
from .timing import copies_to_exceed_l2, graph_time_us

log = logging.getLogger("nvfp4_kit.tune")


def _random_weight(n: int, k: int, device):
    w = torch.randn(n, k, device=device, dtype=torch.bfloat16)
    q = reference.quantize_weight(w)
    return q["weight"], q["weight_scale"]


def tune_shape(n: int, k: int, m_values: list[int], table: dispatch.TuningTable) -> list[dict]:
    from .kernels import gemm_sm90

    device = torch.device("cuda")
    w_packed, w_scale = _random_weight(n, k, device)
    w, s = gemm_sm90.prepare_weight(w_packed, w_scale)
    extra = copies_to_exceed_l2(w.numel() * w.element_size() + s.numel()) - 1
    copies = [(w, s)] + [(w.clone(), s.clone()) for _ in range(extra)]
    alpha = torch.ones(1, device=device)
    rows = []
    for m in m_values:
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        out = torch.empty(m, n, device=device, dtype=torch.bfloat16)
        best = None
        for cfg in gemm_sm90.candidate_configs(m, n, k):
            calls = [lambda cw=cw, cs=cs, cfg=cfg, x=x, out=out:
                     gemm_sm90.gemm_w4a16_out(x, cw, cs, alpha, out, cfg) for cw, cs in copies]
            try:
                us = graph_time_us(calls)
            except Exception as exc:  # a config that cannot run this shape is skipped, loudly
                log.warning("N=%d K=%d M=%d %s failed: %s", n, k, m, cfg.name, exc)
                continue
            rows.append({"n": n, "k": k, "m": m, "config": cfg.name, "us": us})
            if best is None or us < best[1]:
                best = (cfg, us)
        if best is not None:
            table.entries[(n, k, "bfloat16", "w4a16", dispatch.m_bucket(m))] = {
                "n": n, "k": k, "dtype": "bfloat16", "mode": "w4a16", "m_bucket": dispatch.m_bucket(m),
                "config": best[0].to_dict(), "us": round(best[1], 2),
            }
            print(f"N={n:6d} K={k:6d} M={m:5d}: {best[0].name} {best[1]:.2f} us")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shapes", default="llama-3.1-8b", help="preset or NxK list")
    p.add_argument("--m", default=",".join(str(b) for b in dispatch.M_BUCKETS))
    p.add_argument("--out", type=Path, help="write this table file instead of the user cache")
    args = p.parse_args(argv)
    try:
        ms = [int(v) for v in args.m.split(",")]
    except ValueError:
        p.error(f"--m: {args.m!r}: expected a comma list of integers")
    off_bucket = [m for m in ms if m not in dispatch.M_BUCKETS]
    if off_bucket:  # an entry serves its whole bucket: time it at the bucket's largest M
        p.error(f"--m: {off_bucket[0]} is not an M bucket ({', '.join(map(str, dispatch.M_BUCKETS))})")
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as exc:
        p.error(f"--shapes: {exc}")
    if not torch.cuda.is_available():
        raise SystemExit("nvfp4_kit.tune needs a GPU")
    from . import device

    family = device.family("cuda")
    if family != "sm90":
        raise SystemExit(f"nvfp4_kit.tune tunes the SM90 kernels; this GPU is {family}")
    table = dispatch.TuningTable(family)
    for _name, (n, k) in shapes.items():
        tune_shape(n, k, ms, table)
    path = args.out or dispatch.user_table_path(family)
    table.save(path)
    print(f"wrote {len(table.entries)} entries to {path}")


if __name__ == "__main__":
    main()
