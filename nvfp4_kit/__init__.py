"""nvfp4-kit: NVFP4 GEMM and quantize kernels for Hopper and Blackwell behind one torch op API."""

__version__ = "0.1.0"

__all__ = ["__version__"]
