"""Results files of a sweep: JSON {"device","commit","versions","records",...}, CSV, console table."""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from nvfp4_kit.provenance import git_commit

from .metrics import RECORD_FIELDS

__all__ = ["environment", "write_results", "format_table", "load_results", "merge_results"]

_PACKAGES = ("torch", "transformers", "triton", "nvidia-cutlass-dsl", "fastapi", "uvicorn",
             "aiohttp", "vllm", "sglang", "flashinfer-python")


def _device_name() -> str:
    # nvidia-smi, not torch: a CUDA context in the client would take GPU memory from the server.
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
        if out.returncode == 0 and names:
            return names[0] if len(names) == 1 else f"{len(names)}x {names[0]}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu: " + (platform.processor() or platform.machine())


def environment(device: str | None = None) -> dict[str, Any]:
    versions = {"python": sys.version.split()[0]}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    try:
        import nvfp4_kit

        versions["nvfp4_kit"] = nvfp4_kit.__version__
    except Exception:
        pass
    return {"device": device or _device_name(), "commit": git_commit(), "versions": versions}


def write_results(out_json: Path, doc: dict[str, Any]) -> Path:
    """Writes JSON and a CSV beside it (same stem); returns the CSV path."""
    out_json.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out_json)  # atomic: a killed run leaves the previous complete file
    out_csv = out_json.with_suffix(".csv")
    with out_csv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RECORD_FIELDS, extrasaction="ignore")
        w.writeheader()
        for rec in doc["records"]:
            w.writerow(rec)
    return out_csv


def load_results(path: Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text())
    for key in ("device", "commit", "versions", "records"):
        if key not in doc:
            raise ValueError(f"{path}: not a benchmark result (missing {key!r})")
    return doc


def merge_results(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs (e.g. one machine run per configuration) -> one document."""
    if not docs:
        raise ValueError("merge: no result files")
    merged = {k: v for k, v in docs[0].items() if k not in ("records", "servers", "runs")}
    merged["records"] = [r for d in docs for r in d["records"]]
    merged["servers"] = [s for d in docs for s in d.get("servers", [])]
    merged["runs"] = [{k: d.get(k) for k in ("device", "commit", "versions", "args")} for d in docs]
    return merged


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_table(records: list[dict[str, Any]]) -> str:
    cols = [("config", "config", 0), ("conc", "concurrency", 0), ("ok", "completed", 0),
            ("fail", "failed", 0), ("req/s", "request_s", 2), ("out tok/s", "output_tok_s", 1),
            ("tot tok/s", "total_tok_s", 1), ("TTFT med ms", "ttft_ms_median", 1),
            ("TTFT p99", "ttft_ms_p99", 1), ("TPOT med ms", "tpot_ms_median", 2),
            ("ITL med ms", "itl_ms_median", 2), ("E2EL med ms", "e2el_ms_median", 0),
            ("tok/s/user", "tok_s_per_user", 1)]
    rows = [[h for h, _, _ in cols]]
    rows += [[_fmt(r.get(k), d) for _, k, d in cols] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
