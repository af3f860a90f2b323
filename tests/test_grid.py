"""The grid: cell enumeration, generated pipeline files, vectorised bootstrap, and the real grid
pipeline end to end in a temp git+DVC repo (tiny model, tiny MRPC), asserting via `Repo.reproduce()`
which stages ran when nothing changed, when a budget is added, and when a method is added."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, copy_project, git_dvc_init, write_mrpc
from fisvd import grid as G
from fisvd.metrics import glue_metrics, task_metrics
from fisvd.params import parse_params
from fisvd.report import boot_scores, paired_win, resample_indices, split_scores

RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_grid(raw=None, **grid):
    raw = json.loads(json.dumps(raw or RAW))
    raw["grid"].update(grid)
    return raw


# ---- enumeration ---------------------------------------------------------------------------------

def test_cells_are_the_product_minus_the_limits():
    raw = tiny_grid(tasks=["mrpc", "rte"], seeds=[1, 2], budgets=[50, 20],
                    allocations=["uniform_rank", "random", "max_fi"], factorisations=["fwsvd", "tfwsvd", "kfac"],
                    limit={"tfwsvd": {"budgets": [50], "allocations": ["uniform_rank", "random"]},
                           "random": {"factorisations": ["fwsvd"], "tasks": ["rte"]},
                           "uniform_rank": {"seeds": [1]}})     # a control on the first seed only
    p = parse_params(raw)
    got = {(c.task, c.seed, c.factorisation, c.allocation, c.budget) for c in G.cells(p)}
    want = set()
    for t in ("mrpc", "rte"):
        for s in (1, 2):
            for f in ("fwsvd", "tfwsvd", "kfac"):
                for a in ("uniform_rank", "random", "max_fi"):
                    for b in (50, 20):
                        if f == "tfwsvd" and (b != 50 or a == "max_fi"):
                            continue
                        if a == "random" and (f != "fwsvd" or t != "rte"):
                            continue
                        if a == "uniform_rank" and s != 1:
                            continue
                        want.add((t, s, f, a, b))
    assert got == want and len(G.cells(p)) == len(want)
    assert {c.factorisation for c in G.cells(p, task="mrpc", seed=1, factorisation="kfac")} == {"kfac"}


def test_recover_cells_are_listed_cells_inside_the_grid():
    raw = tiny_grid(tasks=["mrpc"], seeds=[42], budgets=[50, 20], allocations=["uniform_rank", "max_fi"],
                    factorisations=["fwsvd"], limit={})
    raw["recover"]["cells"] = [{"allocation": "max_fi", "factorisation": "fwsvd", "budgets": [20, 10]},
                               {"allocation": "max_fi", "factorisation": "kfac", "budgets": [20]}]
    got = G.recover_cells(parse_params(raw))
    assert [(c.allocation, c.factorisation, c.budget) for c in got] == [("max_fi", "fwsvd", 20)]  # 10, kfac: not in grid


def test_grid_params_errors_name_the_key():
    from fisvd.errors import ParamError
    for bad, key in ((dict(budgets=[50, 150]), "grid.budgets[1]"), (dict(tasks=["mrpc", "nope"]), "grid.tasks[1]"),
                     (dict(headline=[50, 0]), "grid.headline[1]"), (dict(headline=[30, 30]), "grid.headline"),
                     (dict(allocations=["max_fi", "max_fi"]), "grid.allocations"),
                     (dict(limit={"bogus": {"budgets": [50]}}), "grid.limit.bogus"),
                     (dict(limit={"kfac": {"allocations": ["max_fi", "nope"]}}), "grid.limit.kfac.allocations[1]"),
                     (dict(limit={"kfac": {"budgets": [50, 0]}}), "grid.limit.kfac.budgets[1]"),
                     (dict(limit={"kfac": {"seeds": [1, 1]}}), "grid.limit.kfac.seeds"),
                     (dict(seeds=[]), "grid.seeds"), (dict(budgets=[50, 30.5]), "grid.budgets[1]")):
        with pytest.raises(ParamError, match=key.replace("[", r"\[").replace("]", r"\]")):
            parse_params(tiny_grid(**bad))
    for cell, key in (({"budgets": [20, 101]}, "recover.cells[0].budgets[1]"), ({"budgets": []}, "recover.cells[0].budgets"),
                      ({"budgets": [20], "seeds": [3, 3]}, "recover.cells[0].seeds")):
        raw = tiny_grid()
        raw["recover"]["cells"] = [{"allocation": "max_fi", "factorisation": "fwsvd", **cell}]
        with pytest.raises(ParamError, match=key.replace("[", r"\[").replace("]", r"\]")):
            parse_params(raw)
    raw = tiny_grid(tasks=["mrpc", "qnli"])
    with pytest.raises(ParamError, match="grid.finetune.qnli: missing"):
        parse_params(raw)


def test_dvc_hashes_a_local_model_folder_without_fisvds_machine_specific_marker():
    """The marker `fisvd.mpnet` leaves in the folder holds this machine's mtime; the grids depend on the
    folder, so DVC must not see the marker (.dvcignore) or a re-assembly would re-run the MPNet grid."""
    from dvc.repo import Repo
    from fisvd.mpnet import MARKER
    with Repo(str(ROOT)) as repo:
        ignored = repo.dvcignore.is_ignored_file
        assert ignored(str(ROOT / "models" / "any" / MARKER))
        assert not ignored(str(ROOT / "models" / "any" / "model.safetensors"))
        assert not ignored(str(ROOT / "grid" / "mrpc" / "s42" / MARKER))    # only inside models/


def test_lock_files_are_read_as_dvc_writes_them(tmp_path):
    """DVC writes dvc.lock as YAML 1.2, where `3e-05` is a float; PyYAML (1.1) would read a string, so
    a variant grid's share step would find the learning rate changed and share nothing."""
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  finetune:\n    params:\n      params.yaml:\n"
                                       "        finetune.learning_rate: 3e-05\n")
    lock = G.stages_of(tmp_path, "dvc.lock")
    assert lock["finetune"]["params"]["params.yaml"]["finetune.learning_rate"] == 3e-05


