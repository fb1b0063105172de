"""`python -m nvfp4_kit.precompile`: compile every kit kernel into the persistent cache (for images).

    python -m nvfp4_kit.precompile [--arch sm_90a] [--shapes llama-3.1-8b] [--cache-dir DIR]

Compiles the quantize kernels (all configs, both dtypes and layouts) and, when
`nvfp4_kit.kernels.gemm_sm90` is present, the GEMM configs (`gemm_sm90.precompile(arch, configs)`;
with --shapes, the tuner's candidate configs of those layer shapes, else all shipped configs) into
``NVFP4_KIT_CACHE_DIR/kernels`` (or --cache-dir). Works without a GPU: --arch sets CuTe DSL's
target (as CUTE_DSL_ARCH would; compile_cache.set_target_arch). Prints each key with the time it
took; a second run only loads from disk.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

from . import dispatch

__all__ = ["main", "run"]



def _gemm_configs(gemm, shapes: dict[str, tuple[int, int]] | None):
    if shapes is None:
        return None
    candidates = getattr(gemm, "candidate_configs", None)
    if candidates is None:
        return None
    seen = {}
    for n, k in shapes.values():
        for m in dispatch.M_BUCKETS:
            for cfg in candidates(m, n, k):
                seen.setdefault(repr(cfg), cfg)
    return list(seen.values())


def _timed(label: str, fn: Callable[[], list[str]], out) -> tuple[list[str], float]:
    from .kernels import compile_cache

    before = compile_cache.stats()
    t0 = time.perf_counter()
    keys = fn()
    seconds = time.perf_counter() - t0
    after = compile_cache.stats()
    for key in keys:
        print(f"  {label}: {key}", file=out)
    print(f"{label}: {len(keys)} kernels in {seconds:.2f} s (compiled "
          f"{after['compiles'] - before['compiles']}, loaded from disk "
          f"{after['disk_loads'] - before['disk_loads']})", file=out)
    return keys, seconds


def run(arch: str, shapes: str | None = None, out=sys.stdout) -> dict[str, object]:
    """Compile everything for `arch` (CUTE_DSL_ARCH must already name it). Returns a summary."""
    from . import env
    from .kernels import compile_cache, quantize

    summary: dict[str, object] = {"arch": arch, "cache_dir": str(compile_cache.kernels_dir())}
    print(f"nvfp4_kit precompile: arch={arch} cache={compile_cache.kernels_dir()}"
          f"{' (disk cache disabled)' if env.disable_disk_cache() else ''}", file=out)
    before = compile_cache.stats()
    keys, seconds = _timed("quantize", lambda: quantize.precompile(arch), out)
    summary["quantize"] = {"keys": keys, "seconds": seconds}
    try:
        from .kernels import gemm_sm90
    except ImportError as exc:
        print(f"gemm: skipped (nvfp4_kit.kernels.gemm_sm90 not importable: {exc})", file=out)
        summary["gemm"] = None
    else:
        parsed = None
        if shapes:
            from .shapes import parse_shapes

            parsed = parse_shapes(shapes)
        try:
            configs = _gemm_configs(gemm_sm90, parsed)
            keys, seconds = _timed("gemm", lambda: gemm_sm90.precompile(arch, configs), out)
            summary["gemm"] = {"keys": keys, "seconds": seconds}
        except ValueError as exc:  # by the kit's convention: not supported (e.g. this arch)
            print(f"gemm: skipped ({exc})", file=out)
            summary["gemm"] = {"skipped": str(exc)}
        except Exception as exc:  # the GEMM owner's failure must not hide the quantize result
            print(f"gemm: FAILED ({type(exc).__name__}: {exc})", file=out)
            summary["gemm"] = {"error": f"{type(exc).__name__}: {exc}"}
    after = compile_cache.stats()
    delta = {k: after[k] - before.get(k, 0) for k in after}
    summary["stats"] = delta
    print(f"compiled {delta['compiles']}, loaded from disk {delta['disk_loads']}, "
          f"written {delta['disk_writes']}", file=out)
    return summary


# The targets the kit's kernels are built for, by every spelling users write (CuTe DSL wants the
# "a" variants: wgmma / tcgen05 are arch-specific features).
_ARCH_ALIASES = {"sm90": "sm_90a", "sm_90": "sm_90a", "sm90a": "sm_90a", "sm_90a": "sm_90a",
                 "sm100": "sm_100a", "sm_100": "sm_100a", "sm100a": "sm_100a", "sm_100a": "sm_100a"}


def _canonical_arch(arch: str) -> str:
    canonical = _ARCH_ALIASES.get(arch.strip().lower())
    if canonical is None:
        raise ValueError(f"{arch!r}: nvfp4_kit's kernels target sm_90a (Hopper) or sm_100a (Blackwell)")
    return canonical


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nvfp4_kit.precompile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", help="CuTe DSL target, e.g. sm_90a (default: CUTE_DSL_ARCH or "
                        "the visible GPU)")
    parser.add_argument("--shapes", help="layer shapes for the GEMM configs: a preset "
                        "(llama-3.1-8b, llama-3.1-70b) or NxK,...; default: all configs")
    parser.add_argument("--cache-dir", help="overrides NVFP4_KIT_CACHE_DIR")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every cache event")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    # the package logger is at INFO by default (NVFP4_KIT_LOG_LEVEL): the cache's events follow -v
    logging.getLogger("nvfp4_kit.compile_cache").setLevel(logging.INFO if args.verbose else logging.WARNING)
    if args.shapes:
        from .shapes import parse_shapes

        try:
            parse_shapes(args.shapes)  # before minutes of compiling, not after
        except ValueError as exc:
            parser.error(f"--shapes: {exc}")
    from .kernels import compile_cache

    if args.cache_dir:
        compile_cache.set_cache_dir(args.cache_dir)
    try:
        if args.arch:
            compile_cache.set_target_arch(_canonical_arch(args.arch))
        arch = compile_cache.target_arch()
    except Exception as exc:
        parser.error(f"--arch: {exc}")
    summary = run(arch, args.shapes)
    gemm = summary.get("gemm")
    return 1 if isinstance(gemm, dict) and "error" in gemm else 0


if __name__ == "__main__":
    sys.exit(main())
