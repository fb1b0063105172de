"""mini_engine's OpenAI-compatible HTTP server: FastAPI app, engine thread, Prometheus metrics.

Entry point: `python -m mini_engine.serve` (mini_engine/serve.py). build_app(engine, ...) gives the
FastAPI app for any object with the LLMEngine contract (docs/CONTRACT.md).
"""

from .api_server import build_app
from .async_engine import AsyncEngine
from .threaded import ThreadedServer

__all__ = ["build_app", "AsyncEngine", "ThreadedServer"]
