"""Shared cache across machines: a local-directory DVC remote plus the run cache.

Clone A (a copy of the shared tiny run, conftest `tiny_run`: tiny model, tiny MRPC, every stage run
and dvc.lock committed) `dvc push --run-cache`es to a local-directory remote. Fresh `git clone`s then restore it:
- B (dvc.lock committed): `dvc repro --pull --allow-missing` runs nothing and downloads nothing (the
  worker's view: unchanged stages are skipped), `dvc repro --pull` restores every stage's outputs
  without running any command; the outputs are byte-identical to A's.
- C (dvc.lock deleted: a coordinator collecting results it has no lock entries for): `dvc repro
  --pull --allow-missing` restores from the remote's run cache only the stages whose outputs are all
  DVC-cached (compress). DVC 3.67 never run-caches a stage with a plain `outs` entry marked
  `cache: false` (prepare, finetune, fisher, allocate), and for a stage whose only uncached outputs
  are metrics/plots (evaluate) it writes a run-cache entry and commits those files to the *local*
  cache, but `dvc push --run-cache` uploads only the entry, not those files, so another machine
  cannot restore it. So exactly the stages with any `cache: false` output execute in C; the test
  derives that set from dvc.yaml. Without dvc.lock, results travel through git, not the run cache.

Which commands ran is observed, not inferred: every stage command is `python -m stages.<name>`, and a
`python` shim first on PATH records $DVC_STAGE (set by DVC for each stage command it runs).
"""
import hashlib
import os
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ALL_STAGES as ALL, git

pytestmark = pytest.mark.slow


def dvc(repo, *args):
    res = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)
    assert res.returncode == 0, f"dvc {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


@pytest.fixture
def ran(ran_project, tmp_path, monkeypatch):
    """Path of the log of stage commands executed (one $DVC_STAGE per line) through a `python` shim."""
    shim, log = tmp_path / "shim-bin", tmp_path / "ran.log"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\n[ -n "$DVC_STAGE" ] && echo "$DVC_STAGE" >> "{log}"\n'
                                 f'exec "{sys.executable}" "$@"\n')
    (shim / "python").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    return log


def executed(log):
    """Stage commands run since the last call (the log is emptied)."""
    names = log.read_text().split() if log.exists() else []
    log.write_text("")
    return sorted(set(names), key=ALL.index)


def files(repo):
    """sha256 of every file under data/ and metrics/."""
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for top in ("data", "metrics") for p in sorted((repo / top).rglob("*")) if p.is_file()}


def uncached(repo, kinds=("outs", "metrics", "plots")):
    """Stages with a `cache: false` output among `kinds`, in pipeline order."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return [name for name in ALL
            if any(isinstance(o, dict) and any(isinstance(v, dict) and v.get("cache") is False for v in o.values())
                   for kind in kinds for o in stages[name].get(kind, []))]


def restored(out):
    return [s for s in ALL if f"Stage '{s}' is cached - skipping run" in out]


def test_fresh_clones_restore_from_remote_and_run_cache(ran_project, ran, tmp_path):
    a, remote = ran_project, tmp_path / "remote"
    timings = {}
    dvc(a, "remote", "add", "-d", "store", str(remote))
    git(a, "add", "-A")
    git(a, "commit", "-qm", "remote")
    t0 = time.time()
    dvc(a, "push", "--run-cache")
    timings["A: dvc push --run-cache"] = time.time() - t0
    entries = [p for p in (remote / "runs").rglob("*") if p.is_file()]  # runs/<key[:2]>/<key>/<value>
    assert len(entries) == len(ALL) - len(uncached(a, ["outs"]))  # one entry per run-cached stage
    expected = files(a)

    b = tmp_path / "clone-b"  # dvc.lock committed
    git(tmp_path, "clone", "-q", str(a), str(b))
    assert not (b / "data" / "prepared").exists()
    t0 = time.time()
    out = dvc(b, "repro", "--pull", "--allow-missing")
    timings["B: dvc repro --pull --allow-missing"] = time.time() - t0
    assert executed(ran) == [] and "didn't change, skipping" in out
    assert not (b / "data/model").exists()  # unchanged stages are skipped, their data not pulled
    t0 = time.time()
    out = dvc(b, "repro", "--pull")
    timings["B: dvc repro --pull"] = time.time() - t0
    assert executed(ran) == []  # no command ran: every stage restored from the remote
    assert files(b) == expected
    assert subprocess.run(["git", "status", "--porcelain"], cwd=b, capture_output=True, text=True).stdout == ""
    from dvc.repo import Repo
    with Repo(str(b)) as r:
        assert r.status() == {}

    c = tmp_path / "clone-c"  # dvc.lock deleted: only the run cache knows the results
    git(tmp_path, "clone", "-q", str(a), str(c))
    (c / "dvc.lock").unlink()
    t0 = time.time()
    out = dvc(c, "repro", "--pull", "--allow-missing")
    timings["C (no dvc.lock): dvc repro --pull --allow-missing"] = time.time() - t0
    assert executed(ran) == uncached(c)
    assert restored(out) == [s for s in ALL if s not in uncached(c)]
    assert yaml.safe_load((c / "dvc.lock").read_text()) == yaml.safe_load((a / "dvc.lock").read_text())
    runtime = {"metrics/finetune/runtime.json", "metrics/fisher/runtime.json", "metrics/evaluate/latency.json"}
    assert {k: v for k, v in files(c).items() if k not in runtime} == \
        {k: v for k, v in expected.items() if k not in runtime}
    print("\nremote round trip:", ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()),
          f"| restored without dvc.lock: {restored(out)}; re-ran: {uncached(c)}")
