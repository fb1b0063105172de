"""Batch-1 decode ms/token of mini_engine on the Llama-3.1-8B shape, NVFP4 vs bf16, dummy weights.

    python scripts/bench_decode.py --out OUTDIR [--configs nvfp4,bf16] [--prompt-len 512] [--decode 128]

Per config (same process, one after the other): an engine with CUDA graphs on random weights built on
the GPU; one request of `prompt-len` random tokens generating 1 + `decode` tokens (ignore_eos). Reports
  - step_ms: median wall time of an engine.step() during decode (host work + graph replay + sampling +
    the step's sync): the ms/token a user sees;
  - graph_ms: median GPU time of the batch-1 graph replays inside those steps (CUDA events around
    each replay), so step_ms - graph_ms is the host's share;
  - where the GPU time goes: torch.profiler over eager batch-1 forwards (the kernels the graph holds)
    with the sequence's real context length, kernel time summed by category.
Writes bench_decode.json ({"device","commit","versions","records"}), bench_decode.md and, when
matplotlib is installed, bench_decode.png into OUTDIR.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvfp4_kit.provenance import git_commit  # noqa: E402

CATEGORIES = (  # first match wins; kernel names lower-cased
    ("attention (triton)", ("_decode_kernel", "_reduce_kernel", "_rope_store", "_prefill_kernel")),
    ("norm + silu (triton)", ("_rmsnorm", "_silu_mul")),
    ("nvfp4 gemm (kit)", ("sm90w4a16", "w4a16", "cutlass_kernel", "kernel_cutlass", "cute")),
    ("activation quantize (kit)", ("quant",)),
    ("bf16 gemm / lm_head (cuBLAS)", ("gemv", "gemm", "xmma", "nvjet", "cublas", "splitk")),
    ("embedding", ("embedding", "index_select")),
)


def category(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def stage_decode(runner, ctx: int) -> None:
    """Stages a batch-1 decode at context `ctx` (position 0, no KV write, reads blocks 0..ctx/bs)."""
    runner.graphs._stage_dummy(1)
    o = runner.layout(1, 1, 0)
    nblocks = -(-ctx // runner.block_size)
    runner.host_np[o[3]] = ctx
    runner.host_np[o[6]:o[6] + nblocks] = range(nblocks)
    runner.dev_buf[:o[7]].copy_(runner.host_buf[:o[7]])


def profile_forward(runner, ctx: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    stage_decode(runner, ctx)
    with torch.inference_mode():
        runner.graphs._forward(1)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                runner.graphs._forward(1)
            torch.cuda.synchronize()
    per_cat: dict[str, float] = {}
    per_kernel: dict[str, float] = {}
    for e in prof.events():
        dev_us = getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0)
        if e.device_type != torch.autograd.DeviceType.CUDA or not dev_us:
            continue
        per_kernel[e.name] = per_kernel.get(e.name, 0.0) + dev_us / 5 / 1000
        per_cat[category(e.name)] = per_cat.get(category(e.name), 0.0) + dev_us / 5 / 1000
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:12]
    return {"category_ms": per_cat, "top_kernels_ms": dict(top), "kernel_ms_total": sum(per_cat.values())}


class ReplayTimer:
    """Wraps the runner's graph replay with CUDA events (read after the run: no extra syncs)."""

    def __init__(self, graphs):
        self.graphs, self.orig, self.events = graphs, graphs.replay, []
        graphs.replay = self

    def __call__(self, g: int):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = self.orig(g)
        end.record()
        self.events.append((start, end))
        return out

    def median_ms(self, last: int) -> float:
        torch.cuda.synchronize()
        self.graphs.replay = self.orig
        return statistics.median(s.elapsed_time(e) for s, e in self.events[-last:])


