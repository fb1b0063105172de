"""Where a benchmark result came from: the source commit, for the JSON files under benchmarks/results/."""

from __future__ import annotations

import subprocess
from pathlib import Path

from . import env

__all__ = ["git_commit"]

_ROOT = Path(__file__).resolve().parents[1]


def git_commit(root: Path = _ROOT) -> str:
    """NVFP4_KIT_SOURCE_COMMIT if set, else HEAD of the checkout at `root` (with "-dirty" when tracked
    files differ from it), else "unknown" (no git, or a copied tree without history)."""
    pinned = env.source_commit()
    if pinned:
        return pinned

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "--verify", "--short=12", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
