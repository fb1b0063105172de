"""One streaming OpenAI request, timed as `vllm bench serve` times it (aiohttp; no engine knowledge).

Per request: TTFT = first SSE event carrying a choice - send time; ITL = gaps between later such events;
E2EL = last byte - send time; output tokens = the server's `usage.completion_tokens` (we ask for it
with stream_options.include_usage), else the number of events. `ignore_eos` goes in the body as an
extra field, as vLLM's client sends it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .dataset import BenchRequest

__all__ = ["RequestResult", "send_request"]


@dataclass
class RequestResult:
    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0  # s
    latency: float = 0.0  # s, E2EL
    itl: list[float] = field(default_factory=list)  # s
    start: float = 0.0  # perf_counter at send
    error: str = ""


def _payload(endpoint: str, model: str | None, req: BenchRequest, ignore_eos: bool,
             temperature: float, extra: dict[str, Any]) -> dict:
    body: dict[str, Any] = {
        "max_tokens": req.output_len, "temperature": temperature, "stream": True,
        "stream_options": {"include_usage": True}, "ignore_eos": ignore_eos,
    }
    if model is not None:
        body["model"] = model
    if endpoint.endswith("chat/completions"):
        if not isinstance(req.prompt, str):
            raise ValueError("chat endpoint: prompts must be text (use --prompt-format text)")
        body["messages"] = [{"role": "user", "content": req.prompt}]
    else:
        body["prompt"] = req.prompt
    body.update(extra)
    return body


def _event_text(data: dict) -> str | None:
    """Text of an SSE event's first choice ('' allowed), or None when it carries no choice."""
    choices = data.get("choices")
    if not choices:
        return None
    c = choices[0]
    if "text" in c:
        return c.get("text") or ""
    return (c.get("delta") or {}).get("content") or ""


async def send_request(session: aiohttp.ClientSession, url: str, model: str | None,
                       req: BenchRequest, *, ignore_eos: bool = True, temperature: float = 0.0,
                       extra_body: dict[str, Any] | None = None) -> RequestResult:
    """POST one streaming request to `url` (…/v1/completions or …/v1/chat/completions)."""
    result = RequestResult(prompt_len=req.prompt_len)
    body = _payload(url, model, req, ignore_eos, temperature, extra_body or {})
    events = 0
    usage_tokens = None
    result.start = last = time.perf_counter()
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                result.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
                return result
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                data = json.loads(payload)
                if "error" in data:
                    result.error = f"stream error: {data['error']}"
                    return result
                now = time.perf_counter()
                if _event_text(data) is not None:
                    if events == 0:
                        result.ttft = now - result.start
                    else:
                        result.itl.append(now - last)
                    events += 1
                    last = now
                if data.get("usage"):
                    usage_tokens = data["usage"].get("completion_tokens")
        result.latency = time.perf_counter() - result.start
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    if events == 0:
        result.error = "no tokens received"
        return result
    result.output_tokens = usage_tokens if usage_tokens is not None else events
    result.success = True
    return result
