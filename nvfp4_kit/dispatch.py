"""M-aware backend and kernel-config selection, the tuning table, and describe().

Per layer (arch family, N, K, activation dtype, mode) and per M bucket (1, 2, 4, ..., 8192; bucket b
serves b/2 < M <= b, 8192 serves all larger M) we choose a backend and a kernel config, in order:

1. a tuning table measured on this machine (``python -m nvfp4_kit.tune``), kept as JSON under
   ``NVFP4_KIT_CACHE_DIR/tuning/<family>_<gpu>_kit-<v>_cutedsl-<v>.json``; each entry is keyed by
   N, K, activation dtype, mode and M bucket (the versions are in the file name and checked on load);
2. the committed default table for the arch (``nvfp4_kit/data/tuning_sm90_h100.json``, measured on an
   H100 with the same tool);
3. the kernel module's heuristic.

Selection is a dict lookup, memoized per (layer, bucket): it never tunes or compiles, so it is safe
during CUDA-graph capture. `warmup()` compiles what the chosen configs need; call it before capture.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, env
from .atomic_file import write_atomic
from .backends import CAPABILITIES, Fp4GemmBackend

__all__ = [
    "M_BUCKETS",
    "m_bucket",
    "LayerKey",
    "Choice",
    "TuningTable",
    "cutlass_dsl_version",
    "resolve_backend",
    "resolve_mode",
    "choose",
    "sm90_kernel_config",
    "register_layer",
    "describe",
    "describe_text",
    "reset",
]

log = logging.getLogger("nvfp4_kit.dispatch")

M_BUCKETS = tuple(2**i for i in range(14))  # 1 .. 8192
_DATA_DIR = Path(__file__).parent / "data"
_DEFAULT_TABLES = {"sm90": _DATA_DIR / "tuning_sm90_h100.json"}


def m_bucket(m: int) -> int:
    """Smallest bucket >= m (8192 for anything larger)."""
    if m <= 1:
        return 1
    return min(1 << (m - 1).bit_length(), M_BUCKETS[-1])


@functools.lru_cache(maxsize=1)
def cutlass_dsl_version() -> str:
    """Installed nvidia-cutlass-dsl version ("none" without it: the kit imports, our kernels don't)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nvidia-cutlass-dsl")
    except PackageNotFoundError:
        pass
    try:  # unpacked without pip metadata (e.g. a wheel extracted onto PYTHONPATH)
        import cutlass

        return str(cutlass.__version__)
    except ImportError:
        return "none"


@dataclass(frozen=True)
class LayerKey:
    family: str  # "sm90" | "sm100" | "defer" | "cpu"
    n: int
    k: int
    dtype: str  # activation dtype, e.g. "bfloat16"
    mode: str  # "w4a16" | "w4a4"


@dataclass(frozen=True)
class Choice:
    backend: Fp4GemmBackend
    config: dict[str, Any] | None  # kernel config (JSON form) for our kernels, None otherwise
    source: str  # "tuned", "default table", "heuristic", "forced", "only choice"
    why: str
    kernel_config: Any = field(default=None, compare=False)  # the kernel's config object, built once


class TuningTable:
    """Per-bucket choices for one arch family: {(n, k, dtype, mode, bucket): entry}."""

    def __init__(self, family: str, entries: dict[tuple, dict] | None = None):
        self.family = family
        self.entries: dict[tuple, dict] = entries or {}

    @staticmethod
    def _key(e: dict) -> tuple:
        return (int(e["n"]), int(e["k"]), e["dtype"], e["mode"], int(e["m_bucket"]))

    @classmethod
    def load(cls, path: Path, family: str, check_versions: bool = True) -> TuningTable:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return cls(family)
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not JSON
            log.warning("ignoring unreadable tuning table %s: %s", path, exc)
            return cls(family)
        if not isinstance(data, dict) or not isinstance(data.get("entries", []), list):
            log.warning("ignoring tuning table %s: not a JSON object with an 'entries' list", path)
            return cls(family)
        if data.get("arch") != family:
            log.warning("ignoring tuning table %s: arch %r, expected %r", path, data.get("arch"), family)
            return cls(family)
        if check_versions and data.get("cutlass_dsl") != cutlass_dsl_version():
            log.info("tuning table %s is for cutlass-dsl %s; using heuristics", path, data.get("cutlass_dsl"))
            return cls(family)
        if check_versions and data.get("kit_version") not in (None, __version__):
            log.info("tuning table %s is for nvfp4-kit %s; using heuristics", path, data.get("kit_version"))
            return cls(family)
        entries = {}
        for i, e in enumerate(data.get("entries", [])):
            try:
                if not isinstance(e.get("config", {}), dict):
                    raise TypeError("config is not an object")
                entries[cls._key(e)] = e
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                log.warning("tuning table %s: skipping entries[%d] (%s: %s)", path, i,
                            type(exc).__name__, exc)
        return cls(family, entries)

    def to_json(self) -> dict:
        return {
            "arch": self.family,
            "kit_version": __version__,
            "cutlass_dsl": cutlass_dsl_version(),
            "entries": sorted(self.entries.values(), key=lambda e: self._key(e)),
        }

    def save(self, path: Path) -> None:
        """Merge into `path` under an exclusive lock and replace it atomically (ranks may race)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = TuningTable.load(path, self.family)
            merged.entries.update(self.entries)
            write_atomic(path, json.dumps(merged.to_json(), indent=1).encode())

    def lookup(self, key: LayerKey, bucket: int) -> dict | None:
        return self.entries.get((key.n, key.k, key.dtype, key.mode, bucket))


def _device_tag() -> str:
    """The GPU model, so an H100 SXM, an H100 PCIe and an H200 sharing a cache keep separate tables."""
    import torch

    if not torch.cuda.is_available():
        return "nogpu"
    name = torch.cuda.get_device_name(torch.cuda.current_device())
    return re.sub(r"[^0-9A-Za-z]+", "-", name).strip("-").lower()


def user_table_path(family: str) -> Path:
    name = f"{family}_{_device_tag()}_kit-{__version__}_cutedsl-{cutlass_dsl_version()}.json"
    return env.cache_dir() / "tuning" / name


@functools.cache
def _tables(family: str) -> tuple[TuningTable, TuningTable]:
    user = TuningTable.load(user_table_path(family), family) if not env.disable_disk_cache() else None
    default_path = _DEFAULT_TABLES.get(family)
    default = TuningTable.load(default_path, family) if default_path else TuningTable(family)
    return user or TuningTable(family), default


def resolve_backend(requested: str | Fp4GemmBackend, family: str) -> Fp4GemmBackend:
    """The backend a layer will use on this arch family; ValueError when it cannot run there."""
    backend = Fp4GemmBackend.parse(requested)
    if backend is Fp4GemmBackend.AUTO:  # NVFP4_KIT_GEMM_BACKEND forces one
        try:
            backend = Fp4GemmBackend.parse(env.gemm_backend())
        except ValueError as exc:
            raise ValueError(f"NVFP4_KIT_GEMM_BACKEND: {exc}") from None
    support = CAPABILITIES[family]
    if backend is Fp4GemmBackend.AUTO:
        backend = support.gemm[0]
        if backend.engine_provided:
            raise ValueError(
                f"nvfp4_kit has no NVFP4 GEMM for this GPU ({family}): {support.why} Inside vLLM/SGLang "
                "keep the engine's backend; elsewhere pass backend='reference' to accept a slow exact path."
            )
        return backend
    if backend.engine_provided:
        raise ValueError(f"backend={backend.value!r} is provided by vLLM/SGLang, not by nvfp4_kit")
    if backend is not Fp4GemmBackend.REFERENCE and backend not in support.gemm:
        valid = ", ".join(b.value for b in support.gemm if not b.engine_provided)
        raise ValueError(f"backend={backend.value!r} cannot run on {family}; valid here: {valid}")
    return backend


def resolve_mode(mode: str | None, family: str, has_input_scale: bool) -> str:
    mode = (mode or env.gemm_mode()).lower()
    if mode not in ("w4a16", "w4a4"):
        raise ValueError(f"mode={mode!r}: expected 'w4a16' or 'w4a4' (NVFP4_KIT_MODE)")
    if family == "sm100" and mode == "w4a16":
        mode = "w4a4"  # FlashInfer's mm_fp4 multiplies NVFP4 activations: Blackwell is W4A4 only
    if mode == "w4a4" and not has_input_scale:
        raise ValueError("mode='w4a4' needs input_scale (the activation global scale) from the checkpoint")
    return mode


_memo: dict[tuple[LayerKey, Fp4GemmBackend, int], Choice] = {}
_layers: dict[tuple[LayerKey, Fp4GemmBackend], list[str]] = {}


def _table_config(key: LayerKey, bucket: int, entry: dict | None, table: str):
    """The kernel config object of a table entry, or None (logged) when there is none or our kernel
    cannot run it for this layer: a hand-edited or foreign table falls back to the heuristic
    instead of failing the GEMM."""
    if entry is None:
        return None
    from .kernels import gemm_sm90  # lazy: needs nvidia-cutlass-dsl

    try:
        cfg = gemm_sm90.GemmConfig.from_dict(entry["config"])
        if not gemm_sm90.fits(cfg, key.n, key.k):
            raise ValueError(f"config {cfg.name} does not tile N={key.n} K={key.k}")
        return cfg
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring the %s entry for N=%d K=%d M<=%d (%s: %s)", table, key.n, key.k, bucket,
                    type(exc).__name__, exc)
        return None


def _shares_weight_prep(backend: Fp4GemmBackend, n: int) -> bool:
    """May a layer prepared for cute-dsl (plain 128x4 scales) run on `backend`? cutlass/cudnn only
    where N % 32 == 0 (vLLM pads N to 32 for them); trtllm never (row-shuffled weights)."""
    if backend is Fp4GemmBackend.FLASHINFER_CUTEDSL:
        return True
    return backend in (Fp4GemmBackend.FLASHINFER_CUTLASS, Fp4GemmBackend.FLASHINFER_CUDNN) and n % 32 == 0


def choose(key: LayerKey, backend: Fp4GemmBackend, m: int) -> Choice:
    """The backend + config that computes M rows of this layer. A memoized lookup; never compiles."""
    bucket = m_bucket(m)
    memo_key = (key, backend, bucket)
    hit = _memo.get(memo_key)
    if hit is not None:
        return hit
    if backend is Fp4GemmBackend.REFERENCE:
        choice = Choice(backend, None, "only choice", "pure-torch reference (exact, slow)")
    elif backend is Fp4GemmBackend.NVFP4_KIT:
        # W4A4 on SM90 runs the same W4A16 kernel on quantize-dequantized activations: one table
        gemm_key = dataclasses.replace(key, mode="w4a16")
        user, default = _tables(key.family)
        for table, source in ((user, "tuned"), (default, "default table")):
            entry = table.lookup(gemm_key, bucket)
            obj = _table_config(gemm_key, bucket, entry, source)
            if obj is not None:
                config = entry["config"]
                why = f"measured {entry.get('us', '?')} us at M={bucket}" + (
                    f"; {entry['note']}" if entry.get("note") else ""
                )
                break
        else:
            from .kernels import gemm_sm90

            obj = gemm_sm90.heuristic_config(bucket, key.n, key.k)
            config, source, why = obj.to_dict(), "heuristic", "no usable tuning entry for this shape/bucket"
        choice = Choice(backend, config, source, why, obj)
    elif backend is Fp4GemmBackend.FLASHINFER_TRTLLM:
        choice = Choice(backend, None, "only choice", "weights were shuffled for trtllm at load")
    else:  # FlashInfer cute-dsl / cutlass / cudnn share one weight preparation: pick per M
        entry = _tables(key.family)[0].lookup(key, bucket)
        try:
            picked = Fp4GemmBackend.parse(entry["backend"]) if entry is not None else None
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring the tuned entry for N=%d K=%d M<=%d (%s: %s)", key.n, key.k, bucket,
                        type(exc).__name__, exc)
            picked = None
        if picked is not None and not _shares_weight_prep(picked, key.n):
            log.warning("ignoring tuned backend %s for N=%d K=%d: the weights were prepared for %s",
                        picked.value, key.n, key.k, backend.value)
            picked = None
        if picked is not None:
            choice = Choice(picked, None, "tuned", f"measured {entry.get('us', '?')} us at M={bucket}")
        else:
            choice = Choice(backend, None, "heuristic",
                            f"FlashInfer mm_fp4(backend={backend.names.flashinfer!r}); untuned on SM100 "
                            "(never run by this project)")
    _memo[memo_key] = choice
    return choice


def sm90_kernel_config(n: int, k: int, m: int, backend: Fp4GemmBackend = Fp4GemmBackend.NVFP4_KIT):
    """The config our SM90 kernel runs for an N x K layer at M rows (bf16 activations; W4A4 on SM90
    runs the same W4A16 kernel, so one table serves both)."""
    return choose(LayerKey("sm90", n, k, "bfloat16", "w4a16"), backend, m).kernel_config


def register_layer(key: LayerKey, backend: Fp4GemmBackend, name: str | None = None) -> None:
    names = _layers.setdefault((key, backend), [])
    if name and name not in names:
        names.append(name)


def describe(max_m: int = 8192) -> list[dict[str, Any]]:
    """One row per registered layer shape and run of M buckets served by the same kernel, with why."""
    rows: list[dict[str, Any]] = []
    top = m_bucket(max_m)
    for (key, backend), names in _layers.items():
        prev = None
        for bucket in (b for b in M_BUCKETS if b <= top):
            c = choose(key, backend, bucket)
            config = (c.config or {}).get("name", "-")
            ident = (c.backend, config, c.source)
            if prev is not None and prev["_ident"] == ident:
                prev["m_max"] = bucket
                continue
            prev = {
                "_ident": ident, "layers": ",".join(names) or "-", "num_layers": len(names),
                "arch": key.family, "n": key.n,
                "k": key.k, "mode": key.mode, "m_min": bucket // 2 + 1 if bucket > 1 else 1,
                "m_max": bucket, "backend": c.backend.value, "config": config, "source": c.source,
                "why": c.why,
            }
            rows.append(prev)
    for r in rows:
        del r["_ident"]
    return rows


def _short_layers(row: dict[str, Any]) -> str:
    first = row["layers"].split(",")[0]
    return first if row["num_layers"] <= 1 else f"{first} and {row['num_layers'] - 1} more"


def describe_text(max_m: int = 8192) -> str:
    """Human-readable describe(), logged at load so users can tell which NVFP4 kernel runs."""
    rows = describe(max_m)
    if not rows:
        return "nvfp4_kit: no NVFP4 layers prepared"
    lines = ["nvfp4_kit: NVFP4 GEMM per layer shape and M range"]
    for r in rows:
        upper = "+" if r["m_max"] == M_BUCKETS[-1] else f"-{r['m_max']}"
        lines.append(
            f"  {r['arch']} N={r['n']} K={r['k']} {r['mode']} M={r['m_min']}{upper}: {r['backend']}"
            f" [{r['config']}] {r['source']}: {r['why']} ({_short_layers(r)})"
        )
    return "\n".join(lines)


def reset() -> None:
    """Forget memoized choices, registered layers and loaded tables (tests, re-tuning)."""
    _memo.clear()
    _layers.clear()
    _tables.cache_clear()
