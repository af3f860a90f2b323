"""fisvd.results helpers the benchmarks share: `timed_repro` (one timed `dvc repro -s` per stage) and
`scratch_clone` (a throwaway clone of HEAD with the environment its stages run in)."""
import subprocess

import pytest


def test_timed_repro_runs_each_stage_alone_in_order_and_stops_at_a_failure(tmp_path, monkeypatch):
    import fisvd.results
    calls = []

    def fake_run(cmd, cwd, env, check):
        calls.append(cmd[3:])
        if cmd[-1] == "bad":
            raise subprocess.CalledProcessError(1, cmd)
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(fisvd.results.subprocess, "run", fake_run)
    out = fisvd.results.timed_repro(tmp_path, {}, ["a", "b"])
    assert calls == [["repro", "-s", "a"], ["repro", "-s", "b"]] and list(out) == ["a", "b"]
    calls.clear()
    with pytest.raises(subprocess.CalledProcessError):
        fisvd.results.timed_repro(tmp_path, {}, ["a", "bad", "c"], force=True)
    assert calls == [["repro", "-f", "-s", "a"], ["repro", "-f", "-s", "bad"]]


def test_scratch_clone_puts_the_clones_sources_before_an_inherited_pythonpath(tmp_path, monkeypatch):
    import fisvd.results
    root = tmp_path / "root"
    root.mkdir()
    (root / "f.txt").write_text("x")
    for cmd in (["init", "-q"], ["add", "f.txt"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    monkeypatch.setenv("PYTHONPATH", "/carried/site")
    monkeypatch.setenv("DROPPED", "1")
    dest, env = fisvd.results.scratch_clone(root, tmp_path / "clone", drop=("DROPPED",))
    assert (dest / "f.txt").read_text() == "x"
    assert env["PYTHONPATH"].split(":") == [str(dest / "src"), "/carried/site"] and "DROPPED" not in env
    monkeypatch.delenv("PYTHONPATH")
    assert fisvd.results.scratch_clone(root, tmp_path / "clone", drop=())[1]["PYTHONPATH"] == str(dest / "src")
