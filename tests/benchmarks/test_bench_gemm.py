"""benchmarks/bench_gemm.py without --candidates / --configs times the config serving runs."""

import functools
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("cutlass")

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_gemm", ROOT / "benchmarks" / "bench_gemm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_production_config_is_the_committed_tables_where_it_has_an_entry():
    bench = _bench_module()
    table = json.loads((ROOT / "nvfp4_kit" / "data" / "tuning_sm90_h100.json").read_text())
    entries = [e for e in table["entries"] if e["mode"] == "w4a16" and e["dtype"] == "bfloat16"]
    assert entries
    for e in entries:
        cfg = bench.production_config(e["m_bucket"], e["n"], e["k"])
        assert cfg.name == e["config"]["name"], (e["n"], e["k"], e["m_bucket"])


def test_production_config_falls_back_to_the_heuristic_off_the_table():
    bench = _bench_module()
    from nvfp4_kit.kernels import gemm_sm90 as G

    n, k, m = 640, 1040, 300  # no committed entry for this layer
    assert bench.production_config(m, n, k) == G.heuristic_config(m, n, k)


def _merge(tmp_path, *inputs):
    import types

    args = types.SimpleNamespace(inputs=list(inputs), out=str(tmp_path), table_out=None, note="test")
    _bench_module().merge(args)
    return json.loads(next(tmp_path.glob("gemm_h100_*.json")).read_text())


def test_merge_keeps_each_records_run_commit_through_a_second_merge(tmp_path):
    src = ROOT / "benchmarks" / "results" / "gemm_h100_2026-12-07_flags_ea73c5b.json"  # itself a merge
    measured = {r["run_commit"] for r in json.loads(src.read_text())["records"]}
    assert measured == {"ea73c5b"}
    once = _merge(tmp_path / "a", f"{src}:64-128")
    assert once["records"] and {r["run_commit"] for r in once["records"]} == measured
    twice = _merge(tmp_path / "b", str(next((tmp_path / "a").glob("gemm_h100_*.json"))))
    assert {r["run_commit"] for r in twice["records"]} == measured  # not the first merge's HEAD


@pytest.mark.parametrize("inputs, message", [
    ((), "no input files"),
    (("{flags}:32",), "expected FILE or FILE:LO-HI"),
    (("{flags}:1-8",), "no records with 1 <= M <= 8"),
    (("{quantize}",), "not a bench_gemm result"),
])
def test_merge_refuses_what_it_cannot_merge(tmp_path, inputs, message):
    files = {"flags": ROOT / "benchmarks" / "results" / "gemm_h100_2026-12-07_flags_ea73c5b.json",
             "quantize": ROOT / "benchmarks" / "results" / "quantize_h100_2026-11-25.json"}
    with pytest.raises(SystemExit, match=message):
        _merge(tmp_path, *(i.format(**files) for i in inputs))
    assert not list(tmp_path.glob("gemm_h100_*"))


def test_merge_refuses_a_json_that_is_not_an_object(tmp_path):
    bad = tmp_path / "list.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="not a bench_gemm result"):
        _merge(tmp_path / "out", str(bad))
