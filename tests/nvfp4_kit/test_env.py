"""env.py: one place reads every variable; flags parse strictly."""

import pytest

from nvfp4_kit import env


def test_cache_dir_follows_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("NVFP4_KIT_CACHE_DIR", str(tmp_path / "c"))
    assert env.cache_dir() == tmp_path / "c"


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("ON", True), ("0", False), ("", False)])
def test_flags(monkeypatch, value, expected):
    monkeypatch.setenv("NVFP4_KIT_DISABLE_DISK_CACHE", value)
    assert env.disable_disk_cache() is expected


def test_bad_flag_names_the_variable(monkeypatch):
    monkeypatch.setenv("NVFP4_KIT_VLLM", "maybe")
    with pytest.raises(ValueError, match="NVFP4_KIT_VLLM='maybe'"):
        env.kit_enabled_for_vllm()


def test_flashinfer_numerics_env(monkeypatch):
    monkeypatch.setenv("FLASHINFER_NVFP4_4OVER6", "1")
    assert "FLASHINFER_NVFP4_4OVER6" in env.flashinfer_numerics_env()


def test_only_env_py_reads_the_environment():
    import pathlib
    import re

    root = pathlib.Path(env.__file__).parent
    offenders = [p.name for p in root.rglob("*.py") if p.name != "env.py"
                 and re.search(r"os\.environ|os\.getenv", p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("value,expected", [("debug", "DEBUG"), (" Warning ", "WARNING"), ("10", 10), ("", "INFO")])
def test_log_level_takes_names_and_numbers(monkeypatch, value, expected):
    monkeypatch.setenv("NVFP4_KIT_LOG_LEVEL", value)
    assert env.log_level() == expected


def test_bad_log_level_names_the_variable_at_import(monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("NVFP4_KIT_LOG_LEVEL", "verbose")
    run = subprocess.run([sys.executable, "-c", "import nvfp4_kit"], capture_output=True, text=True)
    assert run.returncode != 0 and "NVFP4_KIT_LOG_LEVEL='verbose'" in run.stderr

