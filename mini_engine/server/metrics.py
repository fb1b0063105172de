"""Prometheus text exposition (format 0.0.4) for /metrics: engine stats + server counters.

Names follow vLLM's where they mean the same (num_requests_running, num_requests_waiting,
kv_cache_usage_perc, generation_tokens_total, prompt_tokens_total), under the `mini_engine:` prefix.
Which NVFP4 kernel serves which layer and M bucket comes from `engine.stats()["kernels"]` (the
engine's `describe()`), exported as an info-style gauge with value 1, one series per
(layer, m_bucket, kernel, ...) found there.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ServerCounters", "render_metrics", "kernel_series"]

_PREFIX = "mini_engine:"
_LABEL_RE = re.compile(r"[^a-zA-Z0-9_]")
# Label names for successive levels of a nested kernels dict: {layer: {m_bucket: kernel}}.
_LEVEL_NAMES = ("layer", "m_bucket", "level3", "level4")


@dataclass
class ServerCounters:
    """Counters kept by the HTTP side (event-loop thread only, so no lock)."""

    requests: Counter = field(default_factory=Counter)  # (endpoint, http status) -> n
    finished: Counter = field(default_factory=Counter)  # finish_reason -> n
    client_aborts: int = 0
    rejected_overload: int = 0

    def count_request(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, status)] += 1


def _label_name(key: Any) -> str:
    name = _LABEL_RE.sub("_", str(key))
    return name if name and not name[0].isdigit() else f"_{name}"


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{_label_name(k)}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) or v is None


def kernel_series(kernels: Any, path: tuple = ()) -> list[dict[str, Any]]:
    """Flatten the engine's kernels description into one label set per leaf.

    Accepts a list of flat records ([{"layer": .., "m_bucket": .., "kernel": ..}, ...]), nested dicts
    ({layer: {m_bucket: "kernel name" | {field: value}}}) or a mix; path keys become the labels
    layer, m_bucket, ... in order.
    """
    base = {_LEVEL_NAMES[min(i, len(_LEVEL_NAMES) - 1)]: k for i, k in enumerate(path)}
    if isinstance(kernels, dict):
        # A record ({"kernel": .., "backend": ..}) has identifier keys; a map from M bucket to
        # kernel ({"1-16": "name"}) does not.
        if (kernels and path and all(_scalar(v) for v in kernels.values())
                and all(str(k).isidentifier() for k in kernels)):
            return [{**base, **kernels}]
        out = []
        for key, value in kernels.items():
            if _scalar(value):
                out.append({**base, _LEVEL_NAMES[min(len(path), 3)]: key, "kernel": value})
            else:
                out.extend(kernel_series(value, path + (key,)))
        return out
    if isinstance(kernels, (list, tuple)):
        out = []
        for item in kernels:
            if isinstance(item, dict) and all(_scalar(v) for v in item.values()):
                out.append({**base, **item})
            else:
                out.extend(kernel_series(item, path))
        return out
    if _scalar(kernels) and path:
        return [{**base, "kernel": kernels}]
    return []


def _normalize(labels: dict[str, Any]) -> dict[str, Any]:
    """nvfp4_kit.dispatch.describe() rows -> layer / m_bucket / kernel labels; long prose dropped."""
    out = dict(labels)
    if "layers" in out and "layer" not in out:
        out["layer"] = out.pop("layers")
    if "m_min" in out and "m_max" in out and "m_bucket" not in out:
        out["m_bucket"] = f"{out.pop('m_min')}-{out.pop('m_max')}"
    if "backend" in out and "kernel" not in out:
        config = out.pop("config", None)
        out["kernel"] = f"{out.pop('backend')}:{config}" if config not in (None, "-") \
            else out.pop("backend")
    out.pop("why", None)
    return out


def _metric(lines: list[str], name: str, kind: str, help_: str,
            samples: list[tuple[dict[str, Any], float]]) -> None:
    lines.append(f"# HELP {_PREFIX}{name} {help_}")
    lines.append(f"# TYPE {_PREFIX}{name} {kind}")
    for labels, value in samples:
        lines.append(f"{_PREFIX}{name}{_labels(labels)} {_value(value)}")


def _value(value: Any) -> str:
    """Exact sample text: counters past 10^6 must not round (":g" keeps 6 digits, hiding increments)."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render_metrics(stats: dict, counters: ServerCounters, model_name: str,
                   in_flight: int = 0) -> str:
    """Engine stats (LLMEngine.stats()) + server counters -> Prometheus text."""
    m = {"model_name": model_name}
    total = int(stats.get("kv_blocks_total", 0) or 0)
    used = int(stats.get("kv_blocks_used", 0) or 0)
    lines: list[str] = []
    _metric(lines, "num_requests_running", "gauge", "Requests in the running batch.",
            [(m, stats.get("running", 0))])
    _metric(lines, "num_requests_waiting", "gauge", "Requests queued in the engine.",
            [(m, stats.get("waiting", 0))])
    _metric(lines, "num_requests_in_flight", "gauge",
            "Requests accepted by the server and not finished (includes not yet scheduled).",
            [(m, in_flight)])
    _metric(lines, "kv_cache_blocks_used", "gauge", "KV cache blocks in use.", [(m, used)])
    _metric(lines, "kv_cache_blocks_total", "gauge", "KV cache blocks in the pool.", [(m, total)])
    _metric(lines, "kv_cache_usage_perc", "gauge", "KV cache usage, 1 means 100 percent.",
            [(m, used / total if total else 0.0)])
    _metric(lines, "generation_tokens_total", "counter", "Generated tokens.",
            [(m, stats.get("generated_tokens_total", 0))])
    _metric(lines, "prompt_tokens_total", "counter", "Prefilled prompt tokens.",
            [(m, stats.get("prompt_tokens_total", 0))])
    _metric(lines, "http_requests_total", "counter", "HTTP requests by endpoint and status.",
            [({**m, "endpoint": e, "status": s}, n) for (e, s), n in sorted(counters.requests.items())])
    _metric(lines, "request_success_total", "counter", "Finished requests by finish reason.",
            [({**m, "finished_reason": r}, n) for r, n in sorted(counters.finished.items())])
    _metric(lines, "request_client_aborts_total", "counter",
            "Requests aborted because the client disconnected.", [(m, counters.client_aborts)])
    _metric(lines, "request_rejected_overload_total", "counter",
            "Requests answered 503 because too many were waiting.",
            [(m, counters.rejected_overload)])
    series = kernel_series(stats.get("kernels"))
    _metric(lines, "nvfp4_kernel_info", "gauge",
            "NVFP4 kernel serving each layer and M bucket (value is always 1).",
            [({**m, **_normalize(labels)}, 1) for labels in series])
    return "\n".join(lines) + "\n"
