"""Fixtures for the server tests: the built-in model's tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DEFAULT_MODEL = REPO / "mini_engine" / "assets" / "default_model"


@pytest.fixture(scope="session")
def default_tokenizer():
    from transformers import AutoTokenizer

    if not (DEFAULT_MODEL / "tokenizer.json").is_file():
        pytest.skip(f"built-in model missing: {DEFAULT_MODEL}")
    return AutoTokenizer.from_pretrained(str(DEFAULT_MODEL))
