"""End to end: the real DVC pipeline in a temp git+DVC repo on a tiny model and tiny MRPC data.

One tiny run is reproduced once per session (conftest `tiny_run`: every stage runs) and copied by the
tests that start from a finished run. Asserts via `Repo.reproduce()` exactly which stages ran after
changing one param or one module, that a second repro does nothing, that metrics are git-tracked
while data/ is ignored, that a run killed midway resumes to the same bytes as the uninterrupted one,
that queued experiments equal serial runs, and that the compressed model loads back.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ALL_STAGES as ALL, git, reproduce

pytestmark = pytest.mark.slow


def set_param(repo, key, value):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    section, _, leaf = key.rpartition(".")
    node = params
    for part in section.split("."):
        node = node[part]
    node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_pipeline_reruns_exactly_the_affected_stages(ran_project):
    repo = ran_project                                               # every stage ran (tiny_run asserts it)
    metrics = json.loads((repo / "metrics/evaluate/metrics.json").read_text())
    assert metrics["task"] == "mrpc" and 0 < metrics["kept_ratio"] <= 1
    for side in ("dense", "compressed"):
        assert {"f1", "accuracy", "score", "collapsed", "params"} <= set(metrics[side])
    latency = json.loads((repo / "metrics/evaluate/latency.json").read_text())
    assert latency["dense_ms"] > 0 and latency["compressed_ms"] > 0 and latency["shape"] == [8, 32]
    ranks = json.loads((repo / "metrics/allocate/ranks.json").read_text())
    assert len(ranks["matrices"]) == 12 and ranks["totals"]["method"] == "fi_retention"
    assert ranks["totals"]["speed_missing"] == ["32x32", "32x64", "64x32"]      # another model than the
    assert "predicted_linears" not in ranks["totals"]                           # table's: no error, recorded
    manifest = json.loads((repo / "metrics/prepare/data.json").read_text())
    assert manifest["rows"] == {"train": 40, "dev": 16} and len(manifest["source"]["files"]["train"]["sha256"]) == 64
    assert str(repo.parent) not in json.dumps(manifest)              # no machine path in a tracked file
    from fisvd.fisher import load_fisher                             # summary rows looked up by name
    fisher, _ = load_fisher(repo / "data/fisher.safetensors")
    summary = json.loads((repo / "metrics/fisher/summary.json").read_text())["matrices"]
    assert [row["name"] for row in summary] == [row["name"] for row in ranks["matrices"]]  # model order
    for row in summary:
        name = row["name"]
        assert row["total"] == pytest.approx(float(fisher[name].double().sum()), rel=1e-9)
        assert row["type"] == {"query": "q", "key": "k", "value": "v"}.get(name.rsplit(".", 1)[-1], row["type"])
    live = json.loads((repo / "metrics/finetune/metrics.json").read_text())
    assert "runtime" not in json.dumps(live) and "per_second" not in json.dumps(live)
    assert not list((repo / "metrics/finetune/plots").rglob("*runtime*"))
    assert json.loads((repo / "metrics/finetune/runtime.json").read_text())["train_runtime"] > 0
    assert json.loads((repo / "metrics/fisher/runtime.json").read_text())["fisher_and_stats_pass_s"] >= 0  # tiny: ~0.0 s
    assert metrics["constant_score"] > 0 and "margin_kept" in metrics and "pct_of_dense" in metrics

    status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=repo, capture_output=True, text=True).stdout
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True).stdout.split()
    assert "dvc.lock" in tracked and "metrics/evaluate/metrics.json" in tracked    # committed by tiny_run
    assert "metrics/allocate/ranks.json" in tracked and "metrics/finetune/metrics.json" in tracked
    assert "metrics/evaluate/latency.json" in tracked
    assert not any(t.startswith("data/") and not t.endswith(".gitignore") and not t.startswith("data/custom/")
                   for t in tracked), status                         # data/custom/: the users' files, in git
    for out in ("data/prepared/", "data/model/", "data/compressed/", "data/fisher.safetensors"):
        assert f"!! {out}" in status                                  # ignored, not untracked

    assert reproduce(repo) == []  # nothing changed: nothing runs

    set_param(repo, "allocate.fi_retention.tau", 0.8)
    assert reproduce(repo) == ["allocate", "compress", "evaluate"]
    new = json.loads((repo / "metrics/allocate/ranks.json").read_text())
    assert new["totals"]["kept_ratio"] <= ranks["totals"]["kept_ratio"]

    set_param(repo, "allocate.method", "uniform_ratio")
    assert reproduce(repo) == ["allocate", "compress", "evaluate"]
    assert json.loads((repo / "metrics/allocate/ranks.json").read_text())["totals"]["kept_ratio"] <= 0.5

    set_param(repo, "allocate.max_fi.objective", "layerwise")    # another method's options: not a dep
    set_param(repo, "compress.tfwsvd.tol", 0.01)                 # (compress runs fwsvd)
    assert reproduce(repo) == []
    for module in ("params", "cli", "validate"):                 # schema / CLI edits compute nothing
        with open(repo / "src" / "fisvd" / f"{module}.py", "a") as f:
            f.write("\nSCHEMA_EDIT = 1  # a new key, help text, error wording…\n")
    assert reproduce(repo) == []
    with open(repo / "src" / "fisvd" / "factorize.py", "a") as f:   # code the factors come from
        f.write("\n# an edit that changes no number\n")
    assert reproduce(repo) == ["allocate", "compress"]           # same bytes out: evaluate skipped

    set_param(repo, "allocate.rank_multiple", 4)
    assert reproduce(repo) == ["allocate", "compress", "evaluate"]
    aligned = json.loads((repo / "metrics/allocate/ranks.json").read_text())
    assert aligned["totals"]["rank_multiple"] == 4
    assert all(row["dense"] or row["rank"] % 4 == 0 for row in aligned["matrices"])
    assert {n: r for n, r in json.loads((repo / "data/compressed/ranks.json").read_text()).items()} == \
        {row["name"]: row["rank"] for row in aligned["matrices"] if not row["dense"]}

    set_param(repo, "compress.method", "kfac")      # allocation runs on the factorisation's spectrum;
                                                    # two-sided: the fisher stage's statistics
    set_param(repo, "allocate.method", "max_fi")
    assert reproduce(repo) == ["allocate", "compress", "evaluate"]
    assert json.loads((repo / "metrics/allocate/ranks.json").read_text())["totals"]["spectrum"] == "kfac"
    set_param(repo, "compress.kfac.alpha_g", 0.1)        # the spectrum and the factors change
    assert reproduce(repo) == ["allocate", "compress", "evaluate"]
    set_param(repo, "allocate.measured.slice", 12)   # calibrated by measured loss on a training slice
    set_param(repo, "allocate.measured.points", 2)
    set_param(repo, "allocate.measured.swaps", 2)
    set_param(repo, "allocate.method", "measured")
    assert reproduce(repo) == ["allocate", "compress", "evaluate"]
    totals = json.loads((repo / "metrics/allocate/ranks.json").read_text())["totals"]
    assert totals["method"] == "measured" and totals["kept_ratio"] <= 0.5 and totals["joint"][0]["delta"] >= 0
    assert len(totals["joint"]) <= 3 and totals["predicted_loss"] >= 0
    from transformers import AutoModelForSequenceClassification
    with pytest.raises(OSError, match="model.safetensors"):     # not mistaken for a dense HF checkpoint
        AutoModelForSequenceClassification.from_pretrained(repo / "data/compressed")

    set_param(repo, "evaluate.latency_batches", 3)
    assert reproduce(repo) == ["evaluate"]

    from fisvd.lowrank import load_compressed
    model = load_compressed(repo / "data/compressed")
    assert any(type(m).__name__ == "LowRankLinear" for m in model.modules())

    # `dvc exp` back and forth: params run before come back from DVC's run cache, not re-trained. The
    # run-time files are written by a stage's command only (not DVC outputs): untouched when restored
    lock = (repo / "dvc.lock").read_text()
    seed = yaml.safe_load((repo / "params.yaml").read_text())["finetune"]["seed"]
    set_param(repo, "finetune.seed", seed + 1)
    assert reproduce(repo) == ["finetune", "fisher", "allocate", "compress", "evaluate"]
    assert (repo / "dvc.lock").read_text() != lock
    timed = {f: (repo / f).stat().st_mtime_ns for f in ("metrics/finetune/runtime.json", "metrics/fisher/runtime.json")}
    set_param(repo, "finetune.seed", seed)
    assert reproduce(repo) == ["finetune", "fisher", "allocate", "compress", "evaluate"]   # fine-tune, Fisher restored, not run:
    assert {f: (repo / f).stat().st_mtime_ns for f in timed} == timed
    assert (repo / "dvc.lock").read_text() == lock                      # every output as before
    assert not (repo / "metrics/finetune/params.yaml").exists()          # no training-arguments dump


def test_bad_param_fails_dvc_repro_before_any_output(project):
    set_param(project, "allocate.budget", 1.5)
    res = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, capture_output=True, text=True)
    assert res.returncode != 0 and "allocate.budget" in res.stdout + res.stderr
    assert not (project / "data" / "prepared").exists() and not (project / "dvc.lock").exists()


def _kill_when(repo, condition, timeout=300):
    """Start `dvc repro`, SIGKILL its whole process group once `condition()` holds."""
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repo, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not condition():
        assert proc.poll() is None, "dvc repro finished before the kill point"
        assert time.time() - t0 < timeout
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _stage_running(name):
    import psutil

    def check():
        for p in psutil.process_iter(["cmdline"]):
            if f"stages.{name}" in " ".join(p.info["cmdline"] or []):
                return time.time() - p.create_time() > 2.0  # well inside the stage
        return False
    return check


def _lock_stages(repo):
    lock = repo / "dvc.lock"
    return set(yaml.safe_load(lock.read_text())["stages"]) if lock.exists() else set()


def test_kill_9_midway_then_repro_completes_and_is_bit_identical(project, tiny_run):
    """Killed twice (while fine-tuning, then in the Fisher pass), `dvc repro` completes and every tracked
    file (dvc.lock, metrics, ranks) is byte-identical to the uninterrupted shared run in another
    folder, run-time figures aside: deterministic on CPU, so DVC skips unchanged downstream stages."""
    repo = project
    _kill_when(repo, _stage_running("finetune"))
    assert "finetune" not in _lock_stages(repo) and not (repo / "data/model/model.safetensors").exists()
    _kill_when(repo, _stage_running("fisher"))
    assert "finetune" in _lock_stages(repo) and "fisher" not in _lock_stages(repo)
    assert not (repo / "data/fisher.safetensors").exists()

    assert reproduce(repo) == ["fisher", "allocate", "compress", "evaluate"]
    from dvc.repo import Repo
    with Repo(str(repo)) as r:
        assert r.status() == {}
    assert not list((repo / "data").glob(".*.tmp-*"))
    assert (repo / "data/fisher.safetensors").read_bytes() == (tiny_run / "data/fisher.safetensors").read_bytes()
    runtime = {"metrics/evaluate/latency.json", "metrics/finetune/runtime.json", "metrics/fisher/runtime.json"}
    tracked = subprocess.run(["git", "ls-files"], cwd=tiny_run, capture_output=True, text=True).stdout.split()
    differ = [f for f in tracked if f not in runtime and (repo / f).read_bytes() != (tiny_run / f).read_bytes()]
    assert differ == [] and "dvc.lock" in tracked and "metrics/allocate/ranks.json" in tracked


def _find_runs(node, out):
    """(fi_retention, evaluate metrics) of every experiment in `dvc exp show --json` output."""
    if isinstance(node, dict):
        data = node.get("data")
        if isinstance(data, dict) and "params" in data and "metrics" in data and data.get("name") != "workspace":
            try:
                tau = data["params"]["params.yaml"]["data"]["allocate"]["fi_retention"]["tau"]
                out.append((tau, data["metrics"]["metrics/evaluate/metrics.json"]["data"]))
            except (KeyError, TypeError):
                pass
        for v in node.values():
            _find_runs(v, out)
    elif isinstance(node, list):
        for v in node:
            _find_runs(v, out)


def test_queued_experiments_with_two_workers_equal_serial_runs(ran_project):
    repo = ran_project                                               # the committed baseline run
    dvc = [sys.executable, "-m", "dvc"]
    taus = (0.6, 0.8)
    for tau in taus:
        subprocess.run(dvc + ["exp", "run", "--queue", "-S", f"allocate.fi_retention.tau={tau}"], cwd=repo, check=True,
                       capture_output=True)
    # The workers are detached but inherit this call's streams: a captured pipe would keep the call waiting
    # for as long as any worker lives (once, an idle worker outlived both experiments by 9 minutes).
    subprocess.run(dvc + ["queue", "start", "-j", "2"], cwd=repo, check=True, timeout=120,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while True:
            status = subprocess.run(dvc + ["queue", "status"], cwd=repo, capture_output=True, text=True).stdout
            if "Queued" not in status and "Running" not in status:
                break
            assert time.time() - t0 < 600, status
            time.sleep(2)
    finally:  # no worker outlives the test, idle or not
        subprocess.run(dvc + ["queue", "stop", "--kill"], cwd=repo, timeout=120, capture_output=True)
    assert status.count("Success") == 2, status
    shown = subprocess.run(dvc + ["exp", "show", "--json"], cwd=repo, capture_output=True, text=True, check=True)
    runs = []
    _find_runs(json.loads(shown.stdout), runs)
    queued = {tau: m for tau, m in runs if tau in taus}
    assert set(queued) == set(taus), runs
    for tau in taus:  # the same experiments run serially in the workspace
        set_param(repo, "allocate.fi_retention.tau", tau)
        reproduce(repo)
        serial = json.loads((repo / "metrics/evaluate/metrics.json").read_text())
        no_ci = lambda d: {k: ({a: b for a, b in v.items() if a != "ci95"} if isinstance(v, dict) else v)  # noqa: E731
                           for k, v in d.items() if v is not None}   # exp show drops nulls, renders lists its way
        assert no_ci(serial) == no_ci(queued[tau])
