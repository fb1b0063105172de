"""The CI gate: `python -m mini_engine.check --preset tiny` (bf16, W4A16, W4A4 vs transformers, fp32 CPU)."""

from mini_engine.check import main


def test_check_tiny_preset_passes(capsys):
    assert main(["--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 3 and "FAIL" not in out
