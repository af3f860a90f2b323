"""The grid report's statistics: bootstrap intervals, paired wins, cell formatting (the tables
themselves: fisvd.tables).

Intervals: 95 % percentile bootstrap over dev examples (1000 resamples, seeded), vectorised: one
index matrix per dev split, shared by every cell of a task, so two cells' resampled scores are
paired and `paired_win(a, b)` (the 2.5 % quantile of score_a − score_b over the same resamples > 0)
says whether a beats b beyond resampling noise. With several seeds (fine-tune seeds; recovered
cells: fine-tune × recovery seeds) a cell's score is the mean over its seeds, and each bootstrap
replicate also resamples the seeds: it draws k of the cell's k seeds with replacement (a seeded
draw shared by every cell with k seeds, so paired cells draw the same seeds) and averages their
scores on that replicate's dev examples. The interval then covers seed and dev-example variation
together (a two-level bootstrap); with one seed it is the dev-example bootstrap.

Task score (fisvd.metrics): CoLA MCC; MRPC, QQP mean(F1, acc); STS-B mean(Pearson, Spearman);
MNLI mean(acc m, acc mm); others accuracy; ×100. Groups (the GLUE paper's): NLI = MNLI, QNLI, RTE,
WNLI; similarity and paraphrase = MRPC, STS-B, QQP; single sentence = CoLA, SST-2.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .metrics import Scoring, scoring

GROUPS = {"NLI": ("mnli", "qnli", "rte", "wnli"), "similarity": ("mrpc", "stsb", "qqp"),
          "single-sentence": ("cola", "sst2")}
N_BOOT, LEVEL = 1000, 0.95


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(1, keepdims=True)
    y = y - y.mean(1, keepdims=True)
    den = np.sqrt((x * x).sum(1) * (y * y).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x * y).sum(1) / den
    return np.where(den > 0, r, 0.0)


def _binary_rows(p: np.ndarray, y: np.ndarray):
    tp = ((p == 1) & (y == 1)).sum(1).astype(float)
    fp = ((p == 1) & (y == 0)).sum(1).astype(float)
    fn = ((p == 0) & (y == 1)).sum(1).astype(float)
    tn = ((p == 0) & (y == 0)).sum(1).astype(float)
    return tp, fp, fn, tn


def _metric_rows(name: str, p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One metric (fisvd.metrics.metric) of each row of p against the same row of y."""
    if name == "pearson":
        return _pearson_rows(p, y)
    if name == "spearman":
        return _pearson_rows(rankdata(p, axis=1), rankdata(y, axis=1))
    if name == "accuracy":
        return (p == y).mean(1)
    classes = np.unique(np.concatenate([np.unique(p), np.unique(y)]))
    if name == "mcc" and set(classes.tolist()) <= {0, 1}:
        tp, fp, fn, tn = _binary_rows(p, y)
        den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        with np.errstate(invalid="ignore", divide="ignore"):
            mcc = (tp * tn - fp * fn) / den
        return np.where(den > 0, mcc, 0.0)
    if name == "mcc":       # multiclass (Gorodkin's R_K, sklearn's): from per-class counts of each row
        s = float(p.shape[1])
        c = (p == y).sum(1).astype(float)
        pk = np.stack([(p == k).sum(1) for k in classes], 1).astype(float)
        tk = np.stack([(y == k).sum(1) for k in classes], 1).astype(float)
        den = np.sqrt((s * s - (pk * pk).sum(1)) * (s * s - (tk * tk).sum(1)))
        with np.errstate(invalid="ignore", divide="ignore"):
            mcc = (c * s - (pk * tk).sum(1)) / den
        return np.where(den > 0, mcc, 0.0)
    if name in ("f1", "f1_macro"):
        f1s, present = [], []
        for k in ([1] if name == "f1" else classes):
            tp = ((p == k) & (y == k)).sum(1).astype(float)
            fp = ((p == k) & (y != k)).sum(1).astype(float)
            fn = ((p != k) & (y == k)).sum(1).astype(float)
            with np.errstate(invalid="ignore", divide="ignore"):
                f1s.append(np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0))
            present.append(2 * tp + fp + fn > 0)
        if name == "f1":
            return f1s[0]
        # sklearn's macro F1 averages over the classes present in this row's labels or predictions
        return np.sum(f1s, axis=0) / np.maximum(np.sum(present, axis=0), 1)
    raise ValueError(f"unknown metric {name!r}")


