"""Shared fixtures: tiny-preset checkpoints (bf16 and NVFP4 quantized from it), made once per session."""

import os

import pytest

os.environ.setdefault("MINI_ENGINE_PROGRESS", "0")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    from mini_engine.make_checkpoint import main

    root = tmp_path_factory.mktemp("tiny")
    for fmt in ("bf16", "nvfp4"):
        assert main(["--preset", "tiny", "--format", fmt, "--out", str(root / fmt), "--device", "cpu"]) == 0
    return {"bf16": root / "bf16", "nvfp4": root / "nvfp4"}
