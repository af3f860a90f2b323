"""The default factorisation, decided on held-out TRAINING rows of the five grid tasks (issues 22, 23).

Candidates: `kfac` (the default so far) and `kfac_seq` (its params.yaml options), both at the grid's
`max_fi` ranks — read from the grid cells' own records (`results/kfac/max_fi-pNN.json`; kfac_seq's
cells hold the same ranks, checked) — on each task's seed-42 fine-tuned model, statistics and prepared
data in `grid/<task>/s42/data/` (what `python -m fisvd.grid --repro grid/<task>/s42` leaves there).
Scored on `--rows` seeded training rows outside kfac_seq's calibration rows. The model was fine-tuned
on them, so this measures how faithfully each compressed model reproduces the dense one, not
generalisation; the dev sets are never read. Per row i (z dense, ẑ compressed outputs):

    classification:  Δ_i = KL(softmax z_i ‖ softmax ẑ_i)
    regression:      Δ_i = (ẑ_i − z_i)² / Var_i(z_i)     (the dense outputs' variance over the rows)

and per (task, p, method) the mean Δ; ratio = mean Δ(kfac_seq) / mean Δ(kfac), its 95 % interval
from 2000 bootstrap resamples of the rows (the same resamples for both methods and every budget);
pooled over the tasks: the geometric mean of the tasks' ratios, resampled the same way (each task's
rows independently). Also the share of rows whose predicted class is the dense model's.

Decision rule, fixed before the run: kfac_seq becomes `compress.method` if, at every p ≤ 0.3 (0.3,
0.2, 0.1), the pooled ratio's interval lies below 1 and no task's ratio interval lies above 1, and at
the default budget p = 0.5 the pooled ratio's interval does not lie above 1 — with all five tasks
measured. The `make run` time condition (issue 23) is checked separately (docs/results.md).

Resumable: each task's per-row Δ are kept in benchmarks/results/default_select.json (a task whose
model is missing is skipped, a task already there is not recomputed unless named in --tasks); the
Markdown report benchmarks/results/default_select.md is rendered from every task in the JSON.

    python benchmarks/default_select.py                    # every grid task with a model, not yet measured
    python benchmarks/default_select.py --tasks cola,sst2  # (re)measure these
    python benchmarks/default_select.py --render           # only re-render the Markdown from the JSON
"""
import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from fisvd.report import interval      # the report's 95 % percentile interval

BUDGETS = (50, 30, 20, 10)
LOW = (30, 20, 10)                  # "p <= 0.3" of the rule
METHODS = ("kfac", "kfac_seq")
N_BOOT = 2000
OUT = Path("benchmarks/results/default_select.json")
REPORT = "benchmarks/results/default_select.md"


def row_deltas(z: np.ndarray, zhat: np.ndarray) -> np.ndarray:
    """Δ_i of the module docstring: z, ẑ [rows, classes] (regression: one column)."""
    z, zhat = np.asarray(z, np.float64), np.asarray(zhat, np.float64)
    if z.shape[1] == 1:
        return (zhat[:, 0] - z[:, 0]) ** 2 / z[:, 0].var()
    lp = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
    lq = zhat - np.logaddexp.reduce(zhat, axis=1, keepdims=True)
    return (np.exp(lp) * (lp - lq)).sum(axis=1)


