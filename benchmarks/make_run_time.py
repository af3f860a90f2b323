"""`make run`'s wall time with each candidate `compress.method` (issue 23: a new default must not make
the workspace pipeline slower than it is).

For each method, clones this repository's HEAD into a scratch folder (fisvd.results.scratch_clone:
no DVC cache, no run cache, so every stage really runs), sets only `compress.method` in its
params.yaml, and runs the pipeline stage by stage (`dvc repro -f -s <stage>`: prepare → finetune →
fisher → allocate → compress → evaluate, what `make run`'s `dvc repro` runs), timing each. The
methods run one after the other on the same machine, never beside another job; the stages up to
`fisher` are the same for every method, so their difference between runs is the machine's own
run-to-run noise, against which the `allocate` + `compress` + `evaluate` difference is read.
Writes benchmarks/results/make_run_time.json (one entry per method, resumable: a method already there
is re-run only when named in --methods) and the Markdown table make_run_time.md.

    python benchmarks/make_run_time.py                         # kfac and kfac_seq, those not yet measured
    python benchmarks/make_run_time.py --methods kfac_seq      # (re)measure one
    python benchmarks/make_run_time.py --render                # only re-render the Markdown

Needs GLUE (GLUE_DIR or ../shared/data/glue). Heavy: ~14 min per method on 2 CPU cores.
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
OUT = ROOT / "benchmarks" / "results" / "make_run_time.json"
REPORT = OUT.with_suffix(".md")
STAGES = ("prepare", "finetune", "fisher", "allocate", "compress", "evaluate")
SHARED = ("prepare", "finetune", "fisher")        # identical for every compress.method


def measure(method: str, scratch: str) -> dict:
    """One timed pipeline run in a fresh clone with `compress.method: method`."""
    sys.path.insert(0, str(ROOT / "src"))
    from fisvd.results import machine, scratch_clone, timed_repro
    commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
    dest, env = scratch_clone(ROOT, scratch)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["compress"]["method"] = method
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    t_all = time.perf_counter()
    stages = timed_repro(dest, env, STAGES, force=True, label=f"{method} ")
    total = round(time.perf_counter() - t_all, 1)
    metrics = json.loads((dest / "metrics/evaluate/metrics.json").read_text())
    return {"fisvd_commit": commit, "machine": machine(),
            "stage_wall_s": stages, "total_wall_s": total,
            "dense_score": metrics["dense"]["score"], "compressed_score": metrics["compressed"]["score"],
            "margin_kept": metrics["margin_kept"]}


def render(res: dict) -> str:
    methods = list(res)
    lines = ["# `make run` wall time per `compress.method`", "",
             "Command: `python benchmarks/make_run_time.py` (each method in a fresh scratch clone, every stage "
             "forced, one after the other). Machines: " +
             "; ".join(sorted({r["machine"] for r in res.values()})) + ".", "",
             "| stage | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for s in STAGES:
        lines.append(f"| {s} | " + " | ".join(f"{res[m]['stage_wall_s'][s]:.0f} s" for m in methods) + " |")
    lines.append("| **total** | " + " | ".join(f"**{res[m]['total_wall_s']:.0f} s** "
                                              f"({res[m]['total_wall_s'] / 60:.1f} min)" for m in methods) + " |")
    lines.append("| dev score dense → compressed (margin kept) | " + " | ".join(
        f"{res[m]['dense_score']:.2f} → {res[m]['compressed_score']:.2f} ({res[m]['margin_kept']:.2f})"
        for m in methods) + " |")
    if {"kfac", "kfac_seq"} <= set(res):
        a, b = res["kfac"], res["kfac_seq"]
        shared = lambda r: sum(r["stage_wall_s"][s] for s in SHARED)  # noqa: E731
        rest = lambda r: r["total_wall_s"] - shared(r)  # noqa: E731
        lines += ["", f"kfac_seq / kfac, whole run: {b['total_wall_s'] / a['total_wall_s']:.3f} "
                      f"({b['total_wall_s'] - a['total_wall_s']:+.0f} s). The stages both runs share (prepare, "
                      f"finetune, fisher: the same commands on the same params) took {shared(a):.0f} and "
                      f"{shared(b):.0f} s ({shared(b) - shared(a):+.0f} s: run-to-run noise); allocate + compress "
                      f"+ evaluate {rest(a):.0f} vs {rest(b):.0f} s ({rest(b) - rest(a):+.0f} s: the method's own "
                      f"cost)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=None, help="comma-separated compress.method values to (re)measure "
                    "(default: kfac,kfac_seq, those not yet in the JSON)")
    ap.add_argument("--scratch", default="/tmp/fisvd-make-run-time")
    ap.add_argument("--render", action="store_true", help="only re-render the Markdown from the JSON")
    args = ap.parse_args()
    res = json.loads(OUT.read_text()) if OUT.exists() else {}
    if not args.render:
        todo = args.methods.split(",") if args.methods else [m for m in ("kfac", "kfac_seq") if m not in res]
        for m in todo:
            res[m] = measure(m, args.scratch)
            OUT.write_text(json.dumps(res, indent=2) + "\n")
    REPORT.write_text(render(res))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
