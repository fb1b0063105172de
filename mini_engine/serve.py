"""`python -m mini_engine.serve`: the OpenAI-compatible HTTP server (FastAPI + uvicorn) on one engine.

Flags are vLLM's names where they mean the same; every EngineConfig field has its flag
(`--max-num-seqs` -> EngineConfig.max_num_seqs). Without --model it serves the built-in default model
(mini_engine/assets/default_model: a 5 M-parameter Llama trained on Python's docs, NVFP4), which runs
on a CPU-only machine:

    python -m mini_engine.serve                        # built-in model on http://127.0.0.1:8000
    python -m mini_engine.serve --model nvidia/Llama-3.1-8B-Instruct-NVFP4 --port 8000
    python -m mini_engine.serve --model llama-3.1-8b --load-format dummy --quantization nvfp4
    curl localhost:8000/v1/completions -H 'Content-Type: application/json' \
        -d '{"prompt": "The \\"if\\" statement", "max_tokens": 40, "temperature": 0}'
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "default_model"
DEFAULT_MODEL_NAME = "mini-engine-default"

logger = logging.getLogger("mini_engine.serve")

__all__ = ["build_parser", "engine_config_kwargs", "main", "DEFAULT_MODEL_DIR"]


def _bool_flag(ap: argparse.ArgumentParser, name: str, help_: str) -> None:
    ap.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=help_)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mini_engine.serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    s = ap.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1; 0.0.0.0 exposes the server)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--served-model-name", nargs="+", default=None,
                   help="names clients may send as 'model' (default: the --model value)")
    s.add_argument("--max-waiting", type=int, default=4096,
                   help="requests allowed to wait for a batch slot; beyond it the server answers 503")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--access-log", action="store_true", help="log every HTTP request (uvicorn)")
    e = ap.add_argument_group("engine (EngineConfig fields)")
    e.add_argument("--model", default=None,
                   help="checkpoint dir, hub id in the local HF cache, or preset name with "
                        f"--load-format dummy (default: the built-in model, {DEFAULT_MODEL_DIR})")
    e.add_argument("--tokenizer", default=None)
    e.add_argument("--dtype", default=None, choices=["auto", "bfloat16", "float16", "float32"])
    e.add_argument("--quantization", "-q", default=None,
                   choices=["auto", "modelopt_fp4", "nvfp4", "none"],
                   help="auto reads the checkpoint; nvfp4 quantizes a bf16 checkpoint on load")
    e.add_argument("--linear-backend", default=None, help="nvfp4_kit GEMM backend (default auto)")
    e.add_argument("--nvfp4-mode", default=None, choices=["w4a16", "w4a4"])
    e.add_argument("--load-format", default=None, choices=["auto", "dummy"])
    e.add_argument("--max-num-seqs", type=int, default=None)
    e.add_argument("--max-model-len", type=int, default=None)
    e.add_argument("--max-num-batched-tokens", type=int, default=None)
    e.add_argument("--gpu-memory-utilization", type=float, default=None)
    e.add_argument("--enforce-eager", action="store_true", default=None)
    e.add_argument("--block-size", type=int, default=None)
    e.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    e.add_argument("--seed", type=int, default=None)
    e.add_argument("--kv-cache-blocks", type=int, default=None)
    _bool_flag(e, "--enable-prefix-caching", "reuse KV blocks of shared prompt prefixes")
    e.add_argument("--attention-backend", default=None, choices=["auto", "torch", "triton"])
    e.add_argument("--cuda-graph-max-bs", type=int, default=None)
    return ap


def engine_config_kwargs(args: argparse.Namespace, config_cls: Any) -> dict:
    """The EngineConfig keyword arguments the user set (unset flags keep the config's defaults)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    kwargs = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if args.model is None:
        kwargs["model"] = str(DEFAULT_MODEL_DIR)
    if "served_model_name" in kwargs:  # the CLI takes several names; the engine reports the first
        kwargs["served_model_name"] = kwargs["served_model_name"][0]
    return kwargs


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.max_waiting < 1:  # checked before the model load, not after it
        raise SystemExit(f"error: --max-waiting={args.max_waiting}: must be >= 1")
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    import uvicorn

    from mini_engine.config import EngineConfig
    from mini_engine.engine.llm_engine import LLMEngine
    from mini_engine.server.api_server import build_app

    try:  # user errors (bad flag values, missing checkpoint): one line, no traceback
        config = EngineConfig(**engine_config_kwargs(args, EngineConfig))
        engine = LLMEngine(config)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"error: {exc}") from None
    t_engine = time.perf_counter() - t0
    names = args.served_model_name or [
        DEFAULT_MODEL_NAME if args.model is None else args.model]
    max_model_len = engine.max_model_len
    app = build_app(engine, model_names=names, max_model_len=max_model_len,
                    max_waiting=args.max_waiting, model_root=config.model)
    logger.info("engine ready in %.1f s; serving %s on http://%s:%d (max_model_len %d)",
                t_engine, names, args.host, args.port, max_model_len)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.access_log, timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