def boot_ratios(num: dict[str, np.ndarray], den: dict[str, np.ndarray], n: int = N_BOOT, seed: int = 0
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per task [n] resampled mean(num)/mean(den) (rows resampled, one index matrix per task, seeded by
    the task's name so adding a task leaves the others' draws alone), and [n] their geometric mean."""
    per = {}
    for task in sorted(num):
        k = len(num[task])
        idx = np.random.default_rng([seed, *task.encode()]).integers(0, k, (n, k))
        per[task] = num[task][idx].mean(axis=1) / den[task][idx].mean(axis=1)
    return per, np.exp(np.mean([np.log(v) for v in per.values()], axis=0))


def decide(pooled: dict[int, tuple[float, float]], tasks: dict[int, dict[str, tuple[float, float]]],
           all_tasks: list[str]) -> tuple[bool | None, str]:
    """The module docstring's rule on ratio intervals (kfac_seq / kfac): True (switch), False (keep
    kfac), None (not every task measured yet), with the reason."""
    have = sorted({t for per in tasks.values() for t in per})
    if sorted(all_tasks) != have:
        return None, f"undecided: {len(have)} of {len(all_tasks)} tasks measured ({', '.join(have) or 'none'})"
    for p in LOW:
        if pooled[p][1] >= 1:
            return False, f"keep kfac: at p = {p / 100} the pooled ratio's interval reaches 1 ({pooled[p][1]:.3f})"
        worse = [t for t, (lo, _) in tasks[p].items() if lo > 1]
        if worse:
            return False, f"keep kfac: at p = {p / 100} kfac_seq is worse beyond the interval on {', '.join(worse)}"
    if pooled[50][0] > 1:
        return False, f"keep kfac: at p = 0.5 kfac_seq is worse beyond the interval (pooled ratio ≥ {pooled[50][0]:.3f})"
    return True, "switch to kfac_seq: pooled ratio interval below 1 at every p <= 0.3, no task worse beyond its interval"


def held_rows(train: list[dict], calibration: int, n: int, seed: int = 1) -> list[int]:
    """Indices of `n` seeded training rows outside kfac_seq's calibration subset (fisvd.data.subset)."""
    from fisvd.data import SLICE_SEED
    used = set(random.Random(SLICE_SEED).sample(range(len(train)), calibration)) if calibration < len(train) else set(range(len(train)))
    free = [i for i in range(len(train)) if i not in used]
    return sorted(random.Random(seed).sample(free, min(n, len(free))))


def measure(task: str, rows: int) -> dict:
    """Per-row Δ of both methods at every budget on `task`'s seed-42 grid model (module docstring)."""
    from fisvd.cells import Swapped
    from fisvd.data import batches, by_length, calibration_rows, collate, load_prepared, tokenize, training_slice
    from fisvd.models import compressible_linears, load_classifier, load_tokenizer, pick_device
    from fisvd.params import load_params
    from fisvd.sequential import build_factors
    from fisvd.stats import load_statistics

    run = Path("grid") / task / "s42"
    data = run / "data"
    params = load_params(run / "params.yaml")
    meta, splits = load_prepared(data / "prepared")
    if "calibration" in splits:
        raise SystemExit(f"{run}: data.calibration_rows > 0; this script assumes kfac_seq calibrates on train")
    device, L = pick_device(), params.finetune.max_length
    tok = load_tokenizer(str(data / "model"))
    model = load_classifier(str(data / "model"), meta["num_labels"]).float().eval().to(device)
    infos = compressible_linears(model)
    stats = load_statistics({"fisher", "cov_x", "cov_g"}, {m.name: m.shape for m in infos},
                            data / "fisher.safetensors", data / "stats.safetensors")
    full = {m.name: min(m.shape) for m in infos}
    train = splits["train"]
    sopts = params.compress.opts("kfac_seq")
    idx = held_rows(train, sopts.examples, rows)
    feats = tokenize(tok, [train[i] for i in idx], L)
    order = by_length(feats)
    held = list(batches([feats[i] for i in order], 32, collate(tok)))

    def outputs(factor_map) -> np.ndarray:
        out = []
        with Swapped(model, factor_map) as cm, torch.no_grad():
            for b in held:
                b = {k: v.to(device) for k, v in b.items() if k != "labels"}
                out.append(cm(**b).logits.float().cpu())
        return torch.cat(out).numpy()

    calib = []

    def calibration():
        if not calib:
            calib.extend(training_slice(calibration_rows(splits), sopts.examples, tok, L))
        return calib

    t_start = time.perf_counter()
    dense = outputs({})
    rec = {"task": task, "rows": len(idx), "calibration_rows": sopts.examples, "date": time.strftime("%Y-%m-%d"),
           "seconds": {}, "delta": {}, "agree": {}}
    for p in BUDGETS:
        cell = {f: json.loads((run / "results" / f / f"max_fi-p{p}.json").read_text()) for f in METHODS}
        if cell["kfac"]["ranks"] != cell["kfac_seq"]["ranks"]:
            raise SystemExit(f"{run}: kfac and kfac_seq cells at p{p} hold different ranks")
        ranks = {n: r for n, r in cell["kfac"]["ranks"].items() if r < full[n]}
        for f in METHODS:
            t = {}
            t0 = time.perf_counter()
            low = build_factors(f, model, stats, ranks, params.compress.opts(f), calibration, device, timing=t)
            z = outputs(low)
            rec["seconds"].setdefault(f, {})[str(p)] = round(time.perf_counter() - t0, 1)
            rec["delta"].setdefault(f, {})[str(p)] = [float(f"{d:.6g}") for d in row_deltas(dense, z)]
            if dense.shape[1] > 1:
                rec["agree"].setdefault(f, {})[str(p)] = float((z.argmax(1) == dense.argmax(1)).mean())
            print(f"  {task} p = {p / 100}: {f} mean Δ {np.mean(rec['delta'][f][str(p)]):.4g} "
                  f"({rec['seconds'][f][str(p)]} s)", flush=True)
    rec["total_s"] = round(time.perf_counter() - t_start, 1)
    return rec


