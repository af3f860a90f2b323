"""The grid report's contents, from already-loaded grid results (stages/report.py reads and writes):
- `rows_from_results`: one tidy row per cell and per task's dense model (task, model, allocation,
  factorisation, budget, kept_ratio, total_params, recovery_epochs, score, 95 % bootstrap interval,
  % of dense, margin kept over the constant predictor, every task metric, collapsed, seeds; scores and
  metrics averaged over seeds) and each row's bootstrap samples (fisvd.report);
- `markdown`: tables.md: first an overview per headline budget (`grid.headline` and every recovered
  budget, before and after recovery: `overview`), then per budget, without and with recovery, the
  full table (`table`): rows = methods, columns = per-task score ± half interval, NLI / similarity /
  single-sentence averages, overall average, params (M); † collapsed, ‡ beats every other compressed
  row of its column beyond resampling noise (paired bootstrap, fisvd.report.paired_win);
- `summarise`: summary.json: best method per budget, its average and margin kept
  (avg − constant avg) / (dense avg − constant avg) (fisvd.metrics.margin_kept), the FWSVD baselines;
- `pareto`: pareto.json records and png/pareto_<task>.png (matplotlib): score vs total params, a
  line per allocation, dashes per factorisation;
- `collect`: the grid's result records from disk (every expected file; --partial: those present);
  `paired`: one method against another per task and pooled, on the seeds both ran (`against`,
  `standing` and benchmarks/extreme_budgets.py);
- `standing`: standing.md: the default on each task alone: its rank, the best other method, the paired
  difference.
A method's average columns appear only where all of the report's tasks have it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .grid import cell_result, cells, out_of_date, recover_cells, recover_result, run_dir
from .metrics import Scoring, margin_kept
from .paths import KD     # a recovery with the dense model as teacher: `kfac+kd`
from .report import GROUPS, fmt, interval, over_seeds, paired_win, resample_indices, seed_boots

BASELINES = [("uniform_rank", "fwsvd"), ("fi_retention", "fwsvd"), ("max_fi", "fwsvd"), ("uniform_rank", "tfwsvd")]
TOP = 3                  # the overview's best methods by average, besides the baselines


def shown_budgets(df: pd.DataFrame, shown: tuple[int, ...] = (), budgets: list[int] | None = None) -> list[tuple[int, int]]:
    """(percent, recovery epochs) pairs a summary table shows, in order: without recovery every percent
    in `shown` (`grid.headline`) and every recovered one, highest first (only those in `budgets` when
    given; none of them there: every one of `budgets`), then for each recovery (fewest epochs first)
    the percents recovered with it, highest first."""
    pct = lambda d: {int(round(b * 100)) for b in d.budget}                       # noqa: E731
    rec = df[df.recovery_epochs > 0]
    after = [(b, int(e)) for e, d in sorted(rec.groupby("recovery_epochs")) for b in sorted(pct(d), reverse=True)]
    plain = {*shown, *pct(rec)} & set(budgets) if budgets is not None else {*shown, *pct(rec)}
    plain = sorted(plain or (budgets or ()), reverse=True)
    return [(b, 0) for b in plain] + after


def recovery_label(epochs: int, factorisation: str = "") -> str:
    """'none', or '1 epoch' / 'N epochs', with ', teacher' for a recovery with the dense model as teacher."""
    if not epochs:
        return "none"
    return f"{epochs} epoch" + ("s" if epochs > 1 else "") + (", teacher" if factorisation.endswith(KD) else "")


def method_label(allocation: str, factorisation: str) -> str:
    """'allocation + factorisation', with ', teacher' for a teacher recovery (its factorisation ends in KD)."""
    return f"{allocation} + {factorisation.removesuffix(KD)}" + (", teacher" if factorisation.endswith(KD) else "")


def rows_from_results(dense: dict[str, list[dict]], cells: dict[str, dict[tuple, list[dict]]],
                      recovered: dict[str, dict[tuple, list[dict]]], epochs: int,
                      model: str, per_seed: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """(tidy DataFrame, {(task, allocation, factorisation, budget, recovery_epochs): bootstrap samples}).
    `dense`: {task: [dense.json record per seed]} (tasks in report order; labels and the constant
    score from the first); `cells` / `recovered`: {task: {(allocation, factorisation, budget): [record
    per seed]}} (empty lists skipped); `epochs`: the recovered cells' recovery epochs. `per_seed`, when
    given, is filled with {same key: {seed: (score, bootstrap samples of that seed alone)}} (`against`)."""
    rows, boots = [], {}
    for task, d_recs in dense.items():
        first = d_recs[0]
        sc = Scoring(task, tuple(first["scoring"]["metrics"]), first["scoring"]["regression"]) \
            if "scoring" in first else task
        labels = {s: np.asarray(v) for s, v in first["labels"].items()}
        idx = resample_indices({s: len(v) for s, v in labels.items()})
        const = first["constant_score"]
        d_score = float(np.mean([d["score"] for d in d_recs]))
        d_of = {d.get("seed"): d["score"] for d in d_recs}      # a cell on fewer seeds: dense on the same ones
        groups = [(("dense", "dense", 100), 0, d_recs)]
        groups += [(k, 0, recs) for k, recs in cells.get(task, {}).items()]
        groups += [(k, epochs, recs) for k, recs in recovered.get(task, {}).items()]
        for (alloc, fact, budget), ep, recs in groups:
            if not recs:
                continue
            sb = seed_boots(sc, [{s: np.asarray(v) for s, v in r["predictions"].items()} for r in recs], labels, idx)
            b = over_seeds(sb)
            if per_seed is not None:
                per_seed[(task, alloc, fact, budget, ep)] = {(r.get("seed"), r.get("recovery_seed")): (r["score"], sb[i])
                                                             for i, r in enumerate(recs)}
            score = float(np.mean([r["score"] for r in recs]))
            seeds = {r.get("seed") for r in recs}
            ref = float(np.mean([d_of[s] for s in seeds])) if seeds <= set(d_of) and None not in seeds else d_score
            lo, hi = interval(b)
            metrics = {k: float(np.mean([r["metrics"][k] for r in recs])) for k in recs[0]["metrics"]}
            rows.append({"task": task, "model": model, "allocation": alloc, "factorisation": fact,
                         "no_better_than_constant": bool(lo <= const),
                         "budget": budget / 100, "kept_ratio": float(np.mean([r.get("kept_ratio", 1.0) for r in recs])),
                         "total_params": int(np.mean([r["total_params"] for r in recs])), "recovery_epochs": ep,
                         "score": round(score, 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4),
                         "dense_score": round(ref, 4),          # the dense model on the same seeds
                         "pct_of_dense": round(100 * score / ref, 2) if ref > 0 else None,
                         "margin_kept": None if (mk := margin_kept(score, ref, const)) is None else round(mk, 4),
                         **{k: round(v, 6) for k, v in metrics.items()},
                         "collapsed": any(r["collapsed"] for r in recs), "constant_score": const, "seeds": len(recs)})
            boots[(task, alloc, fact, budget, ep)] = b
    return pd.DataFrame(rows), boots


def table(df: pd.DataFrame, boots: dict, budget: int, epochs: int, tasks: list[str]) -> list[str]:
    """Markdown lines of the full table of one budget (percent) and recovery: dense and every method."""
    sel = df[((df.budget == budget / 100) & (df.recovery_epochs == epochs)) | (df.allocation == "dense")]
    methods = [("dense", "dense")] + sorted({(a, f) for a, f in zip(sel.allocation, sel.factorisation)} - {("dense", "dense")},
                                            key=lambda m: (m[1], m[0]))
    groups = [gname for gname, ts in GROUPS.items() if any(t in ts for t in tasks)]
    head = ["method", *tasks, *groups, "avg", "params (M)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def key(m, t):
        a, f = m
        return (t, a, f, 100, 0) if a == "dense" else (t, a, f, budget, epochs)

    full = [m for m in methods if all(key(m, t) in boots for t in tasks)]
    avg_boot = {m: np.mean([boots[key(m, t)] for t in tasks], axis=0) for m in full}

    def winner(column: dict) -> tuple | None:
        """The row beating every other compressed row of the column beyond noise (dense excluded)."""
        comp = {m: b for m, b in column.items() if m[0] != "dense"}
        if len(comp) < 2:
            return None
        best = max(comp, key=lambda m: float(np.mean(comp[m])))
        return best if all(paired_win(comp[best], b) for m, b in comp.items() if m != best) else None

    wins = {t: winner({m: boots[key(m, t)] for m in methods if key(m, t) in boots}) for t in tasks}
    wins["avg"] = winner(avg_boot)
    for m in methods:
        cells_ = []
        params_m = []
        for t in tasks:
            r = sel[(sel.task == t) & (sel.allocation == m[0]) & (sel.factorisation == m[1])]
            if r.empty:
                cells_.append("–")
                continue
            r = r.iloc[0]
            params_m.append(r.total_params)
            cells_.append(fmt(r.score, (r.ci_high - r.ci_low) / 2, bool(r.collapsed), wins[t] == m,
                              floor=bool(r.ci_low <= r.constant_score)))
        for gname in groups:
            ts = [t for t in tasks if t in GROUPS[gname]]
            if m in avg_boot:
                vals = sel[(sel.allocation == m[0]) & (sel.factorisation == m[1]) & sel.task.isin(ts)].score
                cells_.append(fmt(float(vals.mean())))
            else:
                cells_.append("–")
        if m in avg_boot:
            vals = sel[(sel.allocation == m[0]) & (sel.factorisation == m[1])].score
            lo, hi = interval(avg_boot[m])
            cells_.append(fmt(float(vals.mean()), (hi - lo) / 2, False, wins["avg"] == m))
        else:
            cells_.append("–")
        cells_.append(f"{np.mean(params_m) / 1e6:.2f}" if params_m else "–")
        name = "dense" if m[0] == "dense" else f"{m[0]} + {m[1]}"
        lines.append("| " + " | ".join([name, *cells_]) + " |")
    return lines


def noisy_denominator(boots: dict, tasks: list[str], c_avg: float) -> bool:
    """True when the pooled margin's denominator (dense − constant average) is noise: the constant
    average lies inside the dense average's 95 % interval. Such margins get "~"."""
    d_lo, _ = interval(np.mean([boots[(t, "dense", "dense", 100, 0)] for t in tasks], axis=0))
    return bool(d_lo <= c_avg)


