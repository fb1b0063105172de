"""CPU: the persistent compiled-kernel cache (memory -> disk -> compile), its keys and its safety."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nvfp4_kit.kernels import compile_cache

cutlass = pytest.importorskip("cutlass")
import cutlass.cute as cute  # noqa: E402
from cutlass import Int32  # noqa: E402
from cutlass.cute.runtime import make_fake_stream, make_ptr  # noqa: E402

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU compile path (CUTE_DSL_ARCH)")


@cute.kernel
def _copy_kernel(src: cute.Pointer, dst: cute.Pointer, n: Int32):
    tid, _, _ = cute.arch.thread_idx()
    if tid < n:
        t = cute.make_tensor(src + tid, cute.make_layout(1))
        cute.make_tensor(dst + tid, cute.make_layout(1)).store(t.load())


@cute.jit
def _copy(src: cute.Pointer, dst: cute.Pointer, n: Int32, stream):
    _copy_kernel(src, dst, n).launch(grid=[1, 1, 1], block=[32, 1, 1], stream=stream)


def _args():
    p = make_ptr(cutlass.Float32, 0, cute.AddressSpace.gmem, assumed_align=4)
    return (p, p, 1, make_fake_stream())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NVFP4_KIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("NVFP4_KIT_DISABLE_DISK_CACHE", raising=False)
    compile_cache.clear_memory_cache()
    compile_cache.reset_stats()
    yield tmp_path / "kernels"
    compile_cache.clear_memory_cache()


@cpu_only
def test_miss_writes_disk_then_memory_then_disk_hits(cache, caplog):
    with caplog.at_level(logging.INFO, logger="nvfp4_kit.compile_cache"):
        fn = compile_cache.compile("t_copy", {"v": 1}, _copy, *_args())
    assert any("compile-cache miss: t_copy:" in r.message and '"v": 1' in r.message
               for r in caplog.records)
    assert compile_cache.stats()["compiles"] == 1
    assert len(list(cache.glob("t_copy-*.o"))) == 1 and len(list(cache.glob("t_copy-*.json"))) == 1
    assert compile_cache.compile("t_copy", {"v": 1}, _copy, *_args()) is fn  # memory hit
    compile_cache.clear_memory_cache()
    loaded = compile_cache.compile("t_copy", {"v": 1}, _copy, *_args())
    st = compile_cache.stats()
    assert (st["compiles"], st["disk_loads"], st["memory_hits"]) == (1, 1, 1)
    assert callable(loaded) and loaded is not fn
    assert not list(cache.glob(".*tmp"))  # atomic writes leave no temporaries


@cpu_only
def test_identity_covers_key_arch_versions_and_sources(cache):
    a = compile_cache.entry_identity("k", {"v": 1}, _copy)
    assert a["arch"] == os.environ.get("CUTE_DSL_ARCH", a["arch"])
    assert {"kernel", "key", "arch", "cutlass_dsl", "nvfp4_kit", "source", "host"} <= set(a)
    assert a["cutlass_dsl"] == cutlass.__version__ and a["source"] != "unknown"
    b = compile_cache.entry_identity("k", {"v": 2}, _copy)
    c = compile_cache.entry_identity("k", {"v": 1}, _copy, {"options": "--gpu-arch sm_100a"})
    assert len({compile_cache._digest(i) for i in (a, b, c)}) == 3
    assert c["arch"] == "sm_100a"


@cpu_only
def test_corrupt_entry_is_dropped_and_recompiled(cache, caplog):
    compile_cache.compile("t_copy", {"v": 3}, _copy, *_args())
    (obj,) = cache.glob("t_copy-*.o")
    obj.write_bytes(b"not an object file")
    compile_cache.clear_memory_cache()
    with caplog.at_level(logging.WARNING, logger="nvfp4_kit.compile_cache"):
        compile_cache.compile("t_copy", {"v": 3}, _copy, *_args())
    st = compile_cache.stats()
    assert st["bad_entries"] == 1 and st["compiles"] == 2
    assert obj.stat().st_size > 1000  # rewritten


@cpu_only
def test_disable_disk_cache_keeps_memory_only(cache, monkeypatch):
    monkeypatch.setenv("NVFP4_KIT_DISABLE_DISK_CACHE", "1")
    compile_cache.compile("t_copy", {"v": 4}, _copy, *_args())
    compile_cache.clear_memory_cache()
    compile_cache.compile("t_copy", {"v": 4}, _copy, *_args())
    assert compile_cache.stats()["compiles"] == 2
    assert not cache.exists() or not list(cache.iterdir())


def test_refuses_to_compile_during_graph_capture(cache, monkeypatch):
    monkeypatch.setattr(compile_cache, "is_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="CUDA graph is being captured"):
        compile_cache.compile("t_copy", {"v": 5}, _copy, *_args())


def test_host_target_is_generic_unless_chosen():
    if compile_cache.platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 only")
    assert "--host-target" in compile_cache._with_host_target({})["options"]
    kept = compile_cache._with_host_target({"options": "--host-target linux-aarch64"})
    assert kept["options"] == "--host-target linux-aarch64"


_RACER = """
import sys
from nvfp4_kit.kernels import compile_cache
sys.path.insert(0, {here!r})
import test_compile_cache as t
compile_cache.compile("t_race", {{"v": 1}}, t._copy, *t._args())
print("done", compile_cache.stats()["compiles"] + compile_cache.stats()["disk_loads"])
"""


@cpu_only
def test_concurrent_processes_write_one_valid_entry(cache):
    env = {**os.environ, "NVFP4_KIT_CACHE_DIR": str(cache.parent)}
    code = _RACER.format(here=str(Path(__file__).parent))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        assert "done 1" in out
    assert len(list(cache.glob("t_race-*.o"))) == 1
    assert not list(cache.glob(".*tmp"))
    # re-hash the sources as the children did (test*.py here may have changed since we hashed)
    compile_cache._source_digests.clear()
    compile_cache.compile("t_race", {"v": 1}, _copy, *_args())  # loads the raced file
    assert compile_cache.stats()["disk_loads"] == 1


def test_entries_are_readable_by_other_users(cache):
    # built as root at image build, loaded by the serving user: mkstemp's 0600 must not survive
    compile_cache.clear_memory_cache()
    compile_cache.compile("t_copy", {"v": 6}, _copy, *_args())
    entries = [p for p in cache.rglob("*") if p.is_file()]
    assert entries and all(p.stat().st_mode & 0o044 == 0o044 for p in entries)
