"""The OpenAI request -> engine request -> OpenAI response path for completions and chat.

Validation happens here, before anything reaches the engine thread, so a bad request costs the engine
nothing and gets a 400 naming the field (prompt too long for the context, empty prompt, token ids out
of the vocabulary, unsupported options, bad sampling values caught by SamplingParams). Streams coalesce:
when the client falls behind, the deltas that piled up for a choice go out as one SSE event (token
counts stay exact through `usage`).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .async_engine import AsyncEngine, EngineDead, Overloaded
from .metrics import ServerCounters
from .protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, random_id

__all__ = ["ApiError", "OpenAIServing", "error_payload"]

_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError",
                503: "ServiceUnavailableError"}
_PARAMS_FIELDS = ("temperature", "top_k", "top_p", "seed", "max_tokens", "stop", "stop_token_ids",
                  "ignore_eos")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_payload(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "Error"),
                      "param": param, "code": status}}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"


# apply_chat_template arguments a client may not set through chat_template_kwargs: these two always
# (a client's Jinja; a tokenized return), whatever the tokenizer's signature says; the rest of its
# named arguments too, except those that are inputs to the template itself.
_ALWAYS_RESERVED = frozenset({"chat_template", "tokenize"})
_TEMPLATE_INPUTS = frozenset({"documents", "continue_final_message", "sanitize_control_tokens"})


def _reserved_template_kwargs(fn: Callable[..., Any] | None) -> frozenset[str]:
    named: set[str] = set()
    try:
        params = inspect.signature(fn).parameters.values() if fn is not None else ()
        named = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    except (TypeError, ValueError):
        pass
    return frozenset(named - _TEMPLATE_INPUTS) | _ALWAYS_RESERVED


class _Choice:
    """Progress of one engine request (one choice of the response)."""

    __slots__ = ("index", "num_prompt", "text", "num_tokens", "finish_reason", "done", "sent_role")

    def __init__(self, index: int, num_prompt: int):
        self.index, self.num_prompt = index, num_prompt
        self.text, self.num_tokens = "", 0
        self.finish_reason: str | None = None
        self.done = self.sent_role = False


class OpenAIServing:
    def __init__(self, engine: AsyncEngine, tokenizer: Any, model_names: list[str],
                 max_model_len: int, counters: ServerCounters, params_cls: Callable[..., Any]):
        self.engine = engine
        # A private copy: the engine thread detokenizes with its own instance concurrently, and HF
        # fast tokenizers raise "Already borrowed" when one instance is used from two threads.
        try:
            self.tokenizer = copy.deepcopy(tokenizer)
        except Exception:
            self.tokenizer = tokenizer
        self.model_names = model_names
        self.max_model_len = max_model_len
        self.counters = counters
        self.params_cls = params_cls
        self.vocab_size = len(self.tokenizer)
        # Tokenizing a long prompt takes milliseconds: off the event loop, so it does not stall the
        # other requests' streams; one worker, as the tokenizer copy must stay on one thread.
        self._tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        # chat_template_kwargs are template variables: a client's `chat_template` would run its Jinja
        # on the one tokenize thread; other call arguments would change what the call returns.
        self._reserved_template_kwargs = _reserved_template_kwargs(
            getattr(self.tokenizer, "apply_chat_template", None))

    def close(self) -> None:
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._tokenize_pool, fn, *args)

    # ---------------------------------------------------------------- validation
    def check_model(self, name: str | None) -> str:
        if name is not None and name not in self.model_names:
            raise ApiError(400, f"The model `{name}` does not exist; this server serves "
                                f"{self.model_names}.", "model")
        return self.model_names[0]

    def _check_ids(self, ids: list[int]) -> list[int]:
        if not ids:
            raise ApiError(400, "prompt: must not be empty", "prompt")
        self._check_in_vocab(ids, "prompt")
        return ids

    def _check_in_vocab(self, ids: Any, field: str) -> None:
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise ApiError(400, f"{field}: token id {bad} is outside the vocabulary "
                                f"[0, {self.vocab_size})", field)

    def completion_prompts(self, prompt: Any) -> list[list[int]]:
        if isinstance(prompt, str):
            prompts: list = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            prompts = [prompt]
        else:
            prompts = list(prompt)
        if not prompts:
            raise ApiError(400, "prompt: must not be empty", "prompt")
        out = []
        for p in prompts:
            ids = self.tokenizer.encode(p, add_special_tokens=True) if isinstance(p, str) else p
            out.append(self._check_ids(list(ids)))
        return out

    def chat_prompt(self, req: ChatCompletionRequest) -> list[int]:
        messages = []
        for i, m in enumerate(req.messages):
            try:
                messages.append({"role": m.role, "content": m.text()})
            except ValueError as exc:
                raise ApiError(400, f"messages[{i}].{exc}", "messages") from None
        extra = req.chat_template_kwargs or {}
        reserved = sorted(self._reserved_template_kwargs.intersection(extra))
        if reserved:
            raise ApiError(400, f"chat_template_kwargs.{reserved[0]}: not accepted (an argument of the "
                                "chat template call, not a template variable)", "chat_template_kwargs")
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=req.add_generation_prompt, **extra)
        except Exception as exc:  # no template, or the template rejected the messages
            raise ApiError(400, f"messages: cannot apply the chat template: {exc}", "messages") from None
        # The template already holds any BOS it wants; don't add a second one.
        return self._check_ids(self.tokenizer.encode(text, add_special_tokens=False))

    def sampling_params(self, req: SamplingFields, prompt_len: int, max_tokens: int | None,
                        max_tokens_field: str = "max_tokens") -> Any:
        unsupported = [
            ("n", req.n != 1), ("logprobs", req.wants_logprobs),
            ("top_logprobs", req.top_logprobs not in (None, 0)),
            ("presence_penalty", req.presence_penalty not in (None, 0.0)),
            ("frequency_penalty", req.frequency_penalty not in (None, 0.0)),
            ("repetition_penalty", req.repetition_penalty not in (None, 1.0)),
            ("min_tokens", req.min_tokens not in (None, 0)), ("min_p", req.min_p not in (None, 0.0)),
            ("logit_bias", bool(req.logit_bias)), ("tools", bool(req.tools)),
            ("response_format", (req.response_format or {}).get("type", "text") != "text"),
        ]
        for name, bad in unsupported:
            if bad:
                raise ApiError(400, f"{name}: only the default value is supported", name)
        self._check_in_vocab(req.stop_token_ids or (), "stop_token_ids")  # else they could never match
        room = self.max_model_len - prompt_len
        if room < 1:
            raise ApiError(400, f"This model's maximum context length is {self.max_model_len} "
                                f"tokens. However, your prompt has {prompt_len} tokens. Please "
                                "reduce the length of the prompt.", "prompt")
        if max_tokens is None:
            max_tokens = room
        elif max_tokens < 1:
            raise ApiError(400, f"{max_tokens_field}: must be at least 1, got {max_tokens}", max_tokens_field)
        elif max_tokens > room:
            raise ApiError(400, f"This model's maximum context length is {self.max_model_len} "
                                f"tokens. However, you requested {prompt_len + max_tokens} tokens "
                                f"({prompt_len} in the prompt, {max_tokens} in the completion). "
                                "Please reduce the length of the prompt or completion.",
                           max_tokens_field)
        kwargs = {
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "top_k": -1 if req.top_k in (None, 0) else req.top_k,
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "seed": req.seed, "max_tokens": max_tokens,
            "stop": [req.stop] if isinstance(req.stop, str) else req.stop,
            "stop_token_ids": req.stop_token_ids, "ignore_eos": req.ignore_eos,
        }
        try:
            return self.params_cls(**kwargs)
        except (ValueError, TypeError) as exc:
            msg = str(exc)
            param = next((f for f in _PARAMS_FIELDS if msg.startswith(f + "=")), None)
            raise ApiError(400, msg, param) from None

    # ---------------------------------------------------------------- engine round trip
    async def _submit(self, prompts: list[list[int]], params: list[Any]
                      ) -> tuple[dict[str, _Choice], asyncio.Queue]:
        sink: asyncio.Queue = asyncio.Queue()
        choices: dict[str, _Choice] = {}
        try:
            for i, (ids, p) in enumerate(zip(prompts, params, strict=True)):
                rid = random_id("req")
                self.engine.submit(rid, ids, p, sink)
                choices[rid] = _Choice(i, len(ids))
        except Overloaded as exc:
            self._abort(choices)
            self.counters.rejected_overload += 1
            raise ApiError(503, str(exc)) from None
        except EngineDead as exc:
            self._abort(choices)
            raise ApiError(503, str(exc)) from None
        acked, early = 0, []
        try:
            while acked < len(choices):  # the engine accepts or rejects each before we answer
                item = await sink.get()
                kind, rid, payload = item
                if kind == "error":
                    choices[rid].done = True
                    raise ApiError(payload[0], payload[1])
                acked += kind == "ack"
                if kind == "output":  # rare: a prompt's output raced ahead of a sibling's ack
                    early.append(item)
        except BaseException:  # rejected sibling, or this handler cancelled: free the others
            self._abort(choices)
            raise
        if early:  # put them back in arrival order (no await in between, so nothing interleaves)
            while not sink.empty():
                early.append(sink.get_nowait())
            for item in early:
                sink.put_nowait(item)
        return choices, sink

    def _abort(self, choices: dict[str, _Choice]) -> None:
        for rid, c in choices.items():
            if not c.done:
                self.engine.abort(rid)

    async def _updates(self, choices: dict[str, _Choice], sink: asyncio.Queue
                       ) -> AsyncIterator[list[tuple[_Choice, str]]]:
        """Yields [(choice, text delta)] per wake-up, merging everything queued meanwhile."""
        remaining = sum(not c.done for c in choices.values())
        while remaining:
            items = [await sink.get()]
            while not sink.empty():
                items.append(sink.get_nowait())
            deltas: dict[str, str] = {}
            for kind, rid, payload in items:
                c = choices[rid]
                if kind == "error":
                    c.done, c.finish_reason = True, "error"
                    raise ApiError(payload[0], payload[1])
                if kind != "output" or c.done:
                    continue
                c.num_tokens += len(payload.new_token_ids)
                deltas[rid] = deltas.get(rid, "") + payload.new_text
                if payload.finished:
                    c.done, c.finish_reason = True, payload.finish_reason or "stop"
                    c.text = payload.text
                    self.counters.finished[c.finish_reason] += 1
                    remaining -= 1
            yield [(choices[rid], d) for rid, d in deltas.items()]

    async def _collect(self, choices: dict[str, _Choice], sink: asyncio.Queue) -> None:
        async for _ in self._updates(choices, sink):
            pass

    async def _until_done_or_disconnect(self, choices, sink, raw: Request) -> bool:
        """Non-streaming: wait for all choices; abort them if the client disconnects first."""
        collect = asyncio.ensure_future(self._collect(choices, sink))
        watch = asyncio.ensure_future(_wait_disconnect(raw))
        try:
            await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
            if collect.done():
                collect.result()  # re-raises an engine error
                return True
            self.counters.client_aborts += 1
            return False
        finally:  # disconnect, engine error on a sibling choice, or cancellation: free the rest
            watch.cancel()
            collect.cancel()
            self._abort(choices)

    @staticmethod
    def _usage(choices: dict[str, _Choice]) -> dict:
        p = sum(c.num_prompt for c in choices.values())
        g = sum(c.num_tokens for c in choices.values())
        return {"prompt_tokens": p, "completion_tokens": g, "total_tokens": p + g}

    # ---------------------------------------------------------------- endpoints
    async def completions(self, req: CompletionRequest, raw: Request):
        model = self.check_model(req.model)
        for name, bad in (("echo", req.echo), ("suffix", req.suffix),
                          ("best_of", req.best_of not in (None, 1))):
            if bad:
                raise ApiError(400, f"{name}: not supported", name)
        prompts = await self._off_loop(self.completion_prompts, req.prompt)
        params = [self.sampling_params(req, len(p), req.max_tokens) for p in prompts]
        choices, sink = await self._submit(prompts, params)
        rid, created = random_id("cmpl"), int(time.time())
        if req.stream:
            # The per-token hot path at high concurrency: a pre-rendered head, only the text and
            # finish reason encoded per event (same JSON as json.dumps of the full dict).
            head = (f'data: {{"id":"{rid}","object":"text_completion","created":{created},'
                    f'"model":{json.dumps(model)},"choices":[{{"index":')

            def chunk(c: _Choice, text: str) -> str:
                finish = json.dumps(c.finish_reason) if c.done else "null"
                return (f'{head}{c.index},"text":{json.dumps(text, ensure_ascii=False)},'
                        f'"logprobs":null,"finish_reason":{finish}}}]}}\n\n')
            return self._stream(choices, sink, chunk, rid, created, model, "text_completion",
                                req.include_usage)
        if not await self._until_done_or_disconnect(choices, sink, raw):
            return None
        return JSONResponse({
            "id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": c.index, "text": c.text, "logprobs": None,
                         "finish_reason": c.finish_reason} for c in choices.values()],
            "usage": self._usage(choices)})

    async def chat(self, req: ChatCompletionRequest, raw: Request):
        model = self.check_model(req.model)
        prompt = await self._off_loop(self.chat_prompt, req)
        field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        params = self.sampling_params(req, len(prompt), getattr(req, field), field)
        choices, sink = await self._submit([prompt], [params])
        rid, created = random_id("chatcmpl"), int(time.time())
        if req.stream:
            def chunk(c: _Choice, text: str) -> str:
                delta: dict = {"content": text}
                if not c.sent_role:
                    c.sent_role = True
                    delta = {"role": "assistant", "content": text}
                return _sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                             "model": model, "choices": [{
                                 "index": c.index, "delta": delta, "logprobs": None,
                                 "finish_reason": c.finish_reason if c.done else None}]})
            return self._stream(choices, sink, chunk, rid, created, model,
                                "chat.completion.chunk", req.include_usage)
        if not await self._until_done_or_disconnect(choices, sink, raw):
            return None
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": c.index, "logprobs": None, "finish_reason": c.finish_reason,
                         "message": {"role": "assistant", "content": c.text}}
                        for c in choices.values()],
            "usage": self._usage(choices)})

    def _stream(self, choices, sink, chunk, rid, created, model, obj, include_usage):
        async def events() -> AsyncIterator[str]:
            failed = False
            try:
                async for updates in self._updates(choices, sink):
                    yield "".join(chunk(c, text) for c, text in updates)
                if include_usage:
                    yield _sse({"id": rid, "object": obj, "created": created, "model": model,
                                "choices": [], "usage": self._usage(choices)})
            except ApiError as exc:  # headers are gone: report in-band, as vLLM does
                failed = True  # the engine ended it (its siblings are aborted below), not the client
                yield _sse(error_payload(exc.status, exc.message, exc.param))
            finally:
                if any(not c.done for c in choices.values()):  # client went away, or a choice failed
                    self._abort(choices)
                    if not failed:
                        self.counters.client_aborts += 1
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})


async def _wait_disconnect(raw: Request) -> None:
    while True:
        message = await raw.receive()
        if message["type"] == "http.disconnect":
            return
