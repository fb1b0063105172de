"""`python -m nvfp4_kit.tune`: arguments are checked before anything is timed (GPU or not)."""

import pytest

from nvfp4_kit import tune


@pytest.mark.parametrize("argv, message", [
    (["--m", "0"], "--m: 0 is not an M bucket"),  # M = 0 times a GEMM that does nothing
    (["--m", "3"], "--m: 3 is not an M bucket"),  # an entry serves its bucket up to its top M
    (["--m", "100000"], "--m: 100000 is not an M bucket"),
    (["--m", "abc"], "expected a comma list of integers"),
    (["--shapes", "llama-8b"], "--shapes: shapes: 'llama-8b' is neither a preset"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        tune.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
