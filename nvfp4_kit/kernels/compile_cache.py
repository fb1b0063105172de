"""Cache of compiled CuTe DSL kernels, shared by every kernel module (GEMM, quantize): memory + disk.

``compile(kernel_name, key, jit_fn, *compile_args, **compile_kwargs)`` returns a callable taking the
runtime arguments. Lookup order:

1. in-process memory (a dict; the hot path never gets past this);
2. disk: ``env.cache_dir()/kernels/<name>-<digest>.o``, loaded with ``cutlass.runtime.load_module``;
3. compile with ``cute.compile`` and write the object file for the next process.

Why our own disk cache: ``cute.compile`` always compiles with ``no_cache=True`` in cutlass-dsl 4.8.1
(``CompileCallable._compile`` sets it, so the DSL's file cache is never consulted on this path;
NVIDIA/cutlass issue 3398). What 4.8.1 does offer is AOT export: ``JitCompiledFunction.dump_to_object``
(the bytes of ``export_to_c``'s ``.o``: host launch entry + cubin + metadata) and
``cutlass.runtime.load_module(path)[prefix]``, which JIT-links the object back into a callable with
the same calling convention. That round trip is what we store.

The file name's digest covers: kernel name, the caller's key, the GPU arch compiled for, the
cutlass-dsl and nvfp4_kit versions, a hash of the kernel family's sources (``quantize*.py`` for
the quantize kernels, ``gemm*.py`` for the GEMM: an edited kernel never loads a stale binary), and
the host ISA. The host half of the object is compiled for
generic x86-64 (``--host-target``) unless the caller chose a host target, so a cache built on one
x86-64 machine (a container build) loads on another. A sidecar ``.json`` holds the readable key.

Writes are atomic (temporary file in the same directory + ``os.replace``): concurrent processes
may race to write the same entry; each writes a complete file and the last rename wins, readers see
an old complete file or a new complete one. An unreadable entry is logged, removed and recompiled.

Rules enforced here: each miss is logged with its key (logger ``nvfp4_kit.compile_cache``);
anything not already in memory raises while a CUDA graph is being captured (warm up, or run
``python -m nvfp4_kit.precompile``, before capture); ``NVFP4_KIT_DISABLE_DISK_CACHE=1`` keeps
everything in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .. import __version__ as _kit_version
from .. import env
from ..atomic_file import write_atomic
from ..device import is_capturing

__all__ = [
    "compile",
    "clear_memory_cache",
    "kernels_dir",
    "set_cache_dir",
    "set_target_arch",
    "target_arch",
    "entry_identity",
    "stats",
    "reset_stats",
]

log = logging.getLogger("nvfp4_kit.compile_cache")
_lock = threading.RLock()
_memory: dict[str, Callable[..., Any]] = {}
_source_digests: dict[str, str] = {}
_stats = {"memory_hits": 0, "disk_loads": 0, "compiles": 0, "disk_writes": 0, "bad_entries": 0}
_dir_override: Path | None = None
_arch_override: str | None = None
_GENERIC_X86_HOST = "--host-target 'llvm -mtriple=x86_64-unknown-linux-gnu -mcpu=x86-64'"


def kernels_dir() -> Path:
    """Directory of the persistent compiled-kernel cache (NVFP4_KIT_CACHE_DIR/kernels)."""
    return (_dir_override or env.cache_dir()) / "kernels"


def set_cache_dir(path: str | Path | None) -> None:
    """Use `path` instead of NVFP4_KIT_CACHE_DIR for compiled kernels (None: back to the env)."""
    global _dir_override
    _dir_override = Path(path).expanduser() if path is not None else None


def set_target_arch(arch: str) -> None:
    """Make CuTe DSL compile for `arch` from now on (what CUTE_DSL_ARCH does at its start-up).

    Compiling for another arch through ``--gpu-arch`` while the DSL targets its own fails to
    export in 4.8.1 ("Failed to dump object file with PIC relocation"); setting the DSL's target
    exports fine, so precompile uses this.
    """
    global _arch_override
    from cutlass.cutlass_dsl import CuTeDSL

    CuTeDSL._get_dsl().envar.arch = arch
    _arch_override = arch


def target_arch(compile_kwargs: Mapping[str, Any] | None = None) -> str:
    """The GPU arch a compile will target: ``--gpu-arch`` in options, else set_target_arch's,
    else the DSL's own choice (CUTE_DSL_ARCH, else the visible GPU, e.g. sm_90a)."""
    options = (compile_kwargs or {}).get("options")
    if isinstance(options, str):
        found = re.search(r"--gpu-arch[= ]+(\S+)", options)
        if found:
            return found.group(1)
    if _arch_override:
        return _arch_override
    if env.cute_dsl_arch():
        return env.cute_dsl_arch()  # type: ignore[return-value]
    from cutlass.cutlass_dsl import CuTeDSL

    return str(CuTeDSL._get_dsl().envar.arch)


def _key_string(kernel_name: str, key: Mapping[str, object]) -> str:
    return kernel_name + ":" + json.dumps(dict(key), sort_keys=True, default=str)


_SHARED_KERNEL_SOURCES = ("ptx.py",)  # imported by every kernel family


