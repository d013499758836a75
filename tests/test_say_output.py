"""`voxbridge say` output: the failure notice a channel would hear, and where the store is."""

from .test_cli import ROOT, vbx

UNREACHABLE = {
    "GENERAL_WEBHOOK_URL": "http://127.0.0.1:1/webhook/SECRET-KEY-123",
    "TECH_WEBHOOK_URL": "http://127.0.0.1:1/x",
}


def test_say_failure_prints_the_spoken_failure_notice(tmp_path):
    r = vbx("say", "--store", f"sqlite:///{tmp_path / 's.db'}", "hello", env=UNREACHABLE)
    assert r.returncode == 1
    # before: an empty "answer:" line; now the notice the channel would have heard
    assert "answer: [failure notice] Sorry, General Assistant is not answering right now.\n" in r.stdout
    assert "failed: connect_failed" in r.stdout and "SECRET-KEY-123" not in r.stdout + r.stderr


def test_say_store_url_three_slashes_relative_four_absolute(tmp_path):
    """As documented: sqlite:///rel/path.db is relative to the working directory,
    sqlite:////abs/path.db (four slashes) is absolute; `say` prints where the file is."""
    work = tmp_path / "work"
    work.mkdir()
    agents = str(ROOT / "agents.toml")
    r = vbx("say", "--agents", agents, "--demo-agents", "--store", "sqlite:///rel/s.db", "hi", cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / "rel" / "s.db").is_file() and f"store: {work / 'rel' / 's.db'}\n" in r.stdout
    absolute = tmp_path / "abs" / "s.db"
    r = vbx("say", "--agents", agents, "--demo-agents", "--store", f"sqlite:///{absolute}", "hi", cwd=work)
    assert str(absolute).startswith("/") and r.returncode == 0, r.stderr
    assert absolute.is_file() and f"store: {absolute}\n" in r.stdout
    # the classic slip: three slashes before an absolute-looking path gets a hint
    r = vbx("say", "--agents", agents, "--demo-agents", "--store", "sqlite:///tmp/s.db", "hi", cwd=work)
    assert (work / "tmp" / "s.db").is_file() and "write sqlite:////tmp/s.db, four slashes" in r.stdout