def test_task_params_apply_the_task_settings_and_nothing_else():
    raw = tiny_grid()
    raw["grid"]["finetune"]["rte"] = {"learning_rate": 2e-5, "epochs": 5, "batch_size": 32}
    p = parse_params(raw)
    out = G.task_params(raw, p, "rte", 7)
    assert out["data"]["task"] == "rte" and out["finetune"]["seed"] == 7
    assert out["finetune"]["learning_rate"] == p.grid.finetune["rte"].learning_rate
    assert out["finetune"]["epochs"] == p.grid.finetune["rte"].epochs
    assert (out["finetune"]["learning_rate"], out["finetune"]["batch_size"]) == (2e-5, 32)
    assert out["allocate"]["fi_retention"]["calibrate"] is True
    assert out["grid"]["tasks"] == ["rte"] and out["grid"]["seeds"] == [7]
    assert out["grids"] == {}                                # a run folder is one grid's, never its variants'
    same = {k for k in raw if out[k] == raw[k]}
    assert same == set(raw) - {"data", "finetune", "allocate", "grid", "grids"}
    parse_params(out)


def test_a_grid_variant_is_the_root_with_its_overrides_merged_in():
    from fisvd.errors import ParamError
    from fisvd.params import grid_variant
    raw = tiny_grid(tasks=["mrpc", "rte"], budgets=[50, 20], allocations=["max_fi", "random"],
                    factorisations=["fwsvd", "tfwsvd"], limit={"tfwsvd": {"budgets": [50]}})
    raw["grids"] = {"big": {"model": {"name": "./models/big"},
                            "grid": {"tasks": ["rte"], "budgets": [48], "limit": {"random": {"tasks": ["rte"]}},
                                     "finetune": {"rte": {"learning_rate": 2e-5, "epochs": 3, "batch_size": 32}}}}}
    merged, p = grid_variant(raw, "big")
    assert p.grid.folder == "grid-big" and merged["grids"] == {} and p.model.name == "./models/big"
    assert p.grid.tasks == ["rte"] and p.grid.budgets == [48]                       # lists replace
    assert set(p.grid.limit) == {"tfwsvd", "random"} and p.grid.limit["tfwsvd"].budgets == [50]  # mappings merge
    assert p.grid.finetune["rte"].batch_size == 32 and p.grid.finetune["mrpc"] == parse_params(raw).grid.finetune["mrpc"]
    assert {k: merged[k] for k in merged if k not in ("model", "grid", "grids")} == \
        {k: raw[k] for k in raw if k not in ("model", "grid", "grids")}          # the rest is the root's
    assert raw["grid"]["budgets"] == [50, 20] and raw["grid"]["folder"] == "grid"  # the root is untouched
    for over, key in (({"grid": {"budgets": [150]}}, r"^grids\.big → grid\.budgets\[0\]"),
                      ({"grid": {"folder": "grid-x"}}, r"^grids\.big\.grid\.folder: set by fisvd\.grid"),
                      ({"grids": {}}, r"^grids\.big\.grids: unknown section"),
                      ({"modle": {}}, r"^grids\.big\.modle: unknown section"),
                      ({}, r"^grids\.big: expected a mapping")):
        bad = json.loads(json.dumps(raw))
        bad["grids"]["big"] = over
        with pytest.raises(ParamError, match=key):
            parse_params(bad)
    only_model = json.loads(json.dumps(raw))             # a variant leaving `grid` alone: the root's stays the root's
    only_model["grids"] = {"small": {"model": {"name": "./models/small"}}}
    parse_params(only_model)
    assert only_model["grid"]["folder"] == "grid" and [gp.grid.folder for _, gp in G.grids(parse_params(only_model), only_model)] == ["grid", "grid-small"]
    for bad_grid, key in ((None, r"^grids\.big\.grid: expected a mapping"), ):
        bad = json.loads(json.dumps(raw))
        bad["grids"]["big"] = {"grid": bad_grid}
        with pytest.raises(ParamError, match=key):
            parse_params(bad)
    bad = json.loads(json.dumps(raw))
    bad["grid"]["folder"] = "grid-big"                  # the main grid in a variant's folder
    with pytest.raises(ParamError, match=r"^grids\.big: its folder grid-big is grid\.folder"):
        parse_params(bad)
    bad = json.loads(json.dumps(raw))
    bad["grids"]["Big One"] = bad["grids"].pop("big")
    with pytest.raises(ParamError, match=r"^grids\.Big One: name"):
        parse_params(bad)


