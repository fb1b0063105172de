"""`python -m mini_engine.serve` flags: vLLM's names, each mapped onto its EngineConfig field."""

from __future__ import annotations

import dataclasses

import pytest

from mini_engine.config import EngineConfig
from mini_engine.serve import DEFAULT_MODEL_DIR, build_parser, engine_config_kwargs


def parse(*argv: str) -> dict:
    return engine_config_kwargs(build_parser().parse_args(list(argv)), EngineConfig)


def test_no_model_serves_the_builtin_model():
    assert parse() == {"model": str(DEFAULT_MODEL_DIR)}
    assert (DEFAULT_MODEL_DIR / "tokenizer.json").is_file()


def test_vllm_flag_names_map_to_engine_config():
    kw = parse("--model", "llama-3.1-8b", "--dtype", "bfloat16", "--quantization", "nvfp4",
               "--linear-backend", "cute_sm90", "--load-format", "dummy", "--max-num-seqs", "64",
               "--max-model-len", "2048", "--gpu-memory-utilization", "0.8", "--enforce-eager",
               "--served-model-name", "a", "b", "--no-enable-prefix-caching")
    assert kw == {"model": "llama-3.1-8b", "dtype": "bfloat16", "quantization": "nvfp4",
                  "linear_backend": "cute_sm90", "load_format": "dummy", "max_num_seqs": 64,
                  "max_model_len": 2048, "gpu_memory_utilization": 0.8, "enforce_eager": True,
                  "served_model_name": "a", "enable_prefix_caching": False}
    config = EngineConfig(**kw)
    assert config.max_num_seqs == 64 and config.quantization == "nvfp4"


def test_every_engine_flag_is_a_config_field():
    fields = {f.name for f in dataclasses.fields(EngineConfig)}
    server_only = {"host", "port", "max_waiting", "log_level", "access_log"}
    dests = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert dests - server_only <= fields


@pytest.mark.parametrize("argv", [["--quantization", "fp8"], ["--load-format", "pt"]])
def test_bad_choices_exit(argv):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