def _source_digest(jit_fn: Any) -> str:
    """sha256 over the kernel family's sources: ``<family>*.py`` beside jit_fn's module, where the
    family is the module name up to its first underscore (quantize_kernels.py -> quantize*.py:
    the kernel and its PTX helpers; gemm_sm90_kernel.py -> gemm*.py), plus the inline-PTX helper
    every family shares (ptx.py)."""
    fn = getattr(jit_fn, "__wrapped__", jit_fn)
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    path = getattr(module, "__file__", None)
    if path is None:
        return "unknown"
    path = Path(path).resolve()
    family = str(path.parent / path.stem.split("_")[0])
    digest = _source_digests.get(family)
    if digest is None:
        h = hashlib.sha256()
        shared = [f for f in (path.parent / name for name in _SHARED_KERNEL_SOURCES) if f.is_file()]
        for file in sorted(path.parent.glob(path.stem.split("_")[0] + "*.py")) + shared:
            h.update(file.name.encode())
            h.update(file.read_bytes())
        digest = _source_digests[family] = h.hexdigest()[:16]
    return digest


def entry_identity(kernel_name: str, key: Mapping[str, object], jit_fn: Any,
                   compile_kwargs: Mapping[str, Any] | None = None) -> dict[str, object]:
    """Everything a compiled binary depends on; its hash names the disk entry."""
    import cutlass

    return {
        "kernel": kernel_name,
        "key": json.loads(json.dumps(dict(key), sort_keys=True, default=str)),
        "arch": target_arch(compile_kwargs),
        "cutlass_dsl": getattr(cutlass, "__version__", "unknown"),
        "nvfp4_kit": _kit_version,
        "source": _source_digest(jit_fn),
        "host": platform.machine(),
    }


def _digest(identity: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def _with_host_target(compile_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Compile the host shim for generic x86-64 (portable cache) unless the caller chose."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return compile_kwargs
    options = compile_kwargs.get("options")
    if options is None:
        return {**compile_kwargs, "options": _GENERIC_X86_HOST}
    if isinstance(options, str) and "--host-target" not in options:
        return {**compile_kwargs, "options": options + " " + _GENERIC_X86_HOST}
    return compile_kwargs


def _load(path: Path, prefix: str) -> Callable[..., Any] | None:
    from cutlass.runtime import load_module

    try:
        return load_module(str(path))[prefix]
    except OSError as exc:  # unreadable here (permissions, a transient error): leave it for others
        log.warning("compile-cache: cannot read %s (%s); compiling in memory", path, exc)
        return None
    except Exception as exc:  # a truncated/foreign file: drop it and compile again
        _stats["bad_entries"] += 1
        log.warning("compile-cache: unreadable entry %s (%s); recompiling", path, exc)
        try:
            path.unlink()
        except OSError:
            pass
        return None


def _store(path: Path, prefix: str, fn: Any, identity: Mapping[str, object]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, fn.dump_to_object(prefix))
        meta = {**identity, "prefix": prefix}
        write_atomic(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
        _stats["disk_writes"] += 1
    except Exception as exc:  # read-only FS, full disk, cross-arch export...: stay in memory
        log.warning("compile-cache: could not write %s (%s); kept in memory only", path, exc)


def compile(kernel_name: str, key: Mapping[str, object], jit_fn, *compile_args, **compile_kwargs):
    """Compiled `jit_fn` for `key` (``cute.compile(jit_fn, *compile_args, **compile_kwargs)``).

    `key` must name everything the compile depends on besides the arch and library versions
    (dtypes, layout, tile config, static shapes): it is the cache key.
    """
    # the target arch is part of the in-memory identity too: a process may compile for several
    text = _key_string(kernel_name, key) + "@" + target_arch(compile_kwargs)
    fn = _memory.get(text)
    if fn is not None:
        _stats["memory_hits"] += 1
        return fn
    if is_capturing():
        raise RuntimeError(
            f"nvfp4_kit: kernel {text} is not compiled and a CUDA graph is being captured; "
            "warm up (or run `python -m nvfp4_kit.precompile`) before capture"
        )
    with _lock:
        fn = _memory.get(text)
        if fn is not None:
            return fn
        compile_kwargs = _with_host_target(dict(compile_kwargs))
        identity = entry_identity(kernel_name, key, jit_fn, compile_kwargs)
        digest = _digest(identity)
        safe = re.sub(r"[^0-9A-Za-z_]", "_", kernel_name)
        prefix = f"nvfp4_{safe}_{digest[:16]}"
        path = kernels_dir() / f"{safe}-{digest}.o"
        use_disk = not env.disable_disk_cache()
        if use_disk and path.exists():
            t0 = time.perf_counter()
            fn = _load(path, prefix)
            if fn is not None:
                _stats["disk_loads"] += 1
                log.debug("compile-cache disk hit: %s (%.1f ms)", text,
                          1e3 * (time.perf_counter() - t0))
        if fn is None:
            log.info("compile-cache miss: %s arch=%s", text, identity["arch"])
            import cutlass.cute as cute

            t0 = time.perf_counter()
            fn = cute.compile(jit_fn, *compile_args, **compile_kwargs)
            _stats["compiles"] += 1
            log.info("compile-cache: compiled %s in %.2f s", text, time.perf_counter() - t0)
            if use_disk:
                _store(path, prefix, fn, identity)
        _memory[text] = fn
    return fn


def clear_memory_cache() -> None:
    with _lock:
        _memory.clear()


def stats() -> dict[str, int]:
    """Counters since start (or reset_stats): memory_hits, disk_loads, compiles, disk_writes, ..."""
    return dict(_stats)


def reset_stats() -> None:
    for name in _stats:
        _stats[name] = 0
