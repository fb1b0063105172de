"""Engine adapters: nvfp4_kit inside vLLM (vllm==0.33.0) and SGLang (sglang==0.5.23).

Submodules import their engine at import time, so nothing here is imported by ``import nvfp4_kit``:

* ``nvfp4_kit.adapters.vllm``: ``NvFp4KitLinearKernel`` (vLLM's NVFP4 linear-kernel interface) and
  ``register()``, called by the patched vLLM (``--linear-backend nvfp4_kit``) or by the plugin.
* ``nvfp4_kit.adapters.sglang``: hooks on SGLang's ModelOpt NVFP4 linear methods, ``install()`` (called
  by the patched SGLang, ``--fp4-gemm-backend nvfp4_kit``) and ``register_hooks()`` (plugin).
* ``nvfp4_kit.adapters.plugins``: the entry points ``vllm.general_plugins`` / ``sglang.srt.plugins``,
  active only with NVFP4_KIT_VLLM=1 / NVFP4_KIT_SGLANG=1.
* ``nvfp4_kit.adapters.layer_prep``: the engine-independent part (checkpoint tensors -> PreparedWeight,
  warm-up, forward), shared by both.

docs/engines.md says how to install, patch or plug in, and what was (not) run on a GPU.
"""

__all__: list[str] = []
