"""Benchmark the NVFP4 activation quantize: ours vs plain-torch reference vs a bf16 copy (yardstick).

    python benchmarks/bench_quantize.py [--out benchmarks/results] [--quick] [--tune]
    python benchmarks/bench_quantize.py --plot benchmarks/results/quantize_h100_<date>.json

Kernel time: median over replays of a CUDA graph of many launches, divided by the launch count
(nvfp4_kit.timing.graph_time_us); inputs rotate over copies whose total exceeds twice L2 where that
stays under 16 copies (small problems stay L2-resident, as an activation just written by the previous
layer is). Launch overhead (host time of one eager Python call) is measured apart. Bytes: read
M*K*2 + written M*K/2 + scale bytes; the bf16 copy moves 2*M*K*2. Grid: M = 1, 2, 4, ..., 32768 x
K in {128, 256, 512, 1024, 2048, 4096, 5120, 8192, 16384} for ours and the copy; the slow torch
reference only at M in {1, 16, 128, 1024, 8192}, M*K <= 2^26; quantize_dequantize_out and
global_scale_out at M in {1, 128, 512, 8192}, K in {4096, 5120}. --tune adds other QuantConfigs on
the linear layout at the --quick points (records "nvfp4_kit:<config>").
Writes quantize_<gpu>_<date>.json (+ .png: --plot).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nvfp4_kit import reference  # noqa: E402
from nvfp4_kit.formats import scale_shape  # noqa: E402
from nvfp4_kit.provenance import git_commit  # noqa: E402
from nvfp4_kit.timing import graph_time_us  # noqa: E402

M_ALL = [2**i for i in range(16)]
K_ALL = [128, 256, 512, 1024, 2048, 4096, 5120, 8192, 16384]
M_REF = [1, 16, 128, 1024, 8192]
M_QUICK = [1, 16, 128, 512, 2048, 8192, 32768]
K_QUICK = [128, 4096, 5120, 16384]


def _bytes(m: int, k: int, layout: str) -> int:
    rows, cols = scale_shape(m, k, layout)
    return m * k * 2 + m * k // 2 + rows * cols


def _copies(nbytes: int) -> int:
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    return max(1, min(16, -(-2 * l2 // nbytes)))


def _launches(nbytes: int) -> int:
    est_us = nbytes / 2.5e6 + 3.0  # ~2.5 TB/s
    return int(max(10, min(200, 20000 / est_us)))


def _inputs(m: int, k: int, layout: str, n: int):
    g = torch.full((1,), 448 * 6 / 8.0, device="cuda")
    sets = []
    for _ in range(n):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        packed = torch.empty(m, k // 2, dtype=torch.uint8, device="cuda")
        sf = torch.empty(scale_shape(m, k, layout), dtype=torch.float8_e4m3fn, device="cuda")
        sets.append((x, g, packed, sf))
    return sets


def bench_ours(m, k, layout, config=None) -> float:
    from nvfp4_kit.kernels import quantize

    nbytes = _bytes(m, k, layout)
    sets = _inputs(m, k, layout, _copies(nbytes))
    calls = [lambda s=s: quantize.quantize_out(s[0], s[1], layout, s[2], s[3], config=config)
             for s in sets]
    return graph_time_us(calls, launches=_launches(nbytes), reps=10, warmup=2)


def bench_reference(m, k, layout) -> float:
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    g = torch.full((1,), 448 * 6 / 8.0, device="cuda")
    return graph_time_us([lambda: reference.quantize(x, g, layout)], launches=10, reps=5, warmup=2)


def bench_copy(m, k) -> float:
    nbytes = 4 * m * k
    pairs = [(torch.randn(m, k, device="cuda", dtype=torch.bfloat16),
              torch.empty(m, k, device="cuda", dtype=torch.bfloat16)) for _ in range(_copies(nbytes))]
    calls = [lambda p=p: p[1].copy_(p[0]) for p in pairs]
    return graph_time_us(calls, launches=_launches(nbytes), reps=10, warmup=2)


def _host_us(call, calls: int) -> float:
    for _ in range(20):
        call()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        call()
    host = (time.perf_counter() - t0) / calls * 1e6
    torch.cuda.synchronize()
    return round(host, 2)


def launch_overhead_us(m=1, k=4096, calls=2000) -> dict[str, float]:
    """Host time of one eager call, split: whole quantize_out; the compiled DSL callable alone
    (argument marshaling + cuLaunchKernel); building the 4 pointer objects; torch's empty kernel."""
    from nvfp4_kit.kernels import quantize

    (x, g, packed, sf), = _inputs(m, k, "linear", 1)
    fn = quantize._get("quantize", False, False, quantize.select_config(m, k))
    spec = ((x, "Uint32", 16), (g, "Float32", 4), (packed, "Uint32", 8), (sf, "Uint8", 1))
    ptrs, stream = quantize._ptrs(*spec), quantize._stream(x.device)
    mul, shift = quantize._magic(k // 16)
    return {
        "M": m, "K": k,
        "quantize_out_host_us": _host_us(lambda: quantize.quantize_out(x, g, "linear", packed, sf),
                                         calls),
        "dsl_call_host_us": _host_us(lambda: fn(*ptrs, m, k // 16, mul, shift, stream), calls),
        "make_ptrs_host_us": _host_us(lambda: quantize._ptrs(*spec), calls),
        "torch_empty_kernel_host_us": _host_us(lambda: packed.zero_(), calls),
    }


def bench_extra(m, k) -> dict[str, float]:
    """quantize_dequantize_out and global_scale_out kernel times (CUDA graph)."""
    from nvfp4_kit.kernels import quantize

    n = _copies(m * k * 4)
    xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(n)]
    g = torch.full((1,), 448 * 6 / 8.0, device="cuda")
    outs = [torch.empty(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(n)]
    gs = torch.empty(1, device="cuda")
    qdq = [lambda i=i: quantize.quantize_dequantize_out(xs[i], g, outs[i]) for i in range(n)]
    amax = [lambda i=i: quantize.global_scale_out(xs[i], gs) for i in range(n)]
    return {"qdq": graph_time_us(qdq, launches=_launches(4 * m * k), reps=10, warmup=2),
            "global_scale": graph_time_us(amax, launches=_launches(2 * m * k), reps=10, warmup=2)}


def _versions() -> dict[str, str]:
    import cutlass

    import nvfp4_kit

    return {"torch": torch.__version__, "cutlass_dsl": getattr(cutlass, "__version__", "?"),
            "nvfp4_kit": nvfp4_kit.__version__, "python": platform.python_version(),
            "cuda": str(torch.version.cuda)}


def run(quick: bool, tune: bool) -> dict:
    from nvfp4_kit.kernels.quantize import QuantConfig

    ms = M_QUICK if quick else M_ALL
    ks = K_QUICK if quick else K_ALL
    records = []

    def add(backend, layout, m, k, us):
        rec = {"backend": backend, "layout": layout, "M": m, "K": k, "median_us": round(us, 3)}
        nbytes = {"bf16_copy": 4 * m * k, "nvfp4_kit_qdq": 4 * m * k,
                  "nvfp4_kit_global_scale": 2 * m * k}.get(backend) or _bytes(m, k, layout)
        rec["GBps"] = round(nbytes / us / 1e3, 1)
        records.append(rec)
        print(f"{backend:24s} {layout:15s} M={m:6d} K={k:6d} {us:10.2f} us {rec['GBps']:8.1f} GB/s",
              flush=True)

    for k in ks:
        for m in ms:
            for layout in ("linear", "swizzled_128x4"):
                add("nvfp4_kit", layout, m, k, bench_ours(m, k, layout))
            add("bf16_copy", "-", m, k, bench_copy(m, k))
            if m in M_REF and m * k <= 2**26:
                add("reference_torch", "linear", m, k, bench_reference(m, k, "linear"))
            if k in (4096, 5120) and m in (1, 128, 512, 8192):
                extra = bench_extra(m, k)
                add("nvfp4_kit_qdq", "-", m, k, extra["qdq"])
                add("nvfp4_kit_global_scale", "-", m, k, extra["global_scale"])
            if tune and m in M_QUICK and k in K_QUICK:
                for bpt, warps in ((1, 2), (1, 4), (1, 8), (2, 4), (4, 4)):
                    cfg = QuantConfig(bpt, warps)
                    add(f"nvfp4_kit:{cfg.name}", "linear", m, k, bench_ours(m, k, "linear", cfg))
    # the same points timed again: the run-to-run spread that any comparison must exceed
    repeat = [{"layout": lay, "M": m, "K": k, "median_us": round(bench_ours(m, k, lay), 3)}
              for lay in ("linear", "swizzled_128x4") for m, k in ((8192, 4096), (128, 4096))]
    props = torch.cuda.get_device_properties(0)
    return {"device": props.name, "repeat": repeat, "commit": git_commit(), "versions": _versions(),
            "date": datetime.date.today().isoformat(),
            "method": "CUDA-graph replay median / launches; inputs rotated past 2x L2 (<=16 copies)",
            "launch_overhead": launch_overhead_us(), "records": records}


def _table(result: dict) -> str:
    rows = {}
    for r in result["records"]:
        rows.setdefault((r["M"], r["K"]), {})[(r["backend"], r["layout"])] = r
    copy_peak = max((r["GBps"] for r in result["records"] if r["backend"] == "bf16_copy"), default=0)
    lines = [f"device: {result['device']}   bf16-copy peak {copy_peak:.0f} GB/s",
             f"{'M':>6} {'K':>6} {'ours lin us':>11} {'ours swz us':>11} {'GB/s':>7} {'%copy':>6}"
             f" {'copy us':>8} {'torch ref us':>12}"]
    for (m, k), d in sorted(rows.items(), key=lambda t: (t[0][1], t[0][0])):
        lin, swz = d.get(("nvfp4_kit", "linear")), d.get(("nvfp4_kit", "swizzled_128x4"))
        cp, ref = d.get(("bf16_copy", "-")), d.get(("reference_torch", "linear"))
        if lin is None:
            continue
        lines.append(f"{m:6d} {k:6d} {lin['median_us']:11.2f} {swz['median_us']:11.2f} "
                     f"{lin['GBps']:7.0f} {100 * lin['GBps'] / copy_peak:6.1f} "
                     f"{cp['median_us'] if cp else float('nan'):8.2f} "
                     f"{ref['median_us'] if ref else float('nan'):12.1f}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for k, ls in ((4096, "-"), (5120, "--"), (16384, ":")):
        for backend, layout, color in (("nvfp4_kit", "linear", "C0"),
                                       ("nvfp4_kit", "swizzled_128x4", "C1"),
                                       ("bf16_copy", "-", "C2"), ("reference_torch", "linear", "C3")):
            pts = sorted((r["M"], r["median_us"], r["GBps"]) for r in result["records"]
                         if r["backend"] == backend and r["layout"] == layout and r["K"] == k)
            if not pts:
                continue
            label = f"{backend} {layout if layout != '-' else ''} K={k}"
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], ls, color=color, marker=".",
                         label=label)
            axes[1].plot([p[0] for p in pts], [p[2] for p in pts], ls, color=color, marker=".")
    for ax, ylabel in ((axes[0], "kernel time (us, CUDA graph)"), (axes[1], "GB/s (read+write)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M (rows)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"NVFP4 quantize on {result['device']} ({result.get('date', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="directory of the JSON (default benchmarks/results); with --plot, of "
                        "the PNG (default: beside the JSON)")
    parser.add_argument("--quick", action="store_true", help="K in {128, 4096, 5120, 16384}, 7 values of M")
    parser.add_argument("--tune", action="store_true", help="also time every QuantConfig")
    parser.add_argument("--plot", help="only draw the PNG of an existing JSON")
    args = parser.parse_args()
    if args.plot:
        src = Path(args.plot)
        result = json.loads(src.read_text())
        png = src.with_suffix(".png")
        if args.out:
            png = Path(args.out) / png.name
            png.parent.mkdir(parents=True, exist_ok=True)
        plot(result, png)
        print(f"wrote {png}")
        print(_table(result))
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("bench_quantize.py: needs a CUDA GPU (--plot runs anywhere)")
    result = run(args.quick, args.tune)
    gpu = "h100" if "H100" in result["device"] else result["device"].split()[-1].lower()
    out = Path(args.out or ROOT / "benchmarks" / "results") / f"quantize_{gpu}_{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(_table(result))
    print(f"launch overhead: {result['launch_overhead']}")
    print(f"repeat: {result['repeat']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
