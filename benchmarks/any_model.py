"""A model other than MiniLM end to end on the shipped params.yaml (issue 21's real check).

Clones this repository's HEAD into a scratch folder, changes only `model.name`, `data.task` and the
training subset (`data.max_train_samples`) in its params.yaml, runs `dvc repro` there (every stage:
prepare → finetune → fisher → allocate → compress → evaluate) and writes what came out to
benchmarks/results/any_model/<name>.json (+ .md): dense and compressed dev scores with bootstrap
intervals, constant-predictor floor and margin kept, parameters, ranks summary (speed_missing: the
shapes the shipped speed table lacks), measured CPU latency, wall time per stage, and the ONNX parity
of `python -m fisvd.export` run after the pipeline.

    make mpnet
    python benchmarks/any_model.py --model "$(python -m fisvd.mpnet)" --name mpnet_rte --task rte \
        --max-train-samples 200

Needs GLUE (GLUE_DIR or ../shared/data/glue). Heavy (BERT-base on 2 CPU cores: ~15 min).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "any_model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model.name (HF id or local directory)")
    ap.add_argument("--name", required=True, help="result file stem")
    ap.add_argument("--task", default="rte")
    ap.add_argument("--max-train-samples", type=int, default=200)
    ap.add_argument("--scratch", default="/tmp/fisvd-any-model")
    args = ap.parse_args()
    commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
    sys.path.insert(0, str(ROOT / "src"))
    from fisvd.results import scratch_clone, timed_repro
    scratch, env = scratch_clone(ROOT, args.scratch)
    params = yaml.safe_load((scratch / "params.yaml").read_text())
    model = str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model
    params["model"]["name"] = model
    params["data"].update(task=args.task, max_train_samples=args.max_train_samples)
    (scratch / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    t_all = time.time()
    stages = timed_repro(scratch, env, ("prepare", "finetune", "fisher", "allocate", "compress", "evaluate"))
    t0 = time.time()                     # out the door: deployable dir, ONNX parity on dev, model card
    subprocess.run([sys.executable, "-m", "fisvd.export", "--out", "models/export"], cwd=scratch, env=env, check=True)
    stages["export (python -m fisvd.export)"] = round(time.time() - t0, 1)
    read = lambda p: json.loads((scratch / p).read_text())  # noqa: E731
    metrics, ranks, latency = read("metrics/evaluate/metrics.json"), read("metrics/allocate/ranks.json"), \
        read("metrics/evaluate/latency.json")
    out = {"model": args.model, "task": args.task, "max_train_samples": args.max_train_samples,
           "changed_params": {"model.name": args.model, "data.task": args.task,
                              "data.max_train_samples": args.max_train_samples},
           "fisvd_commit": commit, "stage_wall_s": stages, "total_wall_s": round(time.time() - t_all, 1),
           "metrics": metrics, "ranks_totals": ranks["totals"], "latency": latency,
           "matrices": len(ranks["matrices"]), "onnx": read("models/export/export.json")["onnx"]}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    d, c = metrics["dense"], metrics["compressed"]
    ci = lambda m: f" [{m['ci95'][0]:.1f}, {m['ci95'][1]:.1f}]" if "ci95" in m else ""  # noqa: E731
    lines = [f"# {args.name}: {args.model} on {args.task} (train subset {args.max_train_samples}), shipped params",
             "", f"Command: `python benchmarks/any_model.py --model {args.model} --name {args.name} --task "
             f"{args.task} --max-train-samples {args.max_train_samples}` at fisvd {commit[:10]}.", "",
             "| | score (95% CI) | collapsed | params |", "|---|---|---|---|",
             f"| dense | {d['score']:.1f}{ci(d)} | {d['collapsed']} | {d['params']:,} |",
             f"| compressed | {c['score']:.1f}{ci(c)} | {c['collapsed']} | {c['params']:,} |", "",
             f"Constant predictor {metrics['constant_score']:.1f}; % of dense {metrics['pct_of_dense']}; "
             f"margin kept {metrics['margin_kept']}; kept ratio {metrics['kept_ratio']}.", "",
             f"{len(ranks['matrices'])} matrices; speed table shapes missing: "
             f"{', '.join(ranks['totals'].get('speed_missing') or []) or 'none'}.", "",
             f"Latency: `{json.dumps(latency)}`", "",
             f"ONNX (python -m fisvd.export): max |onnxruntime - pytorch| = {out['onnx']['max_abs_diff']:.2e} over "
             f"{out['onnx']['examples']} dev examples.", "",
             "Wall time per stage (s): " + ", ".join(f"{k} {v}" for k, v in stages.items()) + "."]
    (OUT / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