def split_scores(task: "str | Scoring", p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Score ×100 of each row of p against the same row of y ([B, N] arrays): the task's metric(s),
    vectorised (the same definitions as fisvd.metrics.glue_metrics; MNLI: this split's accuracy)."""
    vals = [_metric_rows(name, p, y) for name in scoring(task).metrics]
    return 100.0 * vals[0] if len(vals) == 1 else 50.0 * (vals[0] + vals[1])


def resample_indices(sizes: dict[str, int], n: int = N_BOOT, seed: int = 0) -> dict[str, np.ndarray]:
    """One [n, size] index matrix per dev split (with replacement), seeded."""
    rng = np.random.default_rng(seed)
    return {s: rng.integers(0, k, (n, k)) for s, k in sorted(sizes.items())}


def seed_draws(n: int, k: int, seed: int = 1) -> np.ndarray:
    """[n, k] seed indices drawn with replacement, one row per bootstrap replicate (seeded by n, k)."""
    return np.random.default_rng([seed, n, k]).integers(0, k, (n, k))


def seed_boots(task: str, preds: list[dict[str, np.ndarray]], labels: dict[str, np.ndarray],
               idx: dict[str, np.ndarray]) -> np.ndarray:
    """[k, n]: per seed (`preds`: one {split: predictions} per seed), the task score (MNLI: mean over
    its splits) on each replicate's resampled examples."""
    per_seed = []
    for pr in preds:
        parts = [split_scores(task, np.asarray(pr[s])[idx[s]], np.asarray(labels[s])[idx[s]]) for s in idx]
        per_seed.append(np.mean(parts, axis=0))
    return np.asarray(per_seed)


def over_seeds(per_seed: np.ndarray, resample_seeds: bool = True) -> np.ndarray:
    """[n] from [k, n]: per replicate the mean over k seeds drawn with replacement (`seed_draws`, the
    same draws for every cell with k seeds: paired comparisons stay paired); `resample_seeds=False`:
    over every seed once."""
    k, n = per_seed.shape
    if k == 1 or not resample_seeds:
        return per_seed.mean(axis=0)
    return per_seed[seed_draws(n, k), np.arange(n)[:, None]].mean(axis=1)


def boot_scores(task: str, preds: list[dict[str, np.ndarray]], labels: dict[str, np.ndarray],
                idx: dict[str, np.ndarray], resample_seeds: bool = True) -> np.ndarray:
    """[n] resampled task scores of a cell: two-level bootstrap, dev examples (`idx`) and seeds."""
    return over_seeds(seed_boots(task, preds, labels, idx), resample_seeds)


def bootstrap_ci(task: "str | Scoring", per_split: dict[str, tuple[np.ndarray, np.ndarray]], n: int = N_BOOT,
                 seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """Percentile-bootstrap interval of one model's task score over dev examples (`per_split`:
    {split: (predictions, labels)}): `n` seeded resamples of each split, as the grid resamples."""
    idx = resample_indices({s: len(y) for s, (_, y) in per_split.items()}, n, seed)
    boot = boot_scores(task, [{s: np.asarray(p) for s, (p, _) in per_split.items()}],
                       {s: np.asarray(y) for s, (_, y) in per_split.items()}, idx)
    return interval(boot, level)


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_win(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> bool:
    """a beats b beyond resampling noise: the lower (1-level)/2 quantile of a − b (paired) is > 0."""
    return bool(np.quantile(a - b, (1 - level) / 2) > 0)


def group_of(task: str) -> str:
    """The GLUE paper's group of a task; "custom" for a task of data.custom."""
    return next((g for g, ts in GROUPS.items() if task in ts), "custom")


def fmt(score: float | None, half: float | None = None, collapsed: bool = False, win: bool = False,
        floor: bool = False) -> str:
    """A table cell: score ± half interval, † collapsed, ° no better than constant (its interval
    reaches the constant predictor's score), ‡ beats every other row of its column."""
    if score is None or score != score:
        return "–"
    s = f"{score:.1f}"
    if half is not None:
        s += f" ± {half:.1f}"
    return s + (" †" if collapsed else "") + (" °" if floor and not collapsed else "") + (" ‡" if win else "")
