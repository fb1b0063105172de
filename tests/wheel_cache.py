"""Pinned third-party wheels for CPU contract tests, downloaded once into a cache kept between runs.

Packages we only read or import on CPU (FlashInfer, vLLM, SGLang) are installed `--no-deps` into a
private target directory, never into the test environment itself (their torch pins would replace ours).
Cache: $NVFP4_KIT_TEST_WHEEL_CACHE or ~/.cache/nvfp4_kit_test_wheels.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["cache_root", "install_target"]


def cache_root() -> Path:
    default = Path.home() / ".cache" / "nvfp4_kit_test_wheels"
    root = Path(os.environ.get("NVFP4_KIT_TEST_WHEEL_CACHE", default))
    root.mkdir(parents=True, exist_ok=True)
    return root


def install_target(name: str, requirements: list[str]) -> Path:
    """A directory with `requirements` installed (--no-deps); skips the test if pip cannot fetch them.

    The directory name carries a hash of the requirement list, so changing it builds a fresh one."""
    name = f"{name}-{hashlib.sha256(' '.join(requirements).encode()).hexdigest()[:8]}"
    target = cache_root() / name
    marker = target / ".complete"
    if marker.exists():
        return target
    with open(cache_root() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return target
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
               "--disable-pip-version-check", "--target", str(target), *requirements]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            if os.environ.get("CI"):
                raise RuntimeError(f"pip could not install {requirements}:\n{result.stderr[-2000:]}")
            pytest.skip(f"pip could not install {requirements}: {result.stderr.strip()[-300:]}")
        marker.touch()
    return target
