"""OpenAI-compatible request/response schema of mini_engine's HTTP server (pydantic models).

Field names and defaults follow the OpenAI API and vLLM's extensions (`top_k`, `ignore_eos`,
`stop_token_ids`, `min_tokens` is not supported). Unknown fields are ignored, as vLLM does, so clients
that send `user`, `logit_bias=None` etc. still work; fields we cannot honour with a non-default value
(`n > 1`, `logprobs`, penalties) are rejected with a 400 naming the field.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "StreamOptions",
    "SamplingFields",
    "CompletionRequest",
    "ChatMessage",
    "ChatCompletionRequest",
    "UsageInfo",
    "ModelCard",
    "ModelList",
    "ErrorBody",
    "ErrorResponse",
    "random_id",
]


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(_Lenient):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None
    max_tokens: int | None = None  # None: up to the context length (vLLM's default)
    temperature: float | None = None  # None -> 1.0 (OpenAI default)
    top_p: float | None = None
    top_k: int | None = None  # vLLM extension; -1 disables
    seed: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False  # vLLM extension, used by benchmarks
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Any = None
    top_logprobs: int | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    repetition_penalty: float | None = None
    # Declared only so that a request that sets them gets a 400 instead of being silently ignored.
    min_tokens: int | None = None
    min_p: float | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def wants_logprobs(self) -> bool:
        """/v1/completions' logprobs is a count: any number, 0 included, asks for logprobs."""
        return self.logprobs is not None and self.logprobs is not False


class CompletionRequest(SamplingFields):
    # A string, a list of token ids, or a batch of either (one choice per prompt).
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class ChatContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ChatContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        for i, part in enumerate(self.content):
            if part.type != "text":
                raise ValueError(f"content[{i}].type={part.type!r}: only text parts are supported")
        return "".join(part.text or "" for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # newer OpenAI name of max_tokens
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None

    @property
    def wants_logprobs(self) -> bool:
        """Chat's logprobs is a flag (top_logprobs is the count): 0 and false leave it off."""
        return bool(self.logprobs)


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "mini_engine"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard] = Field(default_factory=list)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """OpenAI-style error: {"error": {"message", "type", "param", "code"}}."""

    error: ErrorBody
