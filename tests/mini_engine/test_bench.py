"""The serving benchmark: metric definitions on known timings, the dataset, and one short real run
(`--launch` of `python -m mini_engine.serve` on the built-in model, concurrency 1,2,4) that must
yield valid JSON, CSV and PNG."""

from __future__ import annotations

import csv
import json

import pytest

from mini_engine import bench
from mini_engine.benchmark.client import RequestResult
from mini_engine.benchmark.dataset import random_requests
from mini_engine.benchmark.launch import parse_launch
from mini_engine.benchmark.metrics import RECORD_FIELDS, summarize
from mini_engine.benchmark.report import format_table, merge_results
from mini_engine.serve import DEFAULT_MODEL_DIR


def _result(ttft: float, latency: float, out: int, itl: list[float], ok: bool = True):
    return RequestResult(success=ok, prompt_len=10, output_tokens=out if ok else 0, ttft=ttft,
                         latency=latency, itl=itl, error="" if ok else "HTTP 500: boom")


def test_summarize_matches_vllm_definitions():
    results = [
        _result(0.1, 1.1, 11, [0.1] * 10),  # TPOT (1.1-0.1)/10 = 100 ms; 11 tok / 1.0 s
        _result(0.2, 2.2, 5, [0.5] * 4),  # TPOT 2.0/4 = 500 ms; 5 tok / 2.0 s
        _result(0.3, 0.9, 4, [0.2] * 3),  # TPOT 0.6/3 = 200 ms; 4 tok / 0.6 s
        _result(0.0, 0.0, 0, [], ok=False),
    ]
    rec = summarize(results, 4.0, config="x", concurrency=2, input_len=10, output_len=8)
    assert (rec["completed"], rec["failed"], rec["num_requests"]) == (3, 1, 4)
    assert rec["request_s"] == pytest.approx(3 / 4.0)
    assert rec["output_tok_s"] == pytest.approx(20 / 4.0)
    assert rec["total_tok_s"] == pytest.approx((20 + 30) / 4.0)
    assert rec["ttft_ms_median"] == pytest.approx(200.0)
    assert rec["ttft_ms_mean"] == pytest.approx(200.0)
    assert rec["tpot_ms_median"] == pytest.approx(200.0)
    assert rec["tpot_ms_mean"] == pytest.approx((100 + 500 + 200) / 3)
    assert rec["tpot_ms_p99"] == pytest.approx(200 + (500 - 200) * 0.98)  # linear interpolation
    assert rec["itl_ms_median"] == pytest.approx(100.0)  # 17 gaps pooled: 10x100, 3x200, 4x500
    assert rec["e2el_ms_median"] == pytest.approx(1100.0)
    assert rec["tok_s_per_user"] == pytest.approx(statistics_median([11 / 1.0, 5 / 2.0, 4 / 0.6]))
    assert rec["errors"] == ["HTTP 500: boom"]
    assert set(RECORD_FIELDS) <= set(rec)


def statistics_median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def test_random_requests_deterministic_and_sized():
    a = random_requests(5, 64, 16, seed=3)
    assert a == random_requests(5, 64, 16, seed=3)
    assert a != random_requests(5, 64, 16, seed=4)
    assert all(len(r.prompt) == r.prompt_len == 64 and r.output_len == 16 for r in a)
    assert all(16 <= t < 4000 for r in a for t in r.prompt)
    varied = random_requests(50, 100, 20, seed=0, range_ratio=0.5)
    assert {r.prompt_len for r in varied} != {100}
    assert all(50 <= r.prompt_len <= 150 and 10 <= r.output_len <= 30 for r in varied)
    with pytest.raises(ValueError, match="range_ratio"):
        random_requests(1, 8, 8, seed=0, range_ratio=1.5)


def test_parse_launch():
    assert parse_launch("nvfp4", "--model m").args == ("--model", "m", "--quantization", "nvfp4")
    assert parse_launch("bf16").args == ("--quantization", "none")
    assert parse_launch("mine=--max-num-seqs 4", "--model m") == \
        parse_launch("mine=--max-num-seqs 4", "--model m")
    assert parse_launch("x=", "--model m").args == ("--model", "m")
    with pytest.raises(ValueError):
        parse_launch("=--model m")


@pytest.mark.parametrize("extra, message", [
    (["--concurrency", "0"], "levels must be >= 1"),
    (["--concurrency", "1,x"], "expected comma-separated integers"),
    (["--extra-body", "{bad"], "argument --extra-body: not JSON"),
    (["--extra-body", "[1]"], "argument --extra-body: expected a JSON object, got list"),
])
def test_bad_arguments_stop_before_a_server_starts(tmp_path, monkeypatch, capsys, extra, message):
    started = []
    monkeypatch.setattr(bench.ServerProcess, "start", lambda self: started.append(self))
    with pytest.raises(SystemExit) as info:
        bench.main(["--launch", "nvfp4", "--out", str(tmp_path / "r.json"), *extra])
    assert message in f"{info.value} {capsys.readouterr().err}" and not started


def test_short_launch_run_writes_json_csv_png(tmp_path):
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip("built-in model not built yet")
    out = tmp_path / "serving.json"
    rc = bench.main(["--launch", "builtin=--device cpu --max-num-seqs 4", "--concurrency", "1,2,4",
                     "--num-prompts", "4", "--input-len", "24", "--output-len", "6",
                     "--no-progress", "--startup-timeout", "180", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert {"device", "commit", "versions", "records", "servers"} <= set(doc)
    assert [r["concurrency"] for r in doc["records"]] == [1, 2, 4]
    for r in doc["records"]:
        assert r["config"] == "builtin" and r["completed"] == 4 and r["failed"] == 0
        assert r["output_tok_s"] > 0 and r["tok_s_per_user"] > 0
        assert 0 < r["ttft_ms_median"] <= r["e2el_ms_median"]
        # ignore_eos + max_tokens: every request produced exactly output_len tokens
        assert r["output_tok_s"] * r["duration_s"] == pytest.approx(4 * 6)
    server = doc["servers"][0]
    assert server["ready_s"] > 0 and server["exit_code"] is not None
    assert server["metrics_after"]["mini_engine:kv_cache_blocks_used"] == 0
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [int(r["concurrency"]) for r in rows] == [1, 2, 4]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    merged = merge_results([doc, doc])
    assert len(merged["records"]) == 6 and "builtin" in format_table(merged["records"])
