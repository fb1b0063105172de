"""scripts/apply_patch.sh against the files of the real pinned wheels (vllm==0.33.0, sglang==0.5.23).

Each test copies only the files the patch touches (+ the dist-info) from the unpacked wheel into a temp
site-packages, so the whole module runs in seconds once the wheels are cached.
"""

from __future__ import annotations

import hashlib
import py_compile
import re

import pytest

from tests.patches.engines import (
    PINNED,
    REPO,
    patch_file,
    patched_files,
    pristine_tree,
    run_apply_patch,
    site_packages,
)

ENGINES = sorted(PINNED)


def _digest(site, files) -> dict[str, str]:
    return {f: hashlib.sha256((site / f).read_bytes()).hexdigest() for f in files}


@pytest.fixture(params=ENGINES)
def engine_site(request, tmp_path):
    engine = request.param
    files = patched_files(engine)
    site = site_packages(engine, tmp_path / "site-packages", files)
    return engine, site, files


def test_patch_is_additions_only():
    """No logic in the patches: they only add lines (enum/Literal/choice members, an import-and-register)."""
    for engine in ENGINES:
        text = patch_file(engine).read_text()
        removed = [ln for ln in text.splitlines() if ln.startswith("-") and not ln.startswith("---")]
        added = [ln for ln in text.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
        assert removed == [], f"{engine}: the patch removes lines: {removed}"
        assert 0 < len(added) <= 25, f"{engine}: {len(added)} added lines; keep the patch minimal"


def test_readmes_list_the_touched_files():
    for engine in ENGINES:
        readme = (REPO / "patches" / engine / "README.md").read_text()
        assert f"{engine}=={PINNED[engine]}" in readme
        for f in patched_files(engine):
            assert f in readme, f"patches/{engine}/README.md does not list {f}"


def test_apply_check_reapply_revert(engine_site):
    engine, site, files = engine_site
    pristine = _digest(pristine_tree(engine), files)
    assert _digest(site, files) == pristine

    r = run_apply_patch(engine, "--check", "--site-packages", str(site))
    assert r.returncode == 1 and "is not applied" in r.stdout, r.stdout + r.stderr

    r = run_apply_patch(engine, "--site-packages", str(site))
    assert r.returncode == 0 and "applied nvfp4-kit patch" in r.stdout, r.stdout + r.stderr
    patched = _digest(site, files)
    assert all(patched[f] != pristine[f] for f in files), "every listed file must change"
    for f in files:  # the patched sources compile
        py_compile.compile(str(site / f), cfile=str(site.parent / "check.pyc"), doraise=True)
    assert not list(site.rglob("*.orig")) and not list(site.rglob("*.rej"))
    assert not list(site.rglob("__pycache__")), "the script must not leave .pyc files in site-packages"

    r = run_apply_patch(engine, "--check", "--site-packages", str(site))
    assert r.returncode == 0 and "is applied" in r.stdout, r.stdout + r.stderr

    r = run_apply_patch(engine, "--site-packages", str(site))
    assert r.returncode == 0 and "already applied" in r.stdout, r.stdout + r.stderr
    assert _digest(site, files) == patched, "a second apply must change nothing"

    r = run_apply_patch(engine, "--revert", "--site-packages", str(site))
    assert r.returncode == 0 and "reverted" in r.stdout, r.stdout + r.stderr
    assert _digest(site, files) == pristine, "revert must restore the released files byte for byte"

    r = run_apply_patch(engine, "--revert", "--site-packages", str(site))
    assert r.returncode == 0 and "nothing to revert" in r.stdout


def test_unknown_version_is_refused(engine_site):
    engine, site, files = engine_site
    meta = next(site.glob(f"{engine}-*.dist-info")) / "METADATA"
    meta.write_text(re.sub(r"^Version: .*$", "Version: 9.9.9", meta.read_text(), count=1, flags=re.M))
    before = _digest(site, files)
    r = run_apply_patch(engine, "--site-packages", str(site))
    assert r.returncode == 4, r.stdout + r.stderr
    assert f"{engine} 9.9.9" in r.stderr and f"{engine}=={PINNED[engine]}" in r.stderr
    assert _digest(site, files) == before


def test_tree_edited_elsewhere_is_left_alone(engine_site):
    """A file that matches neither the release nor the patched version: refuse, change nothing."""
    engine, site, files = engine_site
    victim = site / files[-1]
    victim.write_text(victim.read_text() + "\n# edited by someone else\n")
    lines = (site / files[0]).read_text().splitlines(keepends=True)
    # Break the first context line of the first file's first hunk: neither direction applies there.
    start = int(re.search(r"^@@ -(\d+),", patch_file(engine).read_text(), flags=re.M).group(1))
    lines[start - 1] = lines[start - 1].rstrip("\n") + "  # changed\n"
    (site / files[0]).write_text("".join(lines))
    before = _digest(site, files)
    for args in ((), ("--revert",), ("--check",)):
        r = run_apply_patch(engine, *args, "--site-packages", str(site))
        assert r.returncode == 3, (args, r.stdout + r.stderr)
        assert "nothing changed" in r.stderr and f"{files[0]}: changed by something else" in r.stderr
        assert _digest(site, files) == before


def test_failure_during_apply_rolls_back(engine_site, tmp_path):
    """If patch fails after the dry run (disk full, killed...), every file is restored."""
    engine, site, files = engine_site
    fake = tmp_path / "fake_patch"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'for a in "$@"; do [ "$a" = --dry-run ] && exec patch "$@"; done\n'
        'patch "$@"; echo "simulated failure after writing" >&2; exit 1\n'
    )
    fake.chmod(0o755)
    before = _digest(site, files)
    r = run_apply_patch(engine, "--site-packages", str(site), env={"PATCH": str(fake)})
    assert r.returncode == 3 and "rolled back" in r.stderr, r.stdout + r.stderr
    assert _digest(site, files) == before


def test_finds_engine_through_python_metadata(engine_site):
    """Without --site-packages the script asks $PYTHON where the engine's distribution lives."""
    engine, site, _ = engine_site
    r = run_apply_patch(engine, "--check", env={"PYTHONPATH": str(site)})
    assert r.returncode == 1 and f"at {site}" in r.stdout, r.stdout + r.stderr


def test_environment_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_apply_patch("vllm", "--site-packages", str(empty))
    assert r.returncode == 2 and "no vllm-*.dist-info" in r.stderr
    r = run_apply_patch("vllm", "--site-packages", str(empty), env={"PATCH": "/nonexistent/patch"})
    assert r.returncode == 2 and "apt-get install -y patch" in r.stderr
    r = run_apply_patch("tensorrt_llm")
    assert r.returncode == 2 and "unknown argument 'tensorrt_llm'" in r.stderr
