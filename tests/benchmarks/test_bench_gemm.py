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