def overview(df: pd.DataFrame, boots: dict, budget: int, epochs: int, tasks: list[str]) -> list[str]:
    """Compact table: rows = dense, the FWSVD baselines, the TOP methods by average (no recovery) or
    every recovered method (with recovery, and its average before recovery); only methods on every task."""
    b = budget / 100
    comp = df[(df.allocation != "dense") & (df.budget == b)]
    sel = comp[comp.recovery_epochs == epochs]
    full = [m for m, g in sel.groupby(["allocation", "factorisation"]) if set(g.task) >= set(tasks)]
    avg = {m: float(sel[(sel.allocation == m[0]) & (sel.factorisation == m[1])].score.mean()) for m in full}
    if epochs:
        rows = sorted(full, key=lambda m: -avg[m])
    else:
        rows = [m for m in BASELINES if m in avg]
        rows += [m for m in sorted(avg, key=lambda m: -avg[m]) if m not in rows][:TOP]
    head = ["method", *tasks, "avg", "% of dense", "margin kept", "params (M)"] + (["avg before recovery"] if epochs else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    dense = df[df.allocation == "dense"].set_index("task")
    d_avg, c_avg = dense.loc[tasks].score.mean(), dense.loc[tasks].constant_score.mean()
    # the pooled margin's denominator (dense − constant average) is noise when the constant average lies
    # inside the dense average's interval: such margins get "~"
    noisy = " ~" if noisy_denominator(boots, tasks, c_avg) else ""
    floor = lambda r, t: bool(r.ci_low[t] <= r.constant_score[t])  # noqa: E731
    lines.append("| " + " | ".join(["dense", *(fmt(dense.score[t], floor=floor(dense, t)) for t in tasks),
                                    fmt(d_avg), "100.0", "1.00" + noisy,
                                    f"{dense.loc[tasks].total_params.mean() / 1e6:.2f}"] + ([""] if epochs else [])) + " |")
    for m in rows:
        r = sel[(sel.allocation == m[0]) & (sel.factorisation == m[1])].set_index("task").loc[tasks]
        lo, hi = interval(np.mean([boots[(t, m[0], m[1], budget, epochs)] for t in tasks], axis=0))
        cells_ = [fmt(r.score[t], collapsed=bool(r.collapsed[t]), floor=floor(r, t)) for t in tasks]
        cells_ += [fmt(avg[m], (hi - lo) / 2), f"{r.pct_of_dense.mean():.1f}",
                   "–" if (mk := margin_kept(avg[m], r.dense_score.mean(), c_avg)) is None else f"{mk:.2f}{noisy}",
                   f"{r.total_params.mean() / 1e6:.2f}"]
        if epochs:
            before = comp[(comp.recovery_epochs == 0) & (comp.allocation == m[0])
                          & (comp.factorisation == m[1].removesuffix(KD))]
            cells_.append(fmt(float(before.score.mean())) if set(before.task) >= set(tasks) else "–")
        lines.append("| " + " | ".join([f"{m[0]} + {m[1]}", *cells_]) + " |")
    return lines


def collect(params, root: Path, partial: bool = False) -> tuple[dict, dict, dict, list]:
    """(dense, cells, recovered, counts) for rows_from_results from the grid results under `root`
    (fisvd.grid enumerates the expected files from `params`; nothing is globbed). partial: only the
    files present and current: a result whose stage `dvc status` finds out of date (an older
    configuration's, or downstream of one) or that a running `dvc repro` holds is left out
    (fisvd.grid.out_of_date). counts: [records read, files expected, present but left out as out of
    date, as being computed]. A task without a dense result is left out."""
    g, counts, dense, cells_, recovered = params.grid, [0, 0, 0, 0], {}, {}, {}
    stale, busy = out_of_date([run_dir(t, s, g.folder) for t in g.tasks for s in g.seeds], root.resolve()) \
        if partial else (set(), set())

    def read(paths: dict) -> list[dict]:
        there = [p for p in paths.values() if not partial or (root / p).exists()]
        recs = [json.loads((root / p).read_text()) for p in there if p not in stale | busy]
        counts[0], counts[1] = counts[0] + len(recs), counts[1] + len(paths)
        counts[2] += sum(p in stale for p in there)
        counts[3] += sum(p in busy for p in there)
        return recs

    for task in g.tasks:
        by_cell, by_rec = {}, {}
        for c in cells(params, task=task):
            by_cell.setdefault((c.allocation, c.factorisation, c.budget), {})[c.seed] = cell_result(c)
        for c in recover_cells(params, task=task):       # fine-tune seeds × recovery seeds, averaged
            by_rec.setdefault((c.allocation, c.label, c.budget), {})[(c.cell.seed, c.seed)] = recover_result(c)
        if not (recs := read({s: f"{run_dir(task, s, g.folder)}/results/dense.json" for s in g.seeds})):
            counts[1] += sum(map(len, [*by_cell.values(), *by_rec.values()]))
            continue
        dense[task] = recs
        cells_[task] = {k: read(paths) for k, paths in by_cell.items()}
        recovered[task] = {k: read(paths) for k, paths in by_rec.items()}
    return dense, cells_, recovered, counts


def paired(per_seed: dict, tasks: list[str], a: tuple, b: tuple) -> tuple[dict, dict]:
    """Method a against method b, each a (allocation, factorisation, budget %, recovery epochs) key of
    `per_seed` (rows_from_results), on the seeds both ran per task: ({task: {a, b, diff, low, high,
    seeds}}, the same for the task average); [low, high]: the paired 95 % interval (the same resampled
    dev examples and seed draws for both). A task where they share no seed gets NaNs."""
    per, a_pt, b_pt, a_rep, b_rep = {}, [], [], [], []
    for t in tasks:
        ra, rb = per_seed.get((t, *a), {}), per_seed.get((t, *b), {})
        common = sorted(set(ra) & set(rb), key=str)
        if not common:
            per[t] = {"a": np.nan, "b": np.nan, "diff": np.nan, "low": np.nan, "high": np.nan, "seeds": 0}
            a_pt.append(np.nan), b_pt.append(np.nan)
            continue
        pa, pb = (float(np.mean([r[s][0] for s in common])) for r in (ra, rb))
        xa, xb = (over_seeds(np.stack([r[s][1] for s in common])) for r in (ra, rb))
        lo, hi = interval(xa - xb)
        per[t] = {"a": pa, "b": pb, "diff": pa - pb, "low": lo, "high": hi, "seeds": len(common)}
        a_pt.append(pa), b_pt.append(pb), a_rep.append(xa), b_rep.append(xb)
    ok = len(a_rep) == len(tasks)
    lo, hi = interval(np.mean(a_rep, axis=0) - np.mean(b_rep, axis=0)) if ok else (np.nan, np.nan)
    pooled = {"a": float(np.mean(a_pt)), "b": float(np.mean(b_pt)), "diff": float(np.mean(a_pt) - np.mean(b_pt)),
              "low": lo, "high": hi, "seeds": min(v["seeds"] for v in per.values())}
    return per, pooled


def against(df: pd.DataFrame, boots: dict, per_seed: dict, tasks: list[str], default: tuple[str, str]) -> pd.DataFrame:
    """vs_default.csv: per budget and recovery, every method run on every task against `default`
    (allocation, factorisation) at the same budget and recovery: the difference of the task averages on
    the seeds both ran (per task; a record's seed is its (fine-tune seed, recovery seed)), with its paired 95 % interval (the same resampled dev examples and
    seed draws for both; verdict `better` / `worse` when the interval excludes 0), and each method's
    pooled margin kept (avg − constant avg) / (dense avg − constant avg) on all its seeds, the dense
    model on the same fine-tune seeds (as the overview computes it), with a 95 % interval from the
    same replicates (dense resampled alike)."""
    dense = df[df.allocation == "dense"].set_index("task")
    c_avg = float(dense.loc[tasks].constant_score.mean())

    def dense_on(t: str, keys) -> tuple[float, np.ndarray]:   # the dense model on the fine-tune seeds of `keys`
        d = per_seed[(t, "dense", "dense", 100, 0)]
        mine = [k for k in d if k[0] in {s for s, _ in keys}] or list(d)
        return float(np.mean([d[k][0] for k in mine])), over_seeds(np.stack([d[k][1] for k in mine]))

    rows = []
    comp = df[df.allocation != "dense"]
    for (b, ep), sel in comp.groupby(["budget", "recovery_epochs"], sort=False):
        pct = int(round(b * 100))
        full = sorted(m for m, g in sel.groupby(["allocation", "factorisation"]) if set(g.task) >= set(tasks))
        if tuple(default) not in full:
            continue
        for m in full:
            _, pair = paired(per_seed, tasks, (*m, pct, ep), (*default, pct, ep))
            avg = float(sel[(sel.allocation == m[0]) & (sel.factorisation == m[1])].score.mean())
            m_rep = np.mean([boots[(t, m[0], m[1], pct, ep)] for t in tasks], axis=0)
            refs = [dense_on(t, per_seed[(t, m[0], m[1], pct, ep)]) for t in tasks]
            d_avg, d_rep = float(np.mean([r[0] for r in refs])), np.mean([r[1] for r in refs], axis=0)
            diff, lo, hi, ks = pair["diff"], pair["low"], pair["high"], [pair["seeds"]]
            mk = margin_kept(avg, d_avg, c_avg)
            with np.errstate(divide="ignore", invalid="ignore"):
                mk_lo, mk_hi = interval((m_rep - c_avg) / (d_rep - c_avg)) if mk is not None else (np.nan, np.nan)
            rows.append({"budget": b, "recovery_epochs": int(ep), "allocation": m[0], "factorisation": m[1],
                         "default": m == tuple(default), "seeds_compared": int(min(ks)), "avg": round(avg, 4),
                         "diff": round(diff, 4), "diff_low": round(lo, 4), "diff_high": round(hi, 4),
                         "verdict": "" if m == tuple(default) or np.isnan(lo)
                         else "better" if lo > 0 else "worse" if hi < 0 else "",
                         "margin_kept": None if mk is None else round(mk, 4),
                         "margin_low": round(mk_lo, 4), "margin_high": round(mk_hi, 4)})
    cols = ["budget", "recovery_epochs", "allocation", "factorisation", "default", "seeds_compared", "avg", "diff",
            "diff_low", "diff_high", "verdict", "margin_kept", "margin_low", "margin_high"]
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["recovery_epochs", "budget", "allocation", "factorisation"],
                           ascending=[True, False, True, True], ignore_index=True)


