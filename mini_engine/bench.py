"""`python -m mini_engine.bench`: serving benchmark over concurrency levels, like `vllm bench serve`.

An OpenAI-compatible streaming client that knows nothing of the engine: it works unchanged against
vLLM or SGLang (--base-url). Random token-id prompts (fixed seed, --input-len/--output-len, default
1024/128), ignore_eos, closed-loop concurrency levels with max(4c, 32) requests each (or
--max-seconds-per-level). Metrics per level: see mini_engine/benchmark/metrics.py. Output: JSON
{"device","commit","versions","records",...}, a CSV and a PNG beside it, and a table on stdout.

    # against a running server
    python -m mini_engine.bench --base-url http://127.0.0.1:8000 --concurrency 1,2,4,8
    # launch mini_engine per configuration, sweep, stop it; all configurations on one chart
    python -m mini_engine.bench --launch nvfp4 bf16 \
        --server-args "--model llama-3.1-8b --load-format dummy" --out results/serving.json
    # re-plot or merge saved results
    python -m mini_engine.bench --plot-only a.json b.json --out merged.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from mini_engine.benchmark.dataset import random_requests
from mini_engine.benchmark.launch import ServerProcess, parse_launch
from mini_engine.benchmark.metrics import summarize
from mini_engine.benchmark.plot import plot_records
from mini_engine.benchmark.report import (
    environment,
    format_table,
    load_results,
    merge_results,
    write_results,
)
from mini_engine.benchmark.runner import run_level, wait_for_health

log = logging.getLogger("mini_engine.bench")

DEFAULT_LEVELS = "1,2,4,8,16,32,64,128,256,512"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mini_engine.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    t = ap.add_argument_group("target")
    t.add_argument("--base-url", default="http://127.0.0.1:8000")
    t.add_argument("--endpoint", default="/v1/completions",
                   choices=["/v1/completions", "/v1/chat/completions"])
    t.add_argument("--model", default=None, help="model name to send (default: first of /v1/models)")
    t.add_argument("--config-name", default="server", help="record name with --base-url")
    t.add_argument("--launch", nargs="+", metavar="NAME[=ARGS]", default=None,
                   help="start `python -m mini_engine.serve` per configuration (nvfp4, bf16, "
                        "or name='server args')")
    t.add_argument("--server-args", default="", help="args shared by every launched server")
    t.add_argument("--startup-timeout", type=float, default=900.0)
    w = ap.add_argument_group("workload")
    w.add_argument("--input-len", type=int, default=1024)
    w.add_argument("--output-len", type=int, default=128)
    w.add_argument("--random-range-ratio", type=float, default=0.0)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--concurrency", default=DEFAULT_LEVELS, help="comma-separated levels")
    w.add_argument("--num-prompts", type=int, default=None,
                   help="requests per level (default max(4*concurrency, 32))")
    w.add_argument("--max-seconds-per-level", type=float, default=None,
                   help="start no new request after this long; in-flight ones finish")
    w.add_argument("--time-budget-s", type=float, default=None,
                   help="skip the remaining levels once the whole run has taken this long")
    w.add_argument("--request-timeout", type=float, default=600.0)
    w.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True)
    w.add_argument("--temperature", type=float, default=0.0)
    w.add_argument("--tokenizer", default=None,
                   help="draw ids from this tokenizer's vocabulary (needed for text prompts)")
    w.add_argument("--prompt-format", choices=["ids", "text"], default="ids")
    w.add_argument("--extra-body", default=None, type=_json_object,
                   help="a JSON object merged into every request body")
    w.add_argument("--warmup", type=int, default=1, help="unmeasured requests before the sweep")
    o = ap.add_argument_group("output")
    o.add_argument("--out", type=Path, default=Path("serving_results.json"),
                   help="JSON path; the CSV and PNG go beside it")
    o.add_argument("--device-name", default=None, help="override the detected device name")
    o.add_argument("--commit", default=None, help="override the detected git commit")
    o.add_argument("--no-progress", action="store_true")
    o.add_argument("--plot-only", nargs="+", type=Path, default=None, metavar="JSON",
                   help="merge these result files into --out (JSON, CSV, PNG) and exit")
    return ap


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _levels(spec: str) -> list[int]:
    try:
        levels = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--concurrency {spec!r}: expected comma-separated integers") from None
    if not levels or min(levels) < 1:
        raise SystemExit(f"--concurrency {spec!r}: levels must be >= 1")
    return levels


async def _first_model(base_url: str) -> str | None:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            async with s.get(f"{base_url}/v1/models") as resp:
                data = (await resp.json())["data"]
                return data[0]["id"] if data else None
    except Exception as exc:  # a server without /v1/models: send no model name
        log.warning("GET %s/v1/models failed (%s); sending no model name", base_url, exc)
        return None


async def _kv_after(base_url: str) -> dict[str, float]:
    """Scrape /metrics for KV blocks / running requests (mini_engine or vLLM names), if exposed."""
    wanted = ("mini_engine:kv_cache_blocks_used", "mini_engine:num_requests_running",
              "mini_engine:num_requests_waiting", "vllm:kv_cache_usage_perc",
              "vllm:num_requests_running")
    out: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            async with s.get(f"{base_url}/metrics") as resp:
                text = await resp.text()
    except Exception:
        return out
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted and name not in out:
            try:
                out[name] = float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return out


async def sweep(base_url: str, config: str, args: argparse.Namespace, doc: dict[str, Any],
                t_start: float, tokenizer: Any, alive=None) -> dict[str, Any]:
    """All levels against one server; appends records to doc and rewrites the files after each."""
    url = base_url.rstrip("/") + args.endpoint
    model = args.model or await _first_model(base_url)
    common = dict(ignore_eos=args.ignore_eos, temperature=args.temperature, extra_body=args.extra_body,
                  request_timeout_s=args.request_timeout, progress=not args.no_progress)
    info: dict[str, Any] = {"config": config, "model": model, "levels_done": []}
    as_text = args.prompt_format == "text"
    if args.warmup:
        warm = random_requests(args.warmup, min(args.input_len, 16), 4, seed=args.seed + 10**6,
                               tokenizer=tokenizer, as_text=as_text)
        results, _ = await run_level(url, model, warm, min(args.warmup, 4), desc=f"{config} warmup",
                                     **common)
        info["warmup_failed"] = sum(not r.success for r in results)
    for c in _levels(args.concurrency):
        if args.time_budget_s and time.perf_counter() - t_start > args.time_budget_s:
            info["skipped_levels_after"] = c
            log.warning("time budget %.0f s used up: skipping concurrency >= %d",
                        args.time_budget_s, c)
            break
        n = args.num_prompts or max(4 * c, 32)
        reqs = random_requests(n, args.input_len, args.output_len, seed=args.seed + c,
                               range_ratio=args.random_range_ratio, tokenizer=tokenizer,
                               as_text=as_text)
        results, duration = await run_level(url, model, reqs, c, desc=f"{config} c={c}",
                                            max_seconds=args.max_seconds_per_level, **common)
        rec = summarize(results, duration, config=config, concurrency=c,
                        input_len=args.input_len, output_len=args.output_len)
        doc["records"].append(rec)
        info["levels_done"].append(c)
        write_results(args.out, doc)
        print(format_table([rec]).splitlines()[-1], flush=True)
        if alive is not None and not alive():
            info["error"] = f"server died during concurrency {c}"
            break
    info["metrics_after"] = await _kv_after(base_url)
    return info


async def _launch_all(args: argparse.Namespace, doc: dict[str, Any], tokenizer: Any) -> int:
    status = 0
    t_start = time.perf_counter()
    for spec in args.launch:
        cfg = parse_launch(spec, args.server_args)
        server = ServerProcess(cfg, args.out.parent)
        entry: dict[str, Any] = {"config": cfg.name, "cmd": server.cmd,
                                 "log": str(server.log_path)}
        doc["servers"].append(entry)
        print(f"[{cfg.name}] starting: {' '.join(server.cmd)}", flush=True)
        server.start()
        try:
            entry["ready_s"] = await wait_for_health(server.base_url, args.startup_timeout,
                                                     server.alive)
            print(f"[{cfg.name}] ready in {entry['ready_s']:.1f} s", flush=True)
            entry.update(await sweep(server.base_url, cfg.name, args, doc, t_start, tokenizer,
                                     server.alive))
        except Exception as exc:
            status = 1
            entry["error"] = f"{type(exc).__name__}: {exc}"
            print(f"[{cfg.name}] FAILED: {entry['error']}\n--- server log tail ---\n"
                  f"{server.log_tail()}", file=sys.stderr, flush=True)
        finally:
            entry["exit_code"] = server.stop()
            write_results(args.out, doc)
        if "error" in entry:
            status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    png = args.out.with_suffix(".png")
    if args.plot_only:
        doc = merge_results([load_results(p) for p in args.plot_only])
        write_results(args.out, doc)
        plot_records(doc["records"], png, title=doc.get("device", ""))
        print(format_table(doc["records"]))
        return 0
    _levels(args.concurrency)  # bad arguments stop here, not after a server has started and warmed up
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    doc: dict[str, Any] = {**environment(args.device_name), "args": vars(args) | {
        "out": str(args.out), "plot_only": None}, "servers": [], "records": []}
    if args.commit:
        doc["commit"] = args.commit
    if args.launch:
        status = asyncio.run(_launch_all(args, doc, tokenizer))
    else:
        info = asyncio.run(sweep(args.base_url, args.config_name, args, doc, time.perf_counter(),
                                 tokenizer))
        doc["servers"].append({"base_url": args.base_url, **info})
        status = 0
    write_results(args.out, doc)
    plotted = plot_records(doc["records"], png, title=f"{doc['device']}  in={args.input_len} "
                                                      f"out={args.output_len}")
    print(format_table(doc["records"]))
    print(f"wrote {args.out}, {args.out.with_suffix('.csv')}" + (f", {png}" if plotted else ""))
    return status


if __name__ == "__main__":
    sys.exit(main())