def bench(config: str, prompt_len: int, decode: int) -> dict:
    from mini_engine import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM("llama-3.1-8b", load_format="dummy", quantization="nvfp4" if config == "nvfp4" else "none",
              max_num_seqs=4, max_model_len=2048, max_num_batched_tokens=max(prompt_len, 64),
              kv_cache_blocks=512, enable_prefix_caching=False)
    init_s = time.perf_counter() - t0
    eng = llm.engine
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 128000, (prompt_len,), generator=gen).tolist()
    params = SamplingParams(temperature=0, max_tokens=decode + 1, ignore_eos=True)
    eng.add_request("warm", prompt[:64], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    while eng.has_unfinished_requests():
        eng.step()
    eng.add_request("r", prompt, params)
    timer = ReplayTimer(eng.runner.graphs)
    steps = []
    while eng.has_unfinished_requests():
        t = time.perf_counter()
        eng.step()
        torch.cuda.synchronize()
        steps.append((time.perf_counter() - t) * 1000)
    decode_steps = steps[-decode:]
    rec = {
        "config": config, "batch": 1, "prompt_len": prompt_len, "decode_tokens": decode,
        "init_s": round(init_s, 1), "prefill_ms": round(steps[0], 2),
        "step_ms_median": round(statistics.median(decode_steps), 3),
        "step_ms_mean": round(statistics.mean(decode_steps), 3),
        "graph_ms_median": round(timer.median_ms(decode), 3),
        "weight_gib": round(sum(t.numel() * t.element_size() for t in _weights(eng.runner)) / 2**30, 2),
        "kv_blocks_used_after": eng.stats()["kv_blocks_used"],
    }
    rec["profile"] = profile_forward(eng.runner, prompt_len + decode // 2)
    del llm, eng
    gc.collect()  # the runner and its graphs refer to each other
    torch.cuda.empty_cache()
    return rec


def _weights(runner):
    seen = {}
    for lin in runner.model.linears():
        for t in ((lin.pw.weight, lin.pw.weight_scale) if lin.pw is not None else (lin.weight,)):
            seen[t.data_ptr()] = t
    for p in runner.model.plain_params().values():
        seen[p.data_ptr()] = p
    return seen.values()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--configs", default="nvfp4,bf16")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    failed = []
    for cfg in args.configs.split(","):
        try:
            rec = bench(cfg, args.prompt_len, args.decode)
        except Exception:  # report, and still measure the other configuration
            import traceback

            traceback.print_exc()
            failed.append(cfg)
            continue
        records.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "profile"}), flush=True)
    commit = git_commit()
    import triton

    doc = {"device": torch.cuda.get_device_name(0), "commit": commit,
           "versions": {"torch": torch.__version__, "triton": triton.__version__}, "records": records}
    (args.out / "bench_decode.json").write_text(json.dumps(doc, indent=1))
    lines = [f"# batch-1 decode, Llama-3.1-8B shape, dummy weights, CUDA graphs ({doc['device']})", "",
             "| config | weights GiB | step ms/token (median) | graph GPU ms | prefill ms |",
             "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['config']} | {r['weight_gib']} | {r['step_ms_median']} | {r['graph_ms_median']} "
                     f"| {r['prefill_ms']} |")
    cats = sorted({c for r in records for c in r["profile"]["category_ms"]})
    lines += ["", "GPU kernel time per eager batch-1 forward (ms), by category:", "",
              "| category | " + " | ".join(r["config"] for r in records) + " |",
              "|---|" + "---|" * len(records)]
    for c in cats:
        vals = " | ".join(f"{r['profile']['category_ms'].get(c, 0.0):.3f}" for r in records)
        lines.append(f"| {c} | {vals} |")
    lines.append("| total | " + " | ".join(f"{r['profile']['kernel_ms_total']:.3f}" for r in records) + " |")
    for r in records:
        lines += ["", f"top kernels ({r['config']}):"] + [f"- {v:.3f} ms  {k[:110]}" for k, v in
                                                        r["profile"]["top_kernels_ms"].items()]
    table = "\n".join(lines)
    (args.out / "bench_decode.md").write_text(table + "\n")
    print(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        bottom = [0.0] * len(records)
        for c in cats:
            vals = [r["profile"]["category_ms"].get(c, 0.0) for r in records]
            ax.bar([r["config"] for r in records], vals, bottom=bottom, label=c)
            bottom = [b + v for b, v in zip(bottom, vals, strict=False)]
        ax.scatter([r["config"] for r in records], [r["step_ms_median"] for r in records], color="k",
                   zorder=3, label="engine step ms/token")
        ax.set_ylabel("ms per token (batch 1)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out / "bench_decode.png", dpi=120)
    except ImportError:
        print("matplotlib not installed: no PNG")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
