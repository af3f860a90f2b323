"""benchmarks/make_run_time.py: the timed run changes nothing but compress.method and forces every
stage of dvc.yaml in pipeline order; the report's split into shared stages and the method's own."""
import json
import subprocess

import pytest
import yaml

from conftest import ROOT, load_bench

bench = load_bench("make_run_time")


def test_stages_are_the_pipeline_in_order():
    stages = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert list(bench.STAGES) == stages
    assert list(bench.SHARED) == stages[:3]


def test_measure_sets_only_the_method_and_forces_every_stage(tmp_path, monkeypatch):
    dest = tmp_path / "clone"
    dest.mkdir()
    original = (ROOT / "params.yaml").read_text()
    (dest / "params.yaml").write_text(original)
    (dest / "metrics/evaluate").mkdir(parents=True)
    (dest / "metrics/evaluate/metrics.json").write_text(json.dumps(
        {"dense": {"score": 80.0}, "compressed": {"score": 79.0}, "margin_kept": 0.9}))
    import fisvd.results
    monkeypatch.setattr(fisvd.results, "scratch_clone", lambda root, d: (dest, {"X": "1"}))
    calls = []
    real_run = subprocess.run

    def fake_run(cmd, **kw):
        if "dvc" in cmd:
            calls.append((cmd, kw["cwd"]))
            return subprocess.CompletedProcess(cmd, 0)
        return real_run(cmd, **kw)
    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    out = bench.measure("kfac_seq", str(dest))
    assert [c[0][-1] for c in calls] == list(bench.STAGES)
    assert all(c[0][-4:-1] == ["repro", "-f", "-s"] and c[1] == dest for c in calls)
    new, old = yaml.safe_load((dest / "params.yaml").read_text()), yaml.safe_load(original)
    assert new["compress"].pop("method") == "kfac_seq"
    old["compress"].pop("method")
    assert new == old
    assert set(out["stage_wall_s"]) == set(bench.STAGES)
    assert (out["dense_score"], out["compressed_score"], out["margin_kept"]) == (80.0, 79.0, 0.9)


def test_render_splits_shared_stages_from_the_methods_own_cost():
    def res(stages):
        return {"machine": "cpu, 2 CPU cores", "stage_wall_s": dict(zip(bench.STAGES, stages)),
                "total_wall_s": float(sum(stages)), "dense_score": 80.0, "compressed_score": 79.0,
                "margin_kept": 0.9}
    md = bench.render({"kfac": res([1, 500, 200, 10, 10, 30]), "kfac_seq": res([1, 502, 199, 10, 90, 30])})
    # totals 751 and 832: ratio 1.108, +81 s; shared 701 vs 702 (+1 s), own 50 vs 130 (+80 s)
    assert "whole run: 1.108 (+81 s)" in md
    assert "took 701 and 702 s (+1 s" in md
    assert "50 vs 130 s (+80 s" in md
    assert "| compress | 10 s | 90 s |" in md
