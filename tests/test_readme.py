"""The README's set-up commands are the ones CI runs."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)[:2]


def test_readme_opens_with_two_setup_commands():
    serve, test = _readme_commands()
    assert "python -m mini_engine.serve" in serve
    assert "pytest" in test


def test_ci_runs_the_readme_test_command_verbatim():
    _serve, test = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test.strip() in [line.strip() for line in ci]
