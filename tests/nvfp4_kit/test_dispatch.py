"""dispatch.py: M buckets, tuning-table precedence and persistence, describe(), backend resolution."""

import json
import sys
import types
from dataclasses import dataclass

import pytest

from nvfp4_kit import dispatch
from nvfp4_kit.backends import Fp4GemmBackend

KEY = dispatch.LayerKey("sm90", 6144, 4096, "bfloat16", "w4a16")


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("NVFP4_KIT_CACHE_DIR", str(tmp_path))
    # no committed default table: each test writes the tables it needs
    monkeypatch.setitem(dispatch._DEFAULT_TABLES, "sm90", tmp_path / "no_default_table.json")
    dispatch.reset()
    yield
    dispatch.reset()


@dataclass(frozen=True)
class _FakeConfig:
    name: str

    def to_dict(self):
        return {"name": self.name}

    @classmethod
    def from_dict(cls, d):
        return cls(d["name"])


@pytest.fixture
def fake_kernel(monkeypatch):
    """Stands in for nvfp4_kit.kernels.gemm_sm90 (its heuristic and config class only)."""
    mod = types.ModuleType("nvfp4_kit.kernels.gemm_sm90")
    mod.GemmConfig = _FakeConfig
    mod.heuristic_config = lambda m, n, k: _FakeConfig(f"heur-m{m}")
    mod.fits = lambda cfg, n, k: not cfg.name.startswith("misfit")
    import nvfp4_kit.kernels as kernels

    monkeypatch.setitem(sys.modules, "nvfp4_kit.kernels.gemm_sm90", mod)
    monkeypatch.setattr(kernels, "gemm_sm90", mod, raising=False)
    return mod


def test_m_bucket():
    assert [dispatch.m_bucket(m) for m in (0, 1, 2, 3, 16, 17, 8192, 100000)] == [1, 1, 2, 4, 16, 32, 8192, 8192]


def _entry(bucket, name, us=1.0):
    return {"n": 6144, "k": 4096, "dtype": "bfloat16", "mode": "w4a16", "m_bucket": bucket,
            "config": {"name": name}, "us": us}


def test_precedence_user_table_then_default_then_heuristic(fake_kernel, tmp_path, monkeypatch):
    default = tmp_path / "default.json"
    default.write_text(json.dumps({"arch": "sm90", "cutlass_dsl": dispatch.cutlass_dsl_version(),
                                   "entries": [_entry(1, "default-1"), _entry(2, "default-2")]}))
    monkeypatch.setitem(dispatch._DEFAULT_TABLES, "sm90", default)
    user = dispatch.TuningTable("sm90", {})
    user.entries[(6144, 4096, "bfloat16", "w4a16", 1)] = _entry(1, "tuned-1", 0.5)
    user.save(dispatch.user_table_path("sm90"))
    c1, c2, c3 = (dispatch.choose(KEY, Fp4GemmBackend.NVFP4_KIT, m) for m in (1, 2, 3))
    assert (c1.source, c1.kernel_config.name) == ("tuned", "tuned-1")
    assert (c2.source, c2.kernel_config.name) == ("default table", "default-2")
    assert (c3.source, c3.kernel_config.name) == ("heuristic", "heur-m4")
    assert "0.5 us" in c1.why


def test_table_for_another_cutlass_version_is_ignored(fake_kernel, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"arch": "sm90", "cutlass_dsl": "0.0.1", "entries": [_entry(1, "old")]}))
    assert dispatch.TuningTable.load(path, "sm90").entries == {}


def test_save_merges_and_replaces_atomically(tmp_path):
    path = tmp_path / "tuning" / "t.json"
    a = dispatch.TuningTable("sm90", {(6144, 4096, "bfloat16", "w4a16", 1): _entry(1, "a")})
    b = dispatch.TuningTable("sm90", {(6144, 4096, "bfloat16", "w4a16", 2): _entry(2, "b")})
    a.save(path)
    b.save(path)
    loaded = dispatch.TuningTable.load(path, "sm90")
    assert {e["config"]["name"] for e in loaded.entries.values()} == {"a", "b"}
    assert not list(path.parent.glob("*.tmp"))
    data = json.loads(path.read_text())
    assert data["kit_version"] and data["cutlass_dsl"] == dispatch.cutlass_dsl_version()


