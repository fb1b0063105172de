"""CuTe DSL kernels (Hopper GEMM, activation quantize) and the FlashInfer SM100 delegation.

Reached only through `nvfp4_kit.ops`; importing this package imports no optional dependency.
"""

__all__: list[str] = []
