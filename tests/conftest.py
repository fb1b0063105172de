"""Test-wide setup: the `gpu` marker, a private kit cache, and a CuTe DSL target for CPU compiles."""

import os
import tempfile

import pytest
import torch

# Kernels compile on a CPU-only machine when CuTe DSL is told the target; GPUs report their own.
if not torch.cuda.is_available():
    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
# Never write tuning tables / compiled kernels into the user's cache from tests.
os.environ.setdefault("NVFP4_KIT_CACHE_DIR", tempfile.mkdtemp(prefix="nvfp4_kit_test_cache_"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
