"""mini_engine: a small, readable serving engine for NVFP4 (and bf16) Llama checkpoints on nvfp4_kit.

    from mini_engine import LLM, SamplingParams
    llm = LLM("nvidia/Llama-3.1-8B-Instruct-NVFP4")          # or a directory, or a preset + dummy weights
    out = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=32))
    print(out[0].outputs[0].text)
"""

from __future__ import annotations

import logging

from . import env

__all__ = ["LLM", "LLMEngine", "EngineConfig", "SamplingParams", "RequestOutput"]

logging.getLogger("mini_engine").setLevel(env.log_level())


def __getattr__(name: str):  # lazy: `import mini_engine` stays light (no torch) until used
    if name == "LLM":
        from .llm import LLM

        return LLM
    if name in ("LLMEngine", "RequestOutput"):
        from .engine import llm_engine

        return getattr(llm_engine, name)
    if name == "EngineConfig":
        from .config import EngineConfig

        return EngineConfig
    if name == "SamplingParams":
        from .sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'mini_engine' has no attribute {name!r}")
