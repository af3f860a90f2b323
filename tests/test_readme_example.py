"""The README's custom-task example runs as written (issue 21): its params lines go into a fresh
project's params.yaml, its shell lines run there (the shipped defaults: MiniLM, max_fi + kfac at
p = 0.5) on a small CSV written here; the compressed model then answers through plain transformers.
Then what DVC re-runs: a new file that no task reads re-runs prepare alone (same outputs, so nothing
downstream); editing a data file re-runs prepare and leaves every later stage stale."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, copy_project, git, git_dvc_init, reproduce

TEAMS = {"hardware": ["printer jams", "screen is broken", "keyboard missing keys", "laptop will not boot"],
         "network": ["vpn is down", "wifi is slow", "cannot reach the server", "network cable cut"],
         "accounts": ["forgot my password", "account is locked", "need a new login", "password expired"]}


def example():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- custom-task-example.*?-->(.*?)<!-- /custom-task-example -->", text, re.S).group(1)
    lines = re.search(r"```yaml\n(.*?)```", block, re.S).group(1)
    shell = [line for line in re.search(r"```bash\n(.*?)```", block, re.S).group(1).splitlines() if line.strip()]
    return yaml.safe_load(lines), len(lines.strip().splitlines()), shell


def write_tickets(folder, n_per_team: int, seed: int):
    import random
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_per_team), ("dev", max(2, n_per_team // 3))):
        rows = [(f"{team} issue", f"{rng.choice(phrases)} again {i}", team)
                for team, phrases in TEAMS.items() for i in range(n)]
        rng.shuffle(rows)
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["subject", "body", "team"])
            w.writerows(rows)


@pytest.mark.slow
def test_readme_custom_task_example_runs_as_written(tmp_path, monkeypatch):
    params_lines, n_lines, shell = example()
    assert n_lines == 10 and len(shell) == 2 and shell[0] == "dvc repro"
    repo = copy_project(tmp_path / "proj")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(params_lines["data"])            # what the user writes into params.yaml
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_tickets(repo / "data/custom/tickets", n_per_team=16, seed=0)
    git_dvc_init(repo)
    env = {**os.environ, "DVC_SITE_CACHE_DIR": str(tmp_path / "site"), "DVC_NO_ANALYTICS": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo / "src"),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    outs = []
    for line in shell:
        done = subprocess.run(line, shell=True, cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        outs.append(done.stdout)
    answer = eval(outs[1].strip().splitlines()[-1])            # the pipeline's printed list of dicts
    assert answer[0]["label"] in TEAMS and 0 < answer[0]["score"] <= 1
    metrics = json.loads((repo / "metrics/evaluate/metrics.json").read_text())
    assert metrics["task"] == "tickets" and set(metrics["compressed"]) >= {"f1_macro", "score"}
    cfg = json.loads((repo / "data/model/config.json").read_text())
    assert cfg["id2label"] == {"0": "accounts", "1": "hardware", "2": "network"}
    # what re-runs
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "run")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(repo)
    (repo / "data/custom/notes.txt").write_text("not read by any task\n")
    assert reproduce(repo) == ["prepare"]                     # same prepared data: nothing downstream
    dev = repo / "data/custom/tickets/dev.csv"
    dev.write_text(dev.read_text().replace("again 0", "again and again 0"))
    from dvc.repo import Repo
    with Repo(str(repo)) as r:                                # editing a file re-runs from prepare ...
        assert [s.addressing for s in r.reproduce("prepare")] == ["prepare"]
        stale = set(r.status())                               # ... every stage reading data/prepared is stale
    assert stale == {"finetune", "fisher", "allocate", "compress", "evaluate"}, stale   # compress: kfac_seq reads it
    manifest = json.loads((repo / "metrics/prepare/data.json").read_text())
    import hashlib
    assert manifest["source"]["files"]["dev"]["sha256"] == hashlib.sha256(dev.read_bytes()).hexdigest()
