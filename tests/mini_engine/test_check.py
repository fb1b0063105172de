"""The CI gate: `python -m mini_engine.check --preset tiny` (bf16, W4A16, W4A4 vs transformers, fp32 CPU)."""

from mini_engine.check import main


def test_check_tiny_preset_passes(capsys):
    assert main(["--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 3 and "FAIL" not in out


def test_verdicts_pass_fail_and_inconclusive():
    from mini_engine.check import INCONCLUSIVE_FLOOR, ModeResult

    ok = ModeResult("w4a4", "float32", positions=4, exact=4, max_rel_err=5e-3, tol=1e-2, noise_floor=1e-4)
    assert ok.passed and ok.verdict == "PASS"
    bad = ModeResult("w4a4", "float32", positions=4, exact=4, max_rel_err=5e-2, tol=1e-2, noise_floor=1e-4)
    assert not bad.passed and bad.verdict == "FAIL"
    widened = ModeResult("w4a4", "bfloat16", positions=4, max_rel_err=0.15, tol=6e-2, noise_floor=0.1)
    assert widened.tol_eff == 0.2 and widened.passed  # the floor widens the tolerance...
    chaotic = ModeResult("w4a4", "bfloat16", positions=4, max_rel_err=0.1, tol=6e-2,
                         noise_floor=INCONCLUSIVE_FLOOR + 0.01)
    assert not chaotic.passed and chaotic.verdict == "INCONCLUSIVE"  # ...up to a point: then no verdict


def test_bf16_residual_variant_moves_the_reference(tmp_path):
    """The bf16-engine floor variant must change the reference (else the floor it gives is vacuous)."""
    import torch

    from mini_engine.check import _reference_logits, reference_weights
    from mini_engine.make_checkpoint import main as make

    assert make(["--preset", "tiny", "--format", "bf16", "--out", str(tmp_path), "--num-layers", "2",
                 "--device", "cpu"]) == 0
    import json

    assert json.loads((tmp_path / "config.json").read_text())["num_hidden_layers"] == 2
    cfg, sd, _ = reference_weights(tmp_path, quantize=False)
    seqs = [[1, 5, 9, 13, 17, 21]]
    ref = _reference_logits(cfg, sd, {}, False, seqs, "cpu")[0]
    alt = _reference_logits(cfg, sd, {}, False, seqs, "cpu", "bf16_residual")[0]
    rel = ((alt - ref).abs().max() / ref.abs().max()).item()
    assert 1e-5 < rel < 5e-2, rel
    assert torch.equal(ref, _reference_logits(cfg, sd, {}, False, seqs, "cpu")[0])  # deterministic
