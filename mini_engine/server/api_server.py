"""FastAPI app of mini_engine's OpenAI-compatible server: routes, error mapping, lifecycle.

Routes: POST /v1/completions, POST /v1/chat/completions (SSE when "stream": true), GET /v1/models,
GET /health, GET /metrics (Prometheus text). Every error is OpenAI-shaped,
{"error": {"message", "type", "param", "code"}}: malformed JSON and schema errors are 400 (not
FastAPI's 422), an overloaded queue or a dead engine thread is 503, anything unexpected is 500 — and
none of them takes the engine thread down (see async_engine.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .async_engine import AsyncEngine
from .metrics import ServerCounters, render_metrics
from .openai_serving import ApiError, OpenAIServing, error_payload
from .protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList

__all__ = ["build_app"]

logger = logging.getLogger("mini_engine.server")


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_payload(status, message, param), status_code=status)


def _validation_message(errors: list[dict]) -> tuple[str, str | None]:
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return f"malformed JSON body: {first.get('msg', '')}", None
    param = loc[0] if loc else None
    where = ".".join(loc) or "body"
    return f"{where}: {first.get('msg', 'invalid value')}", param


# What can decode to an unpaired surrogate: a JSON escape \\uD800-\\uDFFF, or raw UTF-8-style bytes
# ED A0..BF (json.loads decodes bytes with "surrogatepass"). Bodies without either skip the walk.
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_RAW_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lone_surrogate(obj: dict | list) -> tuple[list[str | int], bool] | None:
    """(path, is_key) of the first string in the container obj, keys included, that is not
    encodable as UTF-8, or None. Iterative (json.loads accepts nesting deeper than Python
    recursion); strings are checked where they are met and parent links are kept for containers
    only, so a path is built just for the string that fails."""
    parents: list[tuple[int, str | int]] = [(-1, "")]
    stack: list[tuple[Any, int]] = [(obj, 0)]

    def path(node: int) -> list[str | int]:
        parts = []
        while node > 0:
            node, part = parents[node]
            parts.append(part)
        return parts[::-1]

    while stack:
        value, node = stack.pop()
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            if isinstance(key, str) and not _encodable(key):
                return path(node), True
            if isinstance(item, str):
                if not _encodable(item):
                    return [*path(node), key], False
            elif isinstance(item, dict | list):
                parents.append((node, key))
                stack.append((item, len(parents) - 1))
    return None


def _surrogate_error(obj: Any, body: bytes) -> ApiError | None:
    escaped = b"\\u" in body and _ESCAPED_SURROGATE.search(body)
    if not (escaped or (b"\xed" in body and _RAW_SURROGATE.search(body))):
        return None
    found = _lone_surrogate(obj)
    if found is None:
        return None
    parts, is_key = found
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".") or "body"
    # a key holding the surrogate can't be named in the message (it would not encode either)
    what = f"a key of {where}" if is_key else where
    param = parts[0] if parts and isinstance(parts[0], str) else None
    return ApiError(400, f"{what}: holds an unpaired UTF-16 surrogate (not valid Unicode text)", param)


async def _parse(raw: Request, model: type[BaseModel]) -> Any:
    body = await raw.body()
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON body: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "the request body must be a JSON object")
    error = _surrogate_error(obj, body)  # strings no tokenizer or response body can encode
    if error is not None:
        raise error
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        message, param = _validation_message(exc.errors(include_url=False))
        raise ApiError(400, message, param) from None


def build_app(engine: Any, *, model_names: list[str], max_model_len: int,
              params_cls: Callable[..., Any] | None = None, max_waiting: int = 4096,
              model_root: str | None = None) -> FastAPI:
    """The app for one engine (LLMEngine contract). The engine thread starts with the app's lifespan.

    model_names: names clients may send as "model" (the first is reported back). params_cls builds
    the engine's SamplingParams from keyword arguments (default: mini_engine.sampling_params).
    """
    if params_cls is None:
        from mini_engine.sampling_params import SamplingParams as params_cls
    async_engine = AsyncEngine(engine, max_waiting=max_waiting)
    counters = ServerCounters()
    serving = OpenAIServing(async_engine, engine.tokenizer, model_names, max_model_len, counters,
                            params_cls)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async_engine.start(asyncio.get_running_loop())
        logger.info("serving %s (max_model_len %d)", model_names, max_model_len)
        try:
            yield
        finally:
            async_engine.shutdown()
            serving.close()

    app = FastAPI(title="mini_engine OpenAI-compatible server", lifespan=lifespan)
    app.state.async_engine = async_engine
    app.state.counters = counters

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(list(exc.errors()))
        return _error(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in a request handler")
        return _error(500, f"internal error: {exc!r}")

    async def _run(endpoint: str, raw: Request, model: type[BaseModel], handler) -> Response:
        try:
            req = await _parse(raw, model)
            response = await handler(req, raw)
        except ApiError as exc:
            counters.count_request(endpoint, exc.status)
            return _error(exc.status, exc.message, exc.param)
        except ClientDisconnect:  # gone while its body was still arriving: nothing to answer or log
            counters.count_request(endpoint, 499)
            return Response(status_code=499)
        except Exception:
            counters.count_request(endpoint, 500)
            raise  # answered by _unexpected (logged, 500)
        if response is None:  # client disconnected before the answer; nobody reads a body
            counters.count_request(endpoint, 499)
            return Response(status_code=499)
        counters.count_request(endpoint, 200)
        return response

    @app.post("/v1/completions")
    async def completions(raw: Request) -> Response:
        return await _run("completions", raw, CompletionRequest, serving.completions)

    @app.post("/v1/chat/completions")
    async def chat_completions(raw: Request) -> Response:
        return await _run("chat_completions", raw, ChatCompletionRequest, serving.chat)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        cards = [ModelCard(id=name, root=model_root or name, max_model_len=max_model_len)
                 for name in model_names]
        return JSONResponse(ModelList(data=cards).model_dump())

    @app.get("/health")
    async def health() -> Response:
        if not async_engine.alive:
            return _error(503, "the engine thread is not running")
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        try:
            stats = await async_engine.stats()
        except Exception as exc:
            return _error(503, f"engine stats unavailable: {exc!r}")
        text = render_metrics(stats, counters, model_names[0], async_engine.num_in_flight)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
