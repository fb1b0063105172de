"""nvfp4-kit: NVFP4 GEMM and quantize kernels for Hopper and Blackwell behind one torch op API."""

import logging as _logging

__version__ = "0.1.0"


def _configure_logger() -> None:
    from . import env

    _logging.getLogger("nvfp4_kit").setLevel(env.log_level())


_configure_logger()

__all__ = ["__version__"]
