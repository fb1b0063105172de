"""Entry points for the engines' plugin groups: the no-edit alternative to patches/.

pyproject.toml registers
    [project.entry-points."vllm.general_plugins"]   nvfp4_kit = "nvfp4_kit.adapters.plugins:vllm_plugin"
    [project.entry-points."sglang.srt.plugins"]     nvfp4_kit = "nvfp4_kit.adapters.plugins:sglang_plugin"

Both engines load every installed plugin in every process (vLLM: front end, engine core and workers;
SGLang: launcher and each scheduler/TP process), so each function does nothing unless its environment
variable is set (NVFP4_KIT_VLLM=1 / NVFP4_KIT_SGLANG=1, read through nvfp4_kit.env) and may run more
than once. The engine modules are imported only when enabled.
"""

from __future__ import annotations

from .. import env

__all__ = ["vllm_plugin", "sglang_plugin"]


def vllm_plugin() -> None:
    """vllm.general_plugins: kit first in vLLM's NVFP4 kernel choice for `--linear-backend auto`."""
    if not env.kit_enabled_for_vllm():
        return
    from . import vllm as adapter

    adapter.register()


def sglang_plugin() -> None:
    """sglang.srt.plugins: kit hooks on SGLang's NVFP4 linears for `--fp4-gemm-backend auto`."""
    if not env.kit_enabled_for_sglang():
        return
    from . import sglang as adapter

    adapter.register_hooks()
