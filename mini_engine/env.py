"""Every environment variable mini_engine reads (MINI_ENGINE_*), in one place.

Getters read the environment at call time, so tests can monkeypatch it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["attention_backend", "cache_dir", "llama3_tokenizer_file", "log_level", "progress_bars"]


def _get(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def attention_backend() -> str:
    """MINI_ENGINE_ATTENTION_BACKEND: "auto" (Triton on CUDA, torch on CPU), "triton" or "torch".

    Used when EngineConfig.attention_backend is "auto".
    """
    return _get("MINI_ENGINE_ATTENTION_BACKEND", "auto").lower()


def cache_dir() -> Path:
    """MINI_ENGINE_CACHE_DIR: converted tokenizers (the Llama-3 tokenizer.json built from llama-models)."""
    default = Path(_get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "mini_engine"
    return Path(_get("MINI_ENGINE_CACHE_DIR", str(default))).expanduser()


def llama3_tokenizer_file() -> Path | None:
    """MINI_ENGINE_LLAMA3_TOKENIZER: a Llama-3 tiktoken `tokenizer.model` to use instead of the one in
    the llama-models package (machines where that package is not installed)."""
    value = _get("MINI_ENGINE_LLAMA3_TOKENIZER", "")
    return Path(value).expanduser() if value else None


def log_level() -> int | str:
    """MINI_ENGINE_LOG_LEVEL: level of the "mini_engine" logger (default INFO): a name or number."""
    from nvfp4_kit.env import log_level_of

    return log_level_of("MINI_ENGINE_LOG_LEVEL")


def progress_bars() -> bool:
    """MINI_ENGINE_PROGRESS=0 hides tqdm bars (loading, checkpoint writing)."""
    return _get("MINI_ENGINE_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")