def test_a_grid_variant_gets_its_own_folders_report_and_model_path():
    raw = tiny_grid(tasks=["mrpc"], seeds=[42], budgets=[50], allocations=["max_fi"], factorisations=["kfac"], limit={})
    raw["recover"]["cells"] = []
    raw["grids"] = {"big": {"model": {"name": "./models/big"}, "grid": {"budgets": [48, 20]}}}
    files = G.files(parse_params(raw), raw)
    assert {f for f in files if f.startswith("grid-big/")} == {
        "grid-big/params.yaml", "grid-big/dvc.yaml", "grid-big/.gitignore",
        "grid-big/mrpc/s42/params.yaml", "grid-big/mrpc/s42/dvc.yaml"}
    run = yaml.safe_load(files["grid-big/mrpc/s42/params.yaml"])
    assert run["model"]["name"] == "../../../models/big" and run["grid"]["budgets"] == [48, 20]
    assert yaml.safe_load(files["grid/mrpc/s42/params.yaml"])["model"]["name"] == raw["model"]["name"]
    finetune = lambda g: yaml.safe_load(files[f"{g}/mrpc/s42/dvc.yaml"])["stages"]["finetune"]["deps"]  # noqa: E731
    assert "../../../models/big" in finetune("grid-big") and not any("/models/" in d for d in finetune("grid"))
    whole = yaml.safe_load(files["grid-big/params.yaml"])
    assert whole["grid"]["folder"] == "grid-big" and whole["grids"] == {}
    report = yaml.safe_load(files["grid-big/dvc.yaml"])["stages"]["report"]
    assert report["params"] == ["grid", "recover.epochs", "recover.cells", "model.name",   # grid-big/params.yaml
                                "allocate.method", "compress.method"]
    assert [d for d in report["deps"] if d.endswith(".json")] == [
        "mrpc/s42/results/dense.json", "mrpc/s42/results/kfac/max_fi-p48.json", "mrpc/s42/results/kfac/max_fi-p20.json"]
    assert [next(iter(o)) for o in report["outs"]] == [
        "../metrics/report-big/results.csv", "../metrics/report-big/vs_default.csv", "../metrics/report-big/tables.md",
        "../metrics/report-big/headline.md", "../metrics/report-big/standing.md",
        "../metrics/report-big/png"]
    main = yaml.safe_load(files["grid/dvc.yaml"])["stages"]["report"]
    assert next(iter(main["outs"][0])) == "../metrics/report/results.csv"


