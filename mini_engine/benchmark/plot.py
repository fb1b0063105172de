"""The sweep's PNG: tok/s/user vs output tok/s (the throughput-latency frontier), TPOT and TTFT vs
concurrency; one line per configuration. matplotlib is optional (imported here only)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["plot_records"]

log = logging.getLogger("mini_engine.bench")


def _series(records: list[dict[str, Any]], config: str, key: str) -> tuple[list, list, list]:
    rows = sorted((r for r in records if r["config"] == config and r.get(key) is not None
                   and r.get("completed")), key=lambda r: r["concurrency"])
    return [r["concurrency"] for r in rows], [r[key] for r in rows], rows


def plot_records(records: list[dict[str, Any]], path: Path, title: str = "") -> bool:
    """Writes the PNG; False (with a warning) when matplotlib is missing or nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        log.warning("matplotlib is not installed: no PNG (re-plot later with --plot-only JSON)")
        return False
    configs = list(dict.fromkeys(r["config"] for r in records))
    if not configs:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    ax_front, ax_tpot, ax_ttft = axes
    for config in configs:
        _, per_user, rows = _series(records, config, "tok_s_per_user")
        x = [r["output_tok_s"] for r in rows]
        (line,) = ax_front.plot(x, per_user, marker="o", label=config)
        for r, xi, yi in zip(rows, x, per_user, strict=True):
            ax_front.annotate(str(r["concurrency"]), (xi, yi), textcoords="offset points",
                              xytext=(4, 4), fontsize=7, color=line.get_color())
        c, tpot, _ = _series(records, config, "tpot_ms_median")
        ax_tpot.plot(c, tpot, marker="o", label=config)
        c, ttft, _ = _series(records, config, "ttft_ms_median")
        ax_ttft.plot(c, ttft, marker="o", label=config)
    ax_front.set(xlabel="output tok/s (all users)", ylabel="tok/s/user (median)",
                 title="throughput vs per-user speed (labels: concurrency)")
    ax_tpot.set(xlabel="concurrency", ylabel="TPOT median (ms)", title="time per output token")
    ax_ttft.set(xlabel="concurrency", ylabel="TTFT median (ms)", title="time to first token")
    for ax in (ax_tpot, ax_ttft):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_ttft.set_yscale("log")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
