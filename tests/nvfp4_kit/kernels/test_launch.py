"""kernels/launch: the per-thread ctypes slots carry exactly the bytes the DSL's own marshalling
passes (checked on compiled kernels, no GPU needed), and the launcher falls back to the DSL's call
path when they do not."""

import ctypes
import logging
import threading

import pytest

from nvfp4_kit.kernels import launch
from nvfp4_kit.kernels.launch import ARG_I32, ARG_U32, ARG_WORD, Launcher, check_calling_convention

cutlass = pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl not installed")

_ADDRS = (0x7F00_0000_1000, 0x7F00_0000_2010, 0x7F12_3456_7890, 0x7F00_0000_4000, 0x7F00_0000_5000,
          0x7F00_0000_6000)


def test_gemm_arguments_match_the_dsl_marshalling():
    from nvfp4_kit.kernels import gemm_sm90 as G
    from nvfp4_kit.kernels.gemm_sm90_config import GemmConfig

    launcher = G._compiled(GemmConfig(8, 1, 8, 2))
    values = _ADDRS + (5, 28672, 14336, 112, 50176, 264, 1, 0xABCD)
    assert check_calling_convention(launcher.fn, launcher.kinds, values, G._dsl_args(values))
    # the comparison can fail: other values for the DSL than for the slots
    other = values[:6] + (6,) + values[7:]
    assert not check_calling_convention(launcher.fn, launcher.kinds, values, G._dsl_args(other))


@pytest.mark.parametrize("kind,ints", [("quantize", (7, 256, 0x8000_0001, 5)), ("qdq", (99,)),
                                       ("amax", (1234,))])
def test_quantize_arguments_match_the_dsl_marshalling(kind, ints):
    from nvfp4_kit.kernels import quantize as Q

    launcher = Q._get(kind, False, False, Q.select_config(7, 4096))
    pointers = len(Q._SIGNATURES[kind][0])
    values = _ADDRS[:pointers] + ints + (0x5678,)
    assert check_calling_convention(launcher.fn, launcher.kinds, values, launcher._dsl_args(values))


class _FakeCompiled:
    """The two methods of a compiled DSL function the launcher uses; `dsl_bytes` decides what the
    'DSL marshalling' yields (the slot bytes of the same values, or something else)."""

    def __init__(self, kinds, corrupt=False):
        self.kinds, self.corrupt = kinds, corrupt
        self.fast_calls, self.dsl_calls = [], []

    def generate_execution_args(self, *dsl_args):
        keep = []
        for kind, value in zip(self.kinds, dsl_args, strict=True):
            ctype = {ARG_WORD: ctypes.c_uint64, ARG_I32: ctypes.c_int32, ARG_U32: ctypes.c_uint32}[kind]
            keep.append(ctype(value + (1 if self.corrupt else 0)))
        self._keep = keep
        return [ctypes.addressof(k) for k in keep], []

    def run_compiled_program(self, addrs):
        sizes = [{ARG_WORD: 8, ARG_I32: 4, ARG_U32: 4}[k] for k in self.kinds]
        self.fast_calls.append([ctypes.string_at(a, n) for a, n in zip(addrs, sizes, strict=True)])

    def __call__(self, *dsl_args):
        self.dsl_calls.append(dsl_args)


def test_launcher_writes_each_call_into_the_slots():
    kinds = ARG_WORD + ARG_I32 + ARG_U32 + ARG_WORD
    fn = _FakeCompiled(kinds)
    run = Launcher(fn, kinds, lambda values: tuple(values))
    run(0x7F00_0000_1000, -3, 0xFFFF_FFFF, 42)
    run(16, 7, 1, 0)
    assert fn.dsl_calls == []
    assert fn.fast_calls[0] == [(0x7F00_0000_1000).to_bytes(8, "little"), (-3).to_bytes(4, "little", signed=True),
                                b"\xff\xff\xff\xff", (42).to_bytes(8, "little")]
    assert fn.fast_calls[1][0] == (16).to_bytes(8, "little") and fn.fast_calls[1][1] == (7).to_bytes(4, "little")
    with pytest.raises(TypeError, match="4 arguments"):
        run(1, 2, 3)


def test_launcher_slots_are_per_thread():
    kinds = ARG_WORD + ARG_I32
    run = Launcher(_FakeCompiled(kinds), kinds, lambda values: tuple(values))
    run(1, 1)
    mine = run._slots()[1]
    other = []
    thread = threading.Thread(target=lambda: other.append(run._slots()[1]))
    thread.start()
    thread.join()
    assert set(mine).isdisjoint(other[0])


def test_launcher_falls_back_to_the_dsl_path_when_the_bytes_differ(caplog):
    kinds = ARG_WORD + ARG_I32
    fn = _FakeCompiled(kinds, corrupt=True)
    run = Launcher(fn, kinds, lambda values: ("dsl", *values))
    with caplog.at_level(logging.WARNING, logger="nvfp4_kit.launch"):
        run(0x1000, 3)
        run(0x2000, 4)
    assert fn.fast_calls == [] and fn.dsl_calls == [("dsl", 0x1000, 3), ("dsl", 0x2000, 4)]
    assert "differ" in caplog.text


def test_unknown_argument_kind_is_named():
    with pytest.raises(ValueError, match="'x'"):
        Launcher(_FakeCompiled("w"), "wx", lambda values: values)


def test_on_current_stream_appends_the_stream_handle(monkeypatch):
    kinds = ARG_WORD + ARG_I32 + ARG_WORD
    fn = _FakeCompiled(kinds)
    monkeypatch.setattr(launch.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(launch, "current_stream_handle", lambda index: 0x5000 + index)
    Launcher(fn, kinds, lambda values: tuple(values)).on_current_stream(0, 0x7F00, 9)
    assert fn.fast_calls == [[(0x7F00).to_bytes(8, "little"), (9).to_bytes(4, "little"),
                              (0x5000).to_bytes(8, "little")]]


def test_on_device_switches_only_for_another_device(monkeypatch):
    monkeypatch.setattr(launch.torch.cuda, "current_device", lambda: 0)
    switched = []
    monkeypatch.setattr(launch.torch.cuda, "device", lambda index: switched.append(index) or launch._SAME_DEVICE)
    with launch.on_device(0):
        pass
    with launch.on_device(None):
        pass
    assert switched == []
    with launch.on_device(1):
        pass
    assert switched == [1]
