"""`python -m nvfp4_kit.precompile`: fills the disk cache on a CPU-only machine; a rerun only loads."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import types

import pytest
import torch

from nvfp4_kit import precompile

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU compile path (CUTE_DSL_ARCH)")


def _cli(tmp_path, *args, arch="sm_90a"):
    env = {k: v for k, v in os.environ.items() if k != "NVFP4_KIT_DISABLE_DISK_CACHE"}
    return subprocess.run(
        [sys.executable, "-m", "nvfp4_kit.precompile", "--arch", arch,
         "--cache-dir", str(tmp_path), *args],
        env=env, capture_output=True, text=True, timeout=900,
    )


@cpu_only
def test_cli_compiles_then_loads_from_disk(tmp_path):
    first = _cli(tmp_path, "--shapes", "llama-3.1-8b")
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-2000:]
    assert "arch=sm_90a" in first.stdout
    assert "quantize: 8 kernels" in first.stdout and "(compiled 8, loaded from disk 0)" in first.stdout
    assert "quantize: quantize_quantize:" in first.stdout  # every key is printed
    assert len(list((tmp_path / "kernels").glob("quantize_*.o"))) == 8
    assert "compile-cache miss" not in first.stderr  # cache events only with -v
    second = _cli(tmp_path, "--shapes", "llama-3.1-8b")
    assert second.returncode == 0, second.stderr[-3000:]
    line = next(ln for ln in second.stdout.splitlines() if ln.startswith("quantize: 8 kernels"))
    assert line.endswith("(compiled 0, loaded from disk 8)")


@cpu_only
def test_cli_targets_sm100a_from_a_cpu_machine(tmp_path):
    res = _cli(tmp_path, arch="sm_100a")  # even where CUTE_DSL_ARCH says sm_90a
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-2000:]
    assert "arch=sm_100a" in res.stdout and "quantize: 8 kernels" in res.stdout
    metas = [p.read_text() for p in (tmp_path / "kernels").glob("quantize_*.json")]
    assert len(metas) == 8 and all('"arch": "sm_100a"' in m for m in metas)


def test_gemm_configs_follow_shapes():
    calls = []

    def candidate_configs(m, n, k):
        calls.append((m, n, k))
        return [("cfg", min(m, 64))]

    fake = types.SimpleNamespace(candidate_configs=candidate_configs)
    assert precompile._gemm_configs(fake, None) is None
    configs = precompile._gemm_configs(fake, {"o": (4096, 4096)})
    assert {(n, k) for _, n, k in calls} == {(4096, 4096)}
    assert sorted(c[1] for c in configs) == [1, 2, 4, 8, 16, 32, 64]


def test_gemm_failure_is_reported_not_hidden(monkeypatch):
    from nvfp4_kit.kernels import quantize

    monkeypatch.setattr(quantize, "precompile", lambda arch: ["q"])
    fake = types.ModuleType("nvfp4_kit.kernels.gemm_sm90")

    def broken(arch, configs=None):
        raise RuntimeError("boom")

    fake.precompile = broken
    import nvfp4_kit.kernels

    monkeypatch.setitem(sys.modules, "nvfp4_kit.kernels.gemm_sm90", fake)
    monkeypatch.setattr(nvfp4_kit.kernels, "gemm_sm90", fake, raising=False)
    out = io.StringIO()
    summary = precompile.run("sm_90a", None, out=out)
    assert summary["gemm"] == {"error": "RuntimeError: boom"}
    assert "gemm: FAILED" in out.getvalue() and "quantize: 1 kernels in" in out.getvalue()


@pytest.mark.parametrize("args, message", [
    (("--arch", "bogus"), "--arch: 'bogus': nvfp4_kit's kernels target sm_90a"),
    (("--arch", "sm_90a", "--shapes", "llama-8b"), "--shapes: shapes: 'llama-8b' is neither a preset"),
    (("--arch", "sm_90a", "--shapes", "4096x100"), "K a multiple of 16"),
    (("--arch", "sm_90a", "--shapes", "0x4096"), "N and K must be positive"),
])
def test_cli_rejects_bad_arguments_before_compiling(tmp_path, args, message):
    res = subprocess.run([sys.executable, "-m", "nvfp4_kit.precompile", "--cache-dir", str(tmp_path), *args],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "kernels").exists() or not any((tmp_path / "kernels").iterdir())


def test_arch_spellings():
    assert {precompile._canonical_arch(a) for a in ("sm90", "SM_90", "sm_90a", " sm90a ")} == {"sm_90a"}
    assert {precompile._canonical_arch(a) for a in ("sm100", "sm_100", "sm_100a")} == {"sm_100a"}
    with pytest.raises(ValueError, match="sm_89"):
        precompile._canonical_arch("sm_89")