def against_md(vs: pd.DataFrame, default: tuple[str, str]) -> list[str]:
    """Markdown of `against`: per recovery, a table of methods × budgets, each cell the difference to the
    default [paired 95 % interval] (‡ better, ⁻ worse beyond it) and, below, the pooled margin kept."""
    name = f"{default[0]} + {default[1]}"
    md = [f"## Against the default ({name})", "",
          f"Each cell: the method's task average minus {name}'s at that budget and recovery, on the seeds both "
          "ran (fine-tune seed; recovered: and recovery seed), [paired 95 % interval: the same resampled dev examples and seed draws]; ‡ better, "
          "⁻ worse beyond the interval; then the pooled margin kept [95 % interval] (vs_default.csv).", ""]
    for ep, e in vs.groupby("recovery_epochs"):
        budgets = sorted(e.budget.unique(), reverse=True)
        head = ["method", *(f"p = {b:g}" for b in budgets)]
        title = f"after {ep} epoch(s) of recovery fine-tuning" if ep else "no recovery"
        for what in ("difference", "margin kept"):
            md += [f"### {what.capitalize()}, {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for (a, f), g in e.groupby(["allocation", "factorisation"]):
                g = g.set_index("budget")
                cells_ = []
                for b in budgets:
                    if b not in g.index:
                        cells_.append("–")
                        continue
                    r = g.loc[b]
                    if what == "margin kept":
                        cells_.append("–" if pd.isna(r.margin_kept) else f"{r.margin_kept:.3f} [{r.margin_low:.2f}, {r.margin_high:.2f}]")
                    elif r.default:
                        cells_.append(f"{r.avg:.2f}")
                    elif pd.isna(r.diff_low):                  # no seed in common
                        cells_.append("–")
                    else:
                        mark = {"better": " ‡", "worse": " ⁻"}.get(r.verdict, "")
                        cells_.append(f"{r['diff']:+.2f} [{r.diff_low:+.2f}, {r.diff_high:+.2f}]{mark}")
                md.append("| " + " | ".join([f"{a} + {f}" + (" (default)" if (a, f) == tuple(default) else ""), *cells_]) + " |")
            md.append("")
    return md


def headline(df: pd.DataFrame, boots: dict, vs: pd.DataFrame, tasks: list[str], methods: list[tuple[str, str]],
             default: tuple[str, str], shown: tuple[int, ...] = ()) -> str:
    """headline.md, the report's headline table: each of `methods` (allocation, factorisation; a
    teacher recovery's factorisation ends in KD) at every budget it was recovered at and at the
    percents `shown` (`grid.headline`) the grid ran (none of either: every budget), before recovery (a
    teacher run: its plain cell's) and after.
    A cell: % of dense (averaged over the tasks), the pooled margin kept [95 % interval over fine-tune
    seeds, recovery seeds and dev examples together] (`against`), ‡ / ⁻ when its task average beats /
    trails the default's beyond the paired 95 % interval, and how many tasks it left collapsed (†n) or,
    not collapsed, no better than the constant predictor (°n: the interval reaches it). A grid
    without the default (nothing to pair against): one line saying so."""
    if not len(vs):
        return (f"No headline table: the default ({default[0]} + {default[1]}) did not run on every task of this "
                "grid, so nothing is paired against it (tables.md has every result).\n")
    ran = sorted({int(round(b * 100)) for b in vs.budget})
    budgets = [pct / 100 for pct, ep in shown_budgets(vs, shown, ran) if not ep]
    dense = df[df.allocation == "dense"].set_index("task").loc[tasks]
    c_avg = float(dense.constant_score.mean())
    noisy = " ~" if noisy_denominator(boots, tasks, c_avg) else ""
    head = ["method", "recovery", "runs per task", *(f"p = {b:g}" for b in budgets)]
    n_seeds = int(dense.seeds.min())
    md = [f"Dense average {dense.score.mean():.1f} over {', '.join(tasks)} ({n_seeds} fine-tune "
          f"seed{'s' if n_seeds > 1 else ''}), the constant predictor's {c_avg:.1f}. A cell: % of dense · margin kept [95 % interval over seeds "
          f"and dev examples]; against {default[0]} + {default[1]}, the default: ‡ better, ⁻ worse beyond the paired "
          "interval; †n: collapsed on n tasks (in any run), °n: not collapsed but no better than constant on n."
          + (" ~: the dense margin itself is inside its interval (noise)." if noisy else ""), "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for epochs in sorted(vs.recovery_epochs.unique()):
        rows = methods if epochs else [(a, f.removesuffix(KD)) for a, f in methods]   # before recovery: the plain cell
        for m in dict.fromkeys(rows):
            cells_, seeds = [], set()
            for b in budgets:
                v = vs[(vs.budget == b) & (vs.recovery_epochs == epochs) & (vs.allocation == m[0]) & (vs.factorisation == m[1])]
                r = df[(df.budget == b) & (df.recovery_epochs == epochs) & (df.allocation == m[0]) & (df.factorisation == m[1])]
                if not len(v):
                    cells_.append("–")
                    continue
                v = v.iloc[0]
                seeds.add(int(r.seeds.min()))
                mark = "" if v.default else {"better": " ‡", "worse": " ⁻"}.get(v.verdict, "")
                down = [f"†{n}" for n in [int(r.collapsed.sum())] if n] + \
                    [f"°{n}" for n in [int((~r.collapsed & r.no_better_than_constant).sum())] if n]
                margin = "–" if pd.isna(v.margin_kept) else f"{v.margin_kept:.2f}" + (
                    "" if pd.isna(v.margin_low) else f" [{v.margin_low:.2f}, {v.margin_high:.2f}]") + noisy
                cells_.append(f"{r.pct_of_dense.mean():.0f} % · {margin}{mark}" + (" " + " ".join(down) if down else ""))
            if set(cells_) == {"–"}:
                continue
            name = f"{m[0]} + {m[1].removesuffix(KD)}" + (" (default)" if m == tuple(default) else "")
            md.append("| " + " | ".join([name, recovery_label(epochs, m[1]), "/".join(map(str, sorted(seeds))), *cells_]) + " |")
    return "\n".join(md) + "\n"


def standing(df: pd.DataFrame, per_seed: dict, tasks: list[str], default: tuple[str, str],
             shown: tuple[int, ...] = ()) -> str:
    """standing.md: the default on each task alone, at every percent in `shown` (`grid.headline`) and
    every recovered budget without recovery (none of them run: every budget), and at every recovered
    budget after recovery (`shown_budgets`). A row: the dense score and
    the default's (on their seeds), its rank among every method with a result on that task, budget and
    recovery (ranked by score − the dense score on the same seeds, so a method run on fewer seeds is not
    ranked by its seeds' luck; 1 = best), the best other method, and default − best other on the seeds
    both ran [paired 95 % interval over seeds and dev examples, `paired`]: ‡ the default better, ⁻
    worse beyond it. A task, budget or recovery the default has no result at is left out (no result at
    all: one line saying so)."""
    comp = df[df.allocation != "dense"].assign(gap=lambda d: d.score - d.dense_score)
    heads = shown_budgets(comp, shown, sorted({int(round(b * 100)) for b in comp.budget}))
    name = f"{default[0]} + {default[1]}"
    md = [f"The default ({name}) on each task alone: its rank among the methods run on that task at that budget "
          "and recovery (by score less the dense score on the same seeds; 1 = best), the best other method, and the "
          "default less it on the seeds both ran [paired 95 % interval over fine-tune seeds, recovery seeds and dev "
          "examples]; ‡ the default better, ⁻ worse beyond the interval. Scores ×100, averaged over seeds.", "",
          "| task | p | recovery | dense | default | rank | best other | default − best other |",
          "|---|---|---|---|---|---|---|---|"]
    for t in tasks:
        for pct, ep in heads:
            sel = comp[(comp.task == t) & (comp.recovery_epochs == ep) & ((comp.budget * 100).round() == pct)]
            mine = sel[(sel.allocation == default[0]) & (sel.factorisation == default[1])]
            if not len(mine):
                continue
            mine = mine.iloc[0]
            order = sel.sort_values("gap", ascending=False, kind="stable")
            methods = list(zip(order.allocation, order.factorisation))
            others = [m for m in methods if m != tuple(default)]
            rank = methods.index(tuple(default)) + 1
            cell = best = "–"
            if others:
                o = order.iloc[[m != tuple(default) for m in methods]].iloc[0]
                best = f"{method_label(o.allocation, o.factorisation)} {o.score:.1f}"
                per, _ = paired(per_seed, [t], (*default, pct, ep), (o.allocation, o.factorisation, pct, ep))
                r = per[t]
                if r["seeds"]:
                    mark = " ‡" if r["low"] > 0 else " ⁻" if r["high"] < 0 else ""
                    cell = f"{r['diff']:+.1f} [{r['low']:+.1f}, {r['high']:+.1f}]{mark} ({r['seeds']} run{'s' if r['seeds'] > 1 else ''})"
            md.append(f"| {t} | {pct / 100:g} | {recovery_label(ep)} | {mine.dense_score:.1f} | {mine.score:.1f} | "
                      f"{rank} of {len(methods)} | {best} | {cell} |")
    if len(md) == 4:
        return f"No standing table: the default ({name}) has no result in this grid (tables.md has every result).\n"
    return "\n".join(md) + "\n"


def summarise(df: pd.DataFrame, tasks: list[str], vs: pd.DataFrame | None = None) -> dict:
    """summary.json: per budget (and recovery) the best method on every task (the highest average less
    the dense model's on the same seeds), its average and pooled margin kept, the FWSVD baselines' averages and (`vs`: `against`'s frame) the default's
    average and pooled margin kept with its interval."""
    comp = df[df.allocation != "dense"]
    dense = df[df.allocation == "dense"].set_index("task")
    d_avg, c_avg = float(dense.score.mean()), float(dense.constant_score.mean())
    out = {"dense_avg": round(d_avg, 2), "tasks": len(tasks), "cells": int(len(comp))}
    for epochs in sorted(comp.recovery_epochs.unique()):
        for b in sorted(comp[comp.recovery_epochs == epochs].budget.unique(), reverse=True):
            sel = comp[(comp.budget == b) & (comp.recovery_epochs == epochs)]
            avg = sel.groupby(["allocation", "factorisation"]).agg(score=("score", "mean"), n=("task", "count"),
                                                                   ref=("dense_score", "mean"))
            avg = avg[avg.n == len(tasks)]
            if avg.empty:
                continue
            (a, f) = (avg.score - avg.ref).idxmax()   # the smallest gap to dense on the same seeds: a method run
            best = avg.score[(a, f)]                   # on fewer seeds is not ranked by its seeds' luck
            tag = f"p{int(round(b * 100)):02d}" + (f"_ft{epochs}" if epochs else "")
            entry = {"best": f"{a}+{f}", "best_avg": round(float(best), 2),
                     "best_margin_kept": None if (mk := margin_kept(float(best), float(avg.loc[(a, f)].ref), c_avg))
                     is None else round(mk, 3)}
            for ref in (("uniform_rank", "fwsvd"), ("max_fi", "fwsvd"), ("fi_retention", "fwsvd")):
                if ref in avg.index:
                    entry[f"{ref[0]}+{ref[1]}_avg"] = round(float(avg.loc[ref].score), 2)
            d = vs[(vs.budget == b) & (vs.recovery_epochs == epochs) & vs.default] if vs is not None else []
            if len(d):
                r = d.iloc[0]
                entry.update({"default": f"{r.allocation}+{r.factorisation}", "default_avg": round(float(r.avg), 2),
                              "default_margin_kept": None if pd.isna(r.margin_kept) else round(float(r.margin_kept), 3),
                              **{f"default_margin_{k}": None if pd.isna(r[f"margin_{k}"]) else round(float(r[f"margin_{k}"]), 3)
                                 for k in ("low", "high")}})
            out[tag] = entry
    return out


def markdown(df: pd.DataFrame, boots: dict, model: str, tasks: list[str], budgets: list[int], out: str,
             partial: tuple[int, ...] | None = None, grid: str = "grid", vs: pd.DataFrame | None = None,
             default: tuple[str, str] | None = None, headline: tuple[int, ...] = ()) -> str:
    """tables.md. `tasks`, `budgets`: the grid's (tasks without results are left out); `headline`: the
    percents the overview shows without recovery besides every recovered one (`grid.headline`); `out`: the
    output folder as named in the text; `partial`: (result files read, expected[, left out as out
    of date, left out as being computed]) of a partial report;
    `grid`: the grid's folder; `vs`, `default`: `against`'s frame and the default method (a section).
    Neither a `headline` budget nor a recovered one in the grid: the overview shows every budget."""
    present = [t for t in tasks if t in set(df.task)]
    missing = [t for t in tasks if t not in present]
    md = ["# Grid results" + (" (PARTIAL)" if partial else ""), ""]
    if partial:
        stale, busy = (*partial[2:], 0, 0)[:2]
        md += [f"**Partial report**: {partial[0]} of {partial[1]} result files present"
               + (f"; tasks not started: {', '.join(missing)}" if missing else "")
               + (f"; left out: {stale} of an older configuration (their stage is out of date: `dvc status`)"
                  if stale else "") + (f"; {'left out: ' if not stale else ''}{busy} being computed" if busy else "")
               + f". Produced by `cd {grid} && PYTHONPATH=.. python -m stages.report --partial`; averages only "
               "over methods present on every task listed.", ""]
    md += [
          f"Model {model}; tasks {', '.join(present)}; dev scores ×100 ± half the 95 % bootstrap "
          "interval over dev examples; † collapsed (≥ 95 % one class); ° no better than constant (the "
          "interval reaches the constant predictor's score; dense rows too: that task's margins are noise); "
          "~ margin kept whose denominator is noise (the constant average lies inside the dense average's "
          "interval); ‡ beats every other compressed row of its column beyond resampling noise (paired "
          "bootstrap). "
          + ("" if partial else f"Produced by `dvc repro {grid}/dvc.yaml` ")
          + f"({out}/results.csv holds every number).", "",
          "Constant predictor: " + ", ".join(f"{r.task} {r.constant_score:.1f}"
                                             for r in df[df.allocation == "dense"].itertuples()), ""]
    heads = shown_budgets(df, headline, budgets)
    md += ["## Overview", "",
           "Scores ×100 (collapsed †); avg ± half its 95 % bootstrap interval; % of dense: averaged over the "
           "tasks; margin kept: (avg − constant predictor's avg) / (dense avg − constant predictor's avg), the "
           "share of the dense model's lead over the constant predictor that the compressed model keeps "
           "(1 = as good as dense, 0 = no better than constant; per task in results.csv); rows: the FWSVD "
           f"baselines and the {TOP} best methods by average (no recovery), every recovered method (with recovery). "
           "Only methods run on every task. Full tables with intervals per task below.", ""]
    for b, e in heads:
        if df[(df.budget == b / 100) & (df.recovery_epochs == e)].empty:
            continue
        md += [f"### p = {b / 100:g}" + (f", after {e} epoch(s) of recovery fine-tuning" if e else ", no recovery"), ""]
        md += overview(df, boots, b, e, present) + [""]
    if vs is not None and len(vs):
        md += against_md(vs, default)
    for epochs in sorted(df.recovery_epochs.unique()):
        for b in sorted(budgets, reverse=True):
            if df[(df.budget == b / 100) & (df.recovery_epochs == epochs)].empty:
                continue
            md += [f"## p = {b / 100:g}" + (f", after {epochs} epoch(s) of recovery fine-tuning" if epochs else
                                            ", no recovery"), ""]
            md += table(df, boots, b, epochs, present) + [""]
    return "\n".join(md)


def pareto(df: pd.DataFrame, out: Path) -> list[dict]:
    """Writes out/png/pareto_<task>.png (no recovery: score vs total params, a line per method);
    returns pareto.json's records."""
    pts = df[(df.recovery_epochs == 0)]
    recs = [{"task": r.task, "allocation": r.allocation, "factorisation": r.factorisation,
             "method": f"{r.allocation}+{r.factorisation}", "kept_params": int(r.total_params),
             "kept_ratio": r.kept_ratio, "score": r.score, "collapsed": bool(r.collapsed)} for r in pts.itertuples()]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    (out / "png").mkdir(parents=True, exist_ok=True)
    allocs = sorted(set(pts.allocation) - {"dense"})
    facts = sorted(set(pts.factorisation) - {"dense"})
    colors = {a: plt.cm.tab10(i % 10) for i, a in enumerate(allocs)}
    styles = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)), (0, (3, 1, 1, 1))]
    dashes = {f: styles[i % len(styles)] for i, f in enumerate(facts)}     # any number of factorisations
    for task, t in pts.groupby("task"):
        fig, ax = plt.subplots(figsize=(8, 5.5))
        d = t[t.allocation == "dense"].iloc[0]
        ax.axhline(d.score, color="black", lw=1, label=f"dense ({d.score:.1f})")
        ax.axhline(d.constant_score, color="grey", lw=1, ls=":", label=f"constant ({d.constant_score:.1f})")
        for (a, f), s in t[t.allocation != "dense"].groupby(["allocation", "factorisation"]):
            s = s.sort_values("total_params")
            ax.plot(s.total_params / 1e6, s.score, ls=dashes[f], color=colors[a], marker=".", lw=1.2,
                    label=f"{a} + {f}")
        ax.set(xlabel="total params (M)", ylabel="score", title=f"{task}: score vs size (no recovery)")
        ax.legend(fontsize=6, ncol=2, loc="lower right")
        fig.tight_layout()
        fig.savefig(out / "png" / f"pareto_{task}.png", dpi=110, metadata={"Software": None})
        plt.close(fig)
    return recs