def test_generated_grid_files_are_current():
    res = subprocess.run([sys.executable, "-m", "fisvd.grid", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_grid_stage_deps_are_the_code_deps():
    """The same list the cell memo hashes (fisvd.cells.memo_context): they cannot drift apart."""
    from fisvd.deps import code_deps
    pipe = yaml.safe_load((ROOT / "grid/mrpc/s42/dvc.yaml").read_text())["stages"]
    for name, st in pipe.items():
        script = st["cmd"].split("python -m stages.")[1].split()[0]
        code = [d[len("../../../"):] for d in st["deps"] if d.startswith("../../../")
                and not d.startswith(("../../../benchmarks/", "../../../data/"))]
        assert code == code_deps(f"stages/{script}.py"), name
    report = yaml.safe_load((ROOT / "grid/dvc.yaml").read_text())["stages"]["report"]
    p = parse_params(RAW)
    assert sum(d.endswith(".json") for d in report["deps"]) == (
        len(G.cells(p)) + len(G.recover_cells(p)) + len(p.grid.tasks) * len(p.grid.seeds))


# ---- vectorised bootstrap ------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["mrpc", "cola", "stsb", "rte"])
def test_split_scores_match_glue_metrics_row_by_row(task):
    rng = np.random.default_rng(0)
    if task == "stsb":
        y = rng.uniform(0, 5, (6, 40))
        p = y + rng.normal(0, 1, y.shape)
        p[2] = 1.0                                            # constant row: correlation taken as 0
        y[3, :20] = y[3, 20:]                                 # ties
    else:
        y = rng.integers(0, 2, (6, 40))
        p = np.where(rng.random(y.shape) < 0.7, y, 1 - y)
        p[2] = 0
    got = split_scores(task, p, y)
    want = [glue_metrics(task, p[i], y[i])["score"] for i in range(len(y))]
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_boot_scores_resample_pairs_and_average_seeds_and_mnli_splits():
    rng = np.random.default_rng(1)
    labels = {"dev": rng.integers(0, 3, 30), "dev_mm": rng.integers(0, 3, 20)}
    preds = [{s: np.where(rng.random(len(y)) < 0.6, y, (y + 1) % 3) for s, y in labels.items()} for _ in range(2)]
    idx = resample_indices({s: len(y) for s, y in labels.items()}, n=5, seed=3)
    got = boot_scores("mnli", preds, labels, idx, resample_seeds=False)
    per = [[task_metrics("mnli", {s: (pr[s][idx[s][i]], labels[s][idx[s][i]]) for s in labels})["score"]
            for pr in preds] for i in range(5)]
    for i in range(5):
        assert got[i] == pytest.approx(np.mean(per[i]))
    # two-level bootstrap: each replicate averages k seeds drawn with replacement
    from fisvd.report import seed_draws
    both = boot_scores("mnli", preds, labels, idx)
    draws = seed_draws(5, 2)
    for i in range(5):
        assert both[i] == pytest.approx(np.mean([per[i][j] for j in draws[i]]))
    assert len({tuple(d) for d in seed_draws(1000, 3)}) > 20          # really resamples the seeds
    np.testing.assert_allclose(boot_scores("mnli", preds[:1], labels, idx), [p[0] for p in per])   # one seed


def test_seed_resampling_widens_the_interval_when_seeds_disagree():
    from fisvd.report import interval
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    good = np.where(rng.random(400) < 0.9, y, 1 - y)
    bad = np.where(rng.random(400) < 0.6, y, 1 - y)          # one seed far worse than the others
    preds = [{"dev": good}, {"dev": good}, {"dev": bad}]
    idx = resample_indices({"dev": 400}, n=1000, seed=0)
    lo1, hi1 = interval(boot_scores("sst2", preds, {"dev": y}, idx, resample_seeds=False))
    lo2, hi2 = interval(boot_scores("sst2", preds, {"dev": y}, idx))
    assert hi2 - lo2 > 2 * (hi1 - lo1)


def test_paired_win_needs_the_whole_interval_above_zero():
    base = np.linspace(0, 1, 1000)
    assert paired_win(base + 0.5, base) and not paired_win(base, base)
    noisy = base + np.where(np.arange(1000) < 100, -1.0, 1.0)     # 10 % of resamples below: no win
    assert not paired_win(noisy, base)


# ---- end to end ----------------------------------------------------------------------------------

def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def reproduce(repo, target="grid/dvc.yaml"):
    from dvc.repo import Repo
    with Repo(str(repo)) as r:
        return sorted(s.addressing.split(":")[-1] for s in r.reproduce(targets=[str(repo / target)]))


@pytest.mark.slow
def test_landing_batches_upstream_then_cells_then_recoveries_six_at_a_time():
    rec = [f"recover-kfac-max_fi-p{b}" for b in (10, 20, 30, 40, 50, 60, 70)]
    pipe = dict.fromkeys(["cells-kfac", *rec[:3], "prepare", "dense", "finetune", *rec[3:], "fisher", "cells-fwsvd",
                          "extra"], {})
    assert G.landing_batches(pipe) == [["prepare", "finetune", "fisher"], ["cells-kfac", "dense", "cells-fwsvd"],
                                       rec[:6], rec[6:], ["extra"]]
    assert G.landing_batches({"dense": {}}) == [["dense"]]      # a shared folder: no upstream of its own


def test_grid_runs_resumes_and_extends_only_the_new_cells(tmp_path, tiny_model_dir, monkeypatch, capsys):
    repo = copy_project(tmp_path / "proj")
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["model"]["name"] = str(tiny_model_dir)
    raw["finetune"].update(batch_size=8, max_length=32)
    raw["fisher"]["batch_size"] = 8
    raw["evaluate"]["batch_size"] = 8
    raw["allocate"]["measured"].update(points=2, slice=8, swaps=1)
    raw["allocate"]["speed_table"] = None              # the committed table times MiniLM's shapes only
    raw["grid"].update(tasks=["mrpc"], seeds=[42], budgets=[50, 20], allocations=["uniform_rank", "max_fi"],
                       factorisations=["fwsvd", "kfac"], limit={}, max_train_samples={},
                       finetune={"mrpc": {"learning_rate": 3e-5, "epochs": 1, "batch_size": 8}})   # 3e-05 in
                                                      # dvc.lock: a YAML 1.2 float the variant share must read
    raw["recover"].update(epochs=1, cells=[{"allocation": "max_fi", "factorisation": "kfac", "budgets": [20]}])
    raw["grids"] = {}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    glue = write_mrpc(tmp_path / "glue", n_train=32, n_dev=16)
    for k, v in {"GLUE_DIR": str(glue), "DVC_SITE_CACHE_DIR": str(tmp_path / "site"), "DVC_NO_ANALYTICS": "1",
                 "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo / "src"), "FISVD_LOG": "WARNING",
                 "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(repo)

    def generate():
        assert G.main(["--root", str(repo)]) == 0

    generate()
    git_dvc_init(repo)

    ran = reproduce(repo)
    assert ran == sorted(["prepare", "finetune", "fisher", "dense", "cells-fwsvd", "cells-kfac",
                          "recover-kfac-max_fi-p20", "report"])
    df = pd.read_csv(repo / "metrics/report/results.csv")
    assert len(df) == 1 + 2 * 2 * 2 + 1                       # dense + cells + one recovered
    cell = df[(df.allocation == "max_fi") & (df.factorisation == "kfac") & (df.budget == 0.2)]
    assert list(cell.recovery_epochs) == [0, 1]
    assert (df.ci_low <= df.score + 1e-9).all() and (df.score <= df.ci_high + 1e-9).all()
    assert set(df.columns) >= {"task", "model", "allocation", "factorisation", "budget", "kept_ratio", "total_params",
                               "recovery_epochs", "score", "f1", "accuracy", "collapsed", "margin_kept"}
    comp = df[df.allocation != "dense"]
    assert (comp.kept_ratio <= comp.budget + 1e-9).all()
    summary = json.loads((repo / "metrics/report/summary.json").read_text())
    assert {"p50", "p20", "p20_ft1"} <= set(summary)
    assert (repo / "metrics/report/png/pareto_mrpc.png").stat().st_size > 0
    tables = (repo / "metrics/report/tables.md").read_text()
    assert "## p = 0.5, no recovery" in tables and "after 1 epoch(s)" in tables
    over = tables.split("## Overview")[1].split("\n## ")[0]            # headline budgets + every recovered one
    assert [h for h in over.splitlines() if h.startswith("### ")] == [
        "### p = 0.5, no recovery", "### p = 0.2, no recovery", "### p = 0.2, after 1 epoch(s) of recovery fine-tuning"]
    rec_rows = [r for r in over.split("after 1 epoch(s)")[1].splitlines() if r.startswith("| max_fi + kfac")]
    before = df[(df.allocation == "max_fi") & (df.factorisation == "kfac") & (df.budget == 0.2) & (df.recovery_epochs == 0)]
    assert len(rec_rows) == 1 and rec_rows[0].rstrip(" |").endswith(f"{before.score.iloc[0]:.1f}")
    d = df[df.allocation == "dense"].iloc[0]
    best = df[(df.budget == 0.5) & (df.recovery_epochs == 0) & (df.allocation != "dense")].score.max()
    assert summary["p50"]["best_avg"] == pytest.approx(best, abs=0.01)
    pooled = (best - d.constant_score) / (d.score - d.constant_score) if d.score > d.constant_score else None
    assert summary["p50"]["best_margin_kept"] == (pytest.approx(pooled, abs=2e-3) if pooled is not None else None)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "grid")

    assert reproduce(repo) == []                             # nothing changed: nothing runs

    # a fresh clone (no DVC cache, no remote) holds every result in git: nothing re-runs there; a
    # recovery cell added there re-runs the upstream whose outputs only the cache held, and nothing else
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / "grid/mrpc/s42/data/model").exists()
    assert json.loads((clone / "grid/mrpc/s42/results/kfac/max_fi-p20.json").read_text())["budget"] == 20
    assert G.main(["--root", str(clone), "--repro", "grid/mrpc/s42"]) == 0     # `make grid`'s call
    assert "grid/mrpc/s42: 0 stage(s) ran" in capsys.readouterr().out
    craw = yaml.safe_load((clone / "params.yaml").read_text())
    craw["recover"]["cells"].append({"allocation": "uniform_rank", "factorisation": "fwsvd", "budgets": [20]})
    (clone / "params.yaml").write_text(yaml.safe_dump(craw, sort_keys=False))
    assert G.main(["--root", str(clone)]) == 0
    git(clone, "config", "user.email", "ci@example.com")
    git(clone, "config", "user.name", "ci")
    ran = [s.split(":")[-1] for s in G.run_folder("grid/mrpc/s42", clone, commit=True)]   # `make grid GRID_COMMIT=1`
    assert ran == ["prepare", "finetune", "fisher", "recover-fwsvd-uniform_rank-p20"]   # same bytes: cells skipped
    assert (clone / "grid/mrpc/s42/results/recover-fwsvd-uniform_rank-p20.json").is_file()
    log = subprocess.run(["git", "log", "--format=%s", "-2"], cwd=clone, capture_output=True, text=True).stdout
    assert log.splitlines() == ["grid: grid/mrpc/s42 (prepare, finetune, fisher, recover-fwsvd-uniform_rank-p20)",
                                "grid"]                 # one commit for the batch that ran (the upstream came with it)
    assert subprocess.run(["git", "status", "--porcelain", "--", "grid/mrpc/s42"], cwd=clone, capture_output=True,
                          text=True).stdout == ""       # its result, metrics and dvc.lock all landed
    assert G.run_folder("grid/mrpc/s42", clone, commit=True) == []                    # and nothing more to commit

    memo = repo / "grid/mrpc/s42/.cellcache"
    before = set(memo.iterdir())
    with open(repo / "src/fisvd/speed.py", "a") as f:       # a code dep of the cells: DVC re-runs them and
        f.write("\n# an edit that changes no number\n")     # the memo (same code list) misses, no stale cell
    assert reproduce(repo) == ["cells-fwsvd", "cells-kfac"]  # same result bytes: recovery, report skipped
    assert len(set(memo.iterdir()) - before) == 2 * 2 * 2
    with open(repo / "src/fisvd/params.py", "a") as f:      # a schema edit: nothing re-runs
        f.write("\nSCHEMA_EDIT = 1\n")
    assert reproduce(repo) == []

    before = set(memo.iterdir())
    raw["grid"]["budgets"] = [50, 30, 20]                    # a new budget: only its cells are computed
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    generate()
    ran = reproduce(repo)
    assert ran == ["cells-fwsvd", "cells-kfac", "report"]   # recovery of p20 untouched
    assert len(set(memo.iterdir()) - before) == 2 * 2       # 2 allocations x 2 factorisations at p=30
    runtime = json.loads((repo / "grid/mrpc/s42/metrics/runtime/cells-kfac.json").read_text())
    assert runtime["computed"] == 2 and runtime["memoised"] == 4

    before = set(memo.iterdir())
    raw["grid"]["allocations"] = ["uniform_rank", "max_fi", "energy"]
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    generate()
    assert reproduce(repo) == ["cells-fwsvd", "cells-kfac", "report"]
    assert len(set(memo.iterdir()) - before) == 2 * 3       # energy at 3 budgets x 2 factorisations
    assert len(pd.read_csv(repo / "metrics/report/results.csv")) == 1 + 3 * 2 * 3 + 1

    # a partial report while a grid is running: a task not started and a missing cell are skipped, counted
    full = (repo / "metrics/report/results.csv").read_bytes()
    raw["grid"]["tasks"] = ["mrpc", "rte"]
    raw["grid"]["finetune"]["rte"] = {"learning_rate": 1e-4, "epochs": 1, "batch_size": 8}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    generate()
    (repo / "grid/mrpc/s42/results/fwsvd/energy-p30.json").unlink()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "src")])}
    subprocess.run([sys.executable, "-m", "stages.report", "--partial"], cwd=repo / "grid", env=env, check=True)
    part = pd.read_csv(repo / "metrics/report-partial/results.csv")
    assert len(part) == 1 + 3 * 2 * 3 - 1 + 1 and set(part.task) == {"mrpc"}
    assert part[(part.allocation == "energy") & (part.budget == 0.3)].factorisation.tolist() == ["kfac"]
    head = (repo / "metrics/report-partial/tables.md").read_text()
    assert "19 of 40 result files present; tasks not started: rte" in head      # 2 tasks x (dense + 18 + 1)
    assert (repo / "metrics/report/results.csv").read_bytes() == full          # the DVC report untouched

    # an older configuration's results left out and counted (their stage is out of date, and downstream),
    # and those of a stage a running `dvc repro` holds: kfac's alpha_g changes cells-kfac and its recovery
    raw["compress"]["kfac"]["alpha_g"] = 0.5
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    generate()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    busy = repo / "grid/mrpc/s42/results/fwsvd/max_fi-p50.json"
    (repo / ".dvc/tmp/rwlock").write_text(json.dumps(
        {"read": {}, "write": {str(busy.resolve()): {"pid": holder.pid, "cmd": "dvc repro (test)"}}}))
    try:
        stale, held = G.out_of_date(["grid/mrpc/s42", "grid/rte/s42"], repo)
        subprocess.run([sys.executable, "-m", "stages.report", "--partial"], cwd=repo / "grid", env=env, check=True)
    finally:
        holder.kill()
    kfac = {f"grid/mrpc/s42/results/kfac/{a}-p{b}.json" for a in ("uniform_rank", "max_fi", "energy") for b in (50, 30, 20)}
    assert {p for p in stale if p.startswith("grid/mrpc/")} == kfac | {
        "grid/mrpc/s42/results/recover-kfac-max_fi-p20.json", "grid/mrpc/s42/metrics/recover/recover-kfac-max_fi-p20/plots/metrics"}
    assert "grid/rte/s42/results/dense.json" in stale                      # never ran: no lock entry
    assert held == {f"grid/mrpc/s42/results/fwsvd/{a}-p{b}.json" for a in ("uniform_rank", "max_fi", "energy")
                    for b in (50, 30, 20)}                                     # the whole held stage
    part = pd.read_csv(repo / "metrics/report-partial/results.csv")
    assert set(part.factorisation) == {"dense"} and len(part) == 1
    assert "1 of 40 result files present; tasks not started: rte; left out: 10 of an older configuration " \
           "(their stage is out of date: `dvc status`); 8 being computed" in \
           (repo / "metrics/report-partial/tables.md").read_text()            # fwsvd: 9 - energy-p30 deleted

    # a second grid (grids.<name>): its own run folders and report, a local model named from the project root
    shutil.copytree(tiny_model_dir, repo / "models/tiny")
    raw["grids"] = {"wide": {"model": {"name": "./models/tiny"}, "recover": {"cells": []},
                             "grid": {"tasks": ["mrpc"], "budgets": [40], "allocations": ["max_fi"],
                                      "factorisations": ["kfac"]}}}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    generate()
    assert reproduce(repo, "grid-wide/dvc.yaml") == ["cells-kfac", "dense", "finetune", "fisher", "prepare", "report"]
    wide = pd.read_csv(repo / "metrics/report-wide/results.csv")
    assert len(wide) == 2 and set(wide.model) == {"./models/tiny"} and set(wide.budget) == {1.0, 0.4}
    assert "Produced by `dvc repro grid-wide/dvc.yaml`" in (repo / "metrics/report-wide/tables.md").read_text()
    assert (repo / "grid-wide/mrpc/s42/data/model").is_dir() and (repo / "metrics/report/results.csv").read_bytes() == full

    # a variant grid on the main grid's model (another factorisation option) takes the main grid's
    # prepare → finetune → fisher → dense (same definitions and param values): only its cells run
    raw["grids"]["alt"] = {"compress": {"kfac": {"alpha_g": 0.3}}, "recover": {"cells": []},
                           "grid": {"tasks": ["mrpc"], "budgets": [40], "allocations": ["max_fi"], "factorisations": ["kfac"]}}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    generate()
    (repo / "grid-wide/mrpc/s42/dvc.lock").unlink()     # as if not run: its prepared data is the main grid's,
    assert G.share_upstream("grid-wide/mrpc/s42", "grid/mrpc/s42", repo) == ["prepare"]   # its model is not
    assert G.main(["--root", str(repo), "--share", "grid-alt/mrpc/s42"]) == 0
    assert G.share_upstream("grid-alt/mrpc/s42", "grid/mrpc/s42", repo) == []       # already there
    assert reproduce(repo, "grid-alt/dvc.yaml") == ["cells-kfac", "report"]
    for f in ("metrics/finetune/metrics.json", "results/dense.json", "data/fisher.safetensors"):
        assert (repo / "grid-alt/mrpc/s42" / f).read_bytes() == (repo / "grid/mrpc/s42" / f).read_bytes(), f
    untracked = subprocess.run(["git", "status", "--porcelain", "-uall", "grid-alt"], cwd=repo, capture_output=True,
                               text=True).stdout
    assert "data/model" not in untracked and "grid-alt/mrpc/s42/dvc.lock" in untracked   # cached outputs ignored
    assert len(pd.read_csv(repo / "metrics/report-alt/results.csv")) == 2
