"""The pinned vLLM / SGLang releases as plain file trees, for CPU tests of the patches and adapters.

* `wheel(engine)`: the released wheel, `pip download --no-deps` once into the test wheel cache
  ($NVFP4_KIT_TEST_WHEEL_CACHE or ~/.cache/nvfp4_kit_test_wheels; the vLLM wheel is ~340 MB).
* `pristine_tree(engine)`: its Python sources and small data files (no compiled .so, no CUDA headers)
  plus the dist-info, unpacked once into that cache and never modified.
* `site_packages(engine, dest, files)`: a copy of (part of) that tree in a temp dir, to patch.
* `engine_deps(engine)`: a curated set of the engine's import-time dependencies, `--no-deps` into the
  cache (tests.wheel_cache), without its torch / CUDA pins: the test environment's CPU torch is used.
* `run_apply_patch(...)`: scripts/apply_patch.sh, as a user runs it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.wheel_cache import cache_root, install_target

__all__ = [
    "REPO",
    "PINNED",
    "patch_file",
    "patched_files",
    "wheel",
    "pristine_tree",
    "site_packages",
    "engine_deps",
    "run_apply_patch",
]

REPO = Path(__file__).resolve().parents[2]
PINNED = {"vllm": "0.33.0", "sglang": "0.5.23"}
# Files other than Python sources that the engines read at import time (configs, templates).
_DATA_SUFFIXES = (".py", ".json", ".yaml", ".yml", ".jinja", ".txt", ".typed", ".toml")

_TREE_LAYOUT = 2  # bump when what pristine_tree() extracts changes (a new cache folder is made)
# Import-time dependencies of the modules the tests import, found by importing them on CPU in a venv
# made like CI's (torch 2.13 CPU + this repo's [dev] extra, which also provides pydantic, transformers,
# fastapi, pillow...); exact versions so that CI resolves the same files. Not included on purpose:
# torch (ours), anything CUDA, torchvision (an import placeholder: its wheels need CUDA torch).
_DEPS = {
    "vllm": [
        "apache-tvm-ffi==0.1.11", "cachetools==8.0.2", "cbor2==6.3.0", "certifi==2026.10.19.post1",
        "charset-normalizer==3.5.3", "cloudpickle==3.1.3", "compressed-tensors==0.17.0", "einops==0.8.2",
        "idna==3.20", "llguidance==1.7.6", "loguru==0.7.3", "msgspec==0.22.0", "openai-harmony==0.0.8",
        "partial-json-parser==0.2.1.1.post7", "prometheus-client==0.26.0", "psutil==7.2.2",
        "py-cpuinfo==9.0.0", "pybase64==1.5.1", "pyzmq==27.3.0", "requests==2.34.2", "urllib3==2.8.0",
        "uvloop==0.23.0", "xgrammar==0.2.8",
    ],
    # SGLang imports triton at module level in ~66 modules (the real wheel is used, ~640 MB unpacked, once).
    "sglang": [
        "apache-tvm-ffi==0.1.11", "certifi==2026.10.19.post1", "charset-normalizer==3.5.3",
        "compressed-tensors==0.18.0", "dill==0.4.1", "gguf==0.19.0", "idna==3.20", "ipython==9.18.1",
        "loguru==0.7.3", "msgspec==0.22.0", "orjson==3.13.0", "psutil==7.2.2", "pybase64==1.5.1",
        "pyzmq==27.3.0", "requests==2.34.2", "sentencepiece==0.2.1", "traitlets==5.16.1", "triton==3.6.0",
        "urllib3==2.8.0",
    ],
}


def patch_file(engine: str) -> Path:
    return REPO / "patches" / engine / f"{engine}-{PINNED[engine]}.patch"


def patched_files(engine: str) -> list[str]:
    """Paths (relative to site-packages) that the pinned patch touches."""
    return re.findall(r"^\+\+\+ b/(\S+)", patch_file(engine).read_text(), flags=re.M)


def _fail_or_skip(message: str):
    if os.environ.get("CI"):
        raise RuntimeError(message)
    pytest.skip(message)


def wheel(engine: str) -> Path:
    """The pinned release wheel, downloaded once (skips the test offline, fails it in CI)."""
    spec = f"{engine}=={PINNED[engine]}"
    folder = cache_root() / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    pattern = f"{engine}-{PINNED[engine]}-*.whl"
    with open(cache_root() / f"wheels-{engine}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = sorted(folder.glob(pattern))
        if not found:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-d", str(folder), spec]
            result = subprocess.run(cmd, capture_output=True, text=True)
            found = sorted(folder.glob(pattern))
            if result.returncode != 0 or not found:
                _fail_or_skip(f"pip could not download {spec}: {result.stderr.strip()[-400:]}")
    return found[-1]


def pristine_tree(engine: str) -> Path:
    """Sources + small data files + dist-info of the pinned wheel, unpacked once into the cache."""
    target = cache_root() / f"{engine}-{PINNED[engine]}-tree-v{_TREE_LAYOUT}"
    marker = target / ".complete"
    if marker.exists():
        return target
    whl = wheel(engine)
    with open(cache_root() / f"{engine}-tree.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        with zipfile.ZipFile(whl) as z:
            members = [
                n for n in z.namelist()
                if ".dist-info/" in n or (not n.endswith("/") and n.endswith(_DATA_SUFFIXES))
            ]
            z.extractall(target, members)
            for name in z.namelist():  # keep every folder (SGLang checks that its C++ include dir exists)
                (target / name).parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    return target


def site_packages(engine: str, dest: Path, files: list[str] | None = None) -> Path:
    """Copy the pristine tree (or only `files` + the dist-info) to `dest`; returns `dest`."""
    src = pristine_tree(engine)
    dist_info = next(src.glob(f"{engine}-{PINNED[engine]}.dist-info"))
    if files is None:
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".complete"), dirs_exist_ok=True)
        return dest
    shutil.copytree(dist_info, dest / dist_info.name, dirs_exist_ok=True)
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dest / rel)
    return dest


def engine_deps(engine: str) -> Path:
    """A --no-deps target dir with the curated import-time dependencies (skips offline)."""
    tag = hashlib.sha256(" ".join(_DEPS[engine]).encode()).hexdigest()[:8]  # a new list, a new dir
    return install_target(f"{engine}-{PINNED[engine]}-cpu-deps-{tag}", _DEPS[engine])


def run_apply_patch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    run_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "apply_patch.sh"), *args],
        capture_output=True, text=True, env=run_env, timeout=300,
    )