def test_unreadable_table_is_ignored(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    assert dispatch.TuningTable.load(path, "sm90").entries == {}


@pytest.mark.parametrize("content", [b"\xff\xfe garbage", b"null", b"[]", b'{"arch": "sm90", "entries": null}'])
def test_table_that_is_not_a_table_is_ignored(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    assert dispatch.TuningTable.load(path, "sm90", check_versions=False).entries == {}


def test_bad_entries_are_skipped_and_good_ones_kept(tmp_path, caplog):
    path = tmp_path / "t.json"
    missing_k = {k: v for k, v in _entry(2, "x").items() if k != "k"}
    path.write_text(json.dumps({"arch": "sm90", "entries": [
        _entry(1, "good"), missing_k, None, {**_entry(4, "y"), "m_bucket": "four"}, {**_entry(8, "z"), "config": 3},
    ]}))
    loaded = dispatch.TuningTable.load(path, "sm90", check_versions=False)
    assert [e["config"]["name"] for e in loaded.entries.values()] == ["good"]
    assert caplog.text.count("skipping entries[") == 4


def test_save_over_a_corrupt_table_replaces_it(tmp_path):
    path = tmp_path / "t.json"
    path.write_bytes(b"\xff not json")
    dispatch.TuningTable("sm90", {(6144, 4096, "bfloat16", "w4a16", 1): _entry(1, "a")}).save(path)
    assert [e["config"]["name"] for e in dispatch.TuningTable.load(path, "sm90").entries.values()] == ["a"]


def test_failed_save_leaves_the_table_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "t.json"
    dispatch.TuningTable("sm90", {(6144, 4096, "bfloat16", "w4a16", 1): _entry(1, "a")}).save(path)
    before = path.read_bytes()

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        dispatch.TuningTable("sm90", {(6144, 4096, "bfloat16", "w4a16", 2): _entry(2, "b")}).save(path)
    assert path.read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_entry_our_kernel_cannot_run_falls_back(fake_kernel, tmp_path, monkeypatch, caplog):
    default = tmp_path / "default.json"
    default.write_text(json.dumps({"arch": "sm90", "cutlass_dsl": dispatch.cutlass_dsl_version(),
                                   "entries": [_entry(1, "default-1"), _entry(2, "misfit-2")]}))
    monkeypatch.setitem(dispatch._DEFAULT_TABLES, "sm90", default)
    user = dispatch.TuningTable("sm90", {})
    user.entries[(6144, 4096, "bfloat16", "w4a16", 1)] = _entry(1, "misfit-1")
    user.entries[(6144, 4096, "bfloat16", "w4a16", 4)] = {**_entry(4, "x"), "config": {"nope": 1}}
    user.save(dispatch.user_table_path("sm90"))
    c1, c2, c4 = (dispatch.choose(KEY, Fp4GemmBackend.NVFP4_KIT, m) for m in (1, 2, 4))
    assert (c1.source, c1.kernel_config.name) == ("default table", "default-1")
    assert (c2.source, c2.kernel_config.name) == ("heuristic", "heur-m2")
    assert (c4.source, c4.kernel_config.name) == ("heuristic", "heur-m4")
    assert "misfit-1" in caplog.text and "misfit-2" in caplog.text and "KeyError" in caplog.text


def test_sm100_entry_with_an_unknown_backend_is_ignored(caplog):
    t = dispatch.TuningTable("sm100", {})
    t.entries[(4096, 4096, "bfloat16", "w4a4", 1)] = {"n": 4096, "k": 4096, "dtype": "bfloat16",
                                                      "mode": "w4a4", "m_bucket": 1, "backend": "warp9"}
    t.save(dispatch.user_table_path("sm100"))
    dispatch.reset()
    key = dispatch.LayerKey("sm100", 4096, 4096, "bfloat16", "w4a4")
    c = dispatch.choose(key, Fp4GemmBackend.FLASHINFER_CUTEDSL, 1)
    assert (c.backend, c.source) == (Fp4GemmBackend.FLASHINFER_CUTEDSL, "heuristic") and "warp9" in caplog.text


def test_describe_groups_buckets_and_says_why(fake_kernel):
    dispatch.register_layer(KEY, Fp4GemmBackend.NVFP4_KIT, "layers.0.qkv")
    rows = dispatch.describe(max_m=16)
    assert [r["m_max"] for r in rows] == [1, 2, 4, 8, 16]  # each heuristic config differs per bucket
    assert rows[0]["layers"] == "layers.0.qkv" and rows[0]["source"] == "heuristic"
    text = dispatch.describe_text(16)
    assert "N=6144 K=4096" in text and "heur-m1" in text


def test_choice_is_memoized_not_recomputed(fake_kernel):
    a = dispatch.choose(KEY, Fp4GemmBackend.NVFP4_KIT, 5)
    b = dispatch.choose(KEY, Fp4GemmBackend.NVFP4_KIT, 8)
    assert a is b


def test_sm100_choice_reads_per_bucket_backend_from_the_table():
    key = dispatch.LayerKey("sm100", 4096, 4096, "bfloat16", "w4a4")
    c = dispatch.choose(key, Fp4GemmBackend.FLASHINFER_CUTEDSL, 1)
    assert c.backend is Fp4GemmBackend.FLASHINFER_CUTEDSL and "never run" in c.why
    t = dispatch.TuningTable("sm100", {})
    t.entries[(4096, 4096, "bfloat16", "w4a4", 2)] = {"n": 4096, "k": 4096, "dtype": "bfloat16",
                                                      "mode": "w4a4", "m_bucket": 2, "backend": "cutlass"}
    t.save(dispatch.user_table_path("sm100"))
    dispatch.reset()
    assert dispatch.choose(key, Fp4GemmBackend.FLASHINFER_CUTEDSL, 2).backend is Fp4GemmBackend.FLASHINFER_CUTLASS
    trt = dispatch.choose(key, Fp4GemmBackend.FLASHINFER_TRTLLM, 2)
    assert trt.backend is Fp4GemmBackend.FLASHINFER_TRTLLM


def test_resolve_backend(monkeypatch):
    assert dispatch.resolve_backend("auto", "cpu") is Fp4GemmBackend.REFERENCE
    assert dispatch.resolve_backend("auto", "sm90") is Fp4GemmBackend.NVFP4_KIT
    assert dispatch.resolve_backend("auto", "sm100") is Fp4GemmBackend.FLASHINFER_CUTEDSL
    assert dispatch.resolve_backend("trtllm", "sm100") is Fp4GemmBackend.FLASHINFER_TRTLLM
    with pytest.raises(ValueError, match="no NVFP4 GEMM for this GPU"):
        dispatch.resolve_backend("auto", "defer")
    assert dispatch.resolve_backend("reference", "defer") is Fp4GemmBackend.REFERENCE
    with pytest.raises(ValueError, match="valid here: nvfp4_kit, reference"):
        dispatch.resolve_backend("cute-dsl", "sm90")
    monkeypatch.setenv("NVFP4_KIT_GEMM_BACKEND", "reference")
    for auto in ("auto", "AUTO", " auto", Fp4GemmBackend.AUTO):  # every spelling parse() accepts
        assert dispatch.resolve_backend(auto, "sm90") is Fp4GemmBackend.REFERENCE
    assert dispatch.resolve_backend("nvfp4_kit", "sm90") is Fp4GemmBackend.NVFP4_KIT  # explicit wins
    monkeypatch.setenv("NVFP4_KIT_GEMM_BACKEND", "warp9")
    with pytest.raises(ValueError, match="NVFP4_KIT_GEMM_BACKEND"):
        dispatch.resolve_backend("auto", "sm90")


def test_resolve_mode(monkeypatch):
    assert dispatch.resolve_mode(None, "sm90", False) == "w4a16"
    assert dispatch.resolve_mode(None, "sm100", True) == "w4a4"  # Blackwell multiplies NVFP4 x NVFP4
    monkeypatch.setenv("NVFP4_KIT_MODE", "w4a4")
    assert dispatch.resolve_mode(None, "sm90", True) == "w4a4"
    with pytest.raises(ValueError, match="needs input_scale"):
        dispatch.resolve_mode(None, "sm90", False)
