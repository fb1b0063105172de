import subprocess

from nvfp4_kit.provenance import git_commit


def test_pinned_commit_wins(monkeypatch):
    monkeypatch.setenv("NVFP4_KIT_SOURCE_COMMIT", "abc123")
    assert git_commit() == "abc123"


def test_tree_without_history_is_unknown(monkeypatch, tmp_path):
    # a copied working tree on a GPU box: `git rev-parse HEAD` there prints "HEAD", which was recorded
    monkeypatch.delenv("NVFP4_KIT_SOURCE_COMMIT", raising=False)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert git_commit(tmp_path) == "unknown"


def test_checkout_reports_head(monkeypatch, tmp_path):
    monkeypatch.delenv("NVFP4_KIT_SOURCE_COMMIT", raising=False)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "f").write_text("2")
    assert git_commit(tmp_path) == head + "-dirty"