def render(results: dict, all_tasks: list[str]) -> None:
    tasks = [t for t in all_tasks if t in results]
    print("Which factorisation is the default: kfac vs kfac_seq at the grid's max_fi ranks, scored on held-out "
          "TRAINING rows (module docstring of benchmarks/default_select.py; dev never read)\n")
    for t in tasks:
        r = results[t]
        print(f"- {t}: {r['rows']} training rows outside kfac_seq's {r['calibration_rows']} calibration rows"
              + (f"; measured {r['date']}, {r['total_s']} s" if "date" in r else ""))
    print("\nmean Δ (KL of logits vs dense; STS-B: squared error / Var of the dense outputs); ratio = kfac_seq / "
          "kfac [95 % bootstrap over rows]; agreement = rows whose class is the dense model's; "
          "s = seconds to build the factors and score the rows (kfac: one decomposition per matrix, kfac_seq: the "
          "sequential pass)\n")
    print("| p | task | kfac Δ | kfac_seq Δ | ratio [95 %] | agreement kfac / kfac_seq | s kfac / kfac_seq |")
    print("|---|---|---|---|---|---|---|")
    pooled_iv, task_iv = {}, {}
    for p in BUDGETS:
        d = {f: {t: np.asarray(results[t]["delta"][f][str(p)]) for t in tasks} for f in METHODS}
        per, pooled = boot_ratios(d["kfac_seq"], d["kfac"])
        task_iv[p] = {t: interval(per[t]) for t in tasks}
        for t in tasks:
            a, b = d["kfac"][t].mean(), d["kfac_seq"][t].mean()
            lo, hi = task_iv[p][t]
            ag = results[t]["agree"]
            agree = f"{ag['kfac'][str(p)]:.3f} / {ag['kfac_seq'][str(p)]:.3f}" if ag else "—"
            sec = results[t]["seconds"]
            print(f"| {p / 100} | {t} | {a:.4g} | {b:.4g} | {b / a:.3f} [{lo:.3f}, {hi:.3f}] | {agree} | "
                  f"{sec['kfac'][str(p)]} / {sec['kfac_seq'][str(p)]} |")
        if tasks:
            point = float(np.exp(np.mean([np.log(d['kfac_seq'][t].mean() / d['kfac'][t].mean()) for t in tasks])))
            pooled_iv[p] = interval(pooled)
            print(f"| {p / 100} | **pooled** (geo-mean) | | | **{point:.3f}** [{pooled_iv[p][0]:.3f}, "
                  f"{pooled_iv[p][1]:.3f}] | | |")
    verdict, why = decide(pooled_iv, task_iv, all_tasks)
    print(f"\ndecision: {why}")


def main():
    from fisvd.params import load_params
    from fisvd.results import recorded
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", help="comma-separated grid tasks to (re)measure; default: those with a model not in the JSON")
    ap.add_argument("--rows", type=int, default=512, help="held-out training rows per task")
    ap.add_argument("--render", action="store_true", help="only re-render the Markdown report from the JSON")
    a = ap.parse_args()
    all_tasks = load_params("params.yaml").grid.tasks
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    if not a.render:
        todo = a.tasks.split(",") if a.tasks else [t for t in all_tasks if t not in results]
        for t in todo:
            if not (Path("grid") / t / "s42" / "data" / "model").is_dir():
                print(f"{t}: grid/{t}/s42/data/model missing (run `python -m fisvd.grid --repro grid/{t}/s42`): skipped")
                continue
            torch.manual_seed(0)
            results[t] = measure(t, a.rows)
            OUT.write_text(json.dumps(results) + "\n")
    with recorded(REPORT):
        render(results, all_tasks)


if __name__ == "__main__":
    main()
