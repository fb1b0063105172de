"""Import-only stand-in for torchvision, for importing SGLang on a CPU-only test machine.

SGLang's layer packages import its multimodal configs, which import torchvision at module level. The
torchvision wheels on PyPI link CUDA builds of torch and fail to load against the CPU torch used here,
and no NVFP4 code path uses torchvision. `install()` registers a meta-path finder that makes
`import torchvision[.x.y]` succeed with placeholder modules; any *call* into them raises.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class _Placeholder(types.ModuleType):
    __path__: list[str] = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__}: torchvision is a test placeholder here")

    def __mro_entries__(self, bases):
        return (object,)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Placeholder(spec.name)

    def exec_module(self, module):
        module.__version__ = "0.0.0+placeholder"


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
