"""Serving metrics of one concurrency level, defined as `vllm bench serve` defines them.

  request_s        completed requests / level duration (first send -> last response)
  output_tok_s     output tokens of completed requests / duration
  total_tok_s      (prompt + output tokens) / duration
  ttft_ms          time to first token, per request
  tpot_ms          (E2EL - TTFT) / (output tokens - 1), per request with > 1 output token
  itl_ms           every gap between consecutive streamed events, all requests pooled
  e2el_ms          end-to-end latency, per request
  tok_s_per_user   median over requests of output tokens / (E2EL - TTFT): the decode speed one user sees
Each distribution is reported as mean, median and p99 (numpy's linear-interpolation percentile).
"""

from __future__ import annotations

import statistics
from typing import Any

from .client import RequestResult

__all__ = ["summarize", "RECORD_FIELDS"]

RECORD_FIELDS = [
    "config", "concurrency", "num_requests", "completed", "failed", "duration_s", "input_len",
    "output_len", "request_s", "output_tok_s", "total_tok_s", "tok_s_per_user",
    "ttft_ms_mean", "ttft_ms_median", "ttft_ms_p99", "tpot_ms_mean", "tpot_ms_median", "tpot_ms_p99",
    "itl_ms_mean", "itl_ms_median", "itl_ms_p99", "e2el_ms_mean", "e2el_ms_median", "e2el_ms_p99",
]


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy.percentile's default)."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _dist(prefix: str, values_s: list[float], out: dict[str, Any]) -> None:
    if not values_s:
        out.update({f"{prefix}_mean": None, f"{prefix}_median": None, f"{prefix}_p99": None})
        return
    ms = [v * 1000.0 for v in values_s]
    out[f"{prefix}_mean"] = statistics.fmean(ms)
    out[f"{prefix}_median"] = statistics.median(ms)
    out[f"{prefix}_p99"] = _percentile(ms, 99)


def summarize(results: list[RequestResult], duration_s: float, *, config: str, concurrency: int,
              input_len: int, output_len: int) -> dict[str, Any]:
    """One record (RECORD_FIELDS + "errors": up to 3 distinct error messages)."""
    ok = [r for r in results if r.success]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_len for r in ok)
    rec: dict[str, Any] = {
        "config": config, "concurrency": concurrency, "num_requests": len(results),
        "completed": len(ok), "failed": len(results) - len(ok), "duration_s": duration_s,
        "input_len": input_len, "output_len": output_len,
        "request_s": len(ok) / duration_s if duration_s > 0 else 0.0,
        "output_tok_s": out_tokens / duration_s if duration_s > 0 else 0.0,
        "total_tok_s": (in_tokens + out_tokens) / duration_s if duration_s > 0 else 0.0,
    }
    per_user = [r.output_tokens / (r.latency - r.ttft) for r in ok
                if r.output_tokens > 1 and r.latency > r.ttft]
    rec["tok_s_per_user"] = statistics.median(per_user) if per_user else None
    _dist("ttft_ms", [r.ttft for r in ok], rec)
    _dist("tpot_ms", [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok
                      if r.output_tokens > 1], rec)
    _dist("itl_ms", [x for r in ok for x in r.itl], rec)
    _dist("e2el_ms", [r.latency for r in ok], rec)
    rec["errors"] = sorted({r.error for r in results if not r.success})[:3]
    return rec
