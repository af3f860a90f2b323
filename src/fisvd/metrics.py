"""Dev metrics (methods.md §8) with scikit-learn / scipy, the collapse check and the floors.

A task's `Scoring`: the metric(s) averaged ×100 into its score, whether it is a regression, its dev
splits. Custom tasks (data.custom) pick one or two of METRICS: accuracy, f1 (binary, class id 1),
f1_macro, mcc, pearson, spearman. GLUE (GLUE): CoLA: Matthews corr. SST-2, QNLI, RTE, WNLI, MNLI: accuracy. MRPC, QQP: F1 (positive class 1)
and accuracy. STS-B: Pearson and Spearman. `score` = mean of the pair (MRPC, QQP, STS-B) else the
single metric, ×100. MNLI (`task_metrics`) is scored on both dev splits, matched (`dev`) and
mismatched (`dev_mm`): score = 100 × mean(acc_m, acc_mm), as GLUE averages MNLI-m and MNLI-mm
into one task score.

Collapse: a classifier whose majority predicted class has share ≥ `COLLAPSE_SHARE` (0.95) of the
predictions is flagged `collapsed` — constant and near-constant predictors, e.g. on MRPC dev
(279 positive / 129 negative) a model predicting "paraphrase" everywhere (F1 81.2, acc 68.4) or
"not paraphrase" for all but 12 of 408 pairs (acc ~33, F1 ~5); constant CoLA scores MCC 0. A
regressor (STS-B) is flagged when its prediction std is < 1% of the label std.

Floors: `constant_score` = the best task score a constant predictor gets on the same labels, max
over classes c of score(predict c everywhere) (MRPC dev: 74.8; CoLA: 0; STS-B: 0, the correlation
of a constant is taken as 0). `margin_kept` = (score − const) / (dense − const), the share of the
dense model's margin over that floor that the compressed model keeps (None when dense ≤ const).

Intervals: fisvd.report (`bootstrap_ci`, and the grid's paired resamples), vectorised over these
definitions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from .errors import DataError

COLLAPSE_SHARE = 0.95

METRICS = ("accuracy", "f1", "f1_macro", "mcc", "pearson", "spearman")
MNLI_SPLITS = ("dev", "dev_mm")   # matched, mismatched (fisvd.data.dev_splits("mnli"))


@dataclass(frozen=True)
class Scoring:
    """How a task is scored: `metrics` (one, or two averaged) ×100, on `splits`. GLUE tasks are named
    by their string (GLUE); a custom task (`data.custom`) by its Scoring, which prepare records in
    meta.json (`scoring_of`). Every function here takes either."""
    name: str
    metrics: tuple[str, ...]
    regression: bool = False
    splits: tuple[str, ...] = ("dev",)

    def __str__(self) -> str:
        return self.name


GLUE = {s.name: s for s in [
    Scoring("cola", ("mcc",)), Scoring("sst2", ("accuracy",)), Scoring("mrpc", ("f1", "accuracy")),
    Scoring("stsb", ("pearson", "spearman"), regression=True), Scoring("qqp", ("f1", "accuracy")),
    Scoring("mnli", ("accuracy",), splits=MNLI_SPLITS), Scoring("qnli", ("accuracy",)),
    Scoring("rte", ("accuracy",)), Scoring("wnli", ("accuracy",))]}
PAIRS = {n: s.metrics for n, s in GLUE.items() if len(s.metrics) == 2}


def scoring(task: "str | Scoring") -> Scoring:
    if isinstance(task, Scoring):
        return task
    if task not in GLUE:
        raise DataError(f"unknown task {task!r}: not a GLUE task and no Scoring given")
    return GLUE[task]


def scoring_of(meta: Mapping) -> "str | Scoring":
    """The task of a prepared dataset (prepare's meta.json): its name for a GLUE task, else the
    Scoring meta.json records (`metrics`, `is_regression`)."""
    if meta["task"] in GLUE and "metrics" not in meta:
        return meta["task"]
    return Scoring(meta["task"], tuple(meta["metrics"]), bool(meta["is_regression"]))


def metric(name: str, preds: np.ndarray, labels: np.ndarray) -> float:
    """One metric in [−1, 1] (METRICS): accuracy, f1 (binary, class 1), f1_macro, mcc, pearson,
    spearman (the correlation of a constant prediction is 0). scipy / scikit-learn are imported here,
    not with the module: params validation and `--help` read this module's METRICS and Scoring only."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    if name in ("pearson", "spearman"):
        if np.std(preds) == 0 or np.std(labels) == 0:
            return 0.0
        return float((pearsonr if name == "pearson" else spearmanr)(preds, labels)[0])
    if name == "mcc":
        return float(matthews_corrcoef(labels, preds))
    if name == "f1":
        return float(f1_score(labels, preds, zero_division=0))
    if name == "f1_macro":
        return float(f1_score(labels, preds, average="macro", zero_division=0))
    if name == "accuracy":
        return float(accuracy_score(labels, preds))
    raise ValueError(f"unknown metric {name!r}; one of {', '.join(METRICS)}")


def glue_metrics(task: "str | Scoring", preds: np.ndarray, labels: np.ndarray) -> dict:
    """Metrics for one task on one split; `preds` are class ids (or scores for a regression)."""
    sc = scoring(task)
    preds, labels = np.asarray(preds), np.asarray(labels)
    out = {name: metric(name, preds, labels) for name in sc.metrics}
    out["score"] = 100.0 * float(np.mean([out[k] for k in sc.metrics]))
    out["collapsed"] = is_collapsed(sc, preds, labels)
    return out


def task_metrics(task: "str | Scoring", per_split: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """The task's metrics from {split: (preds, labels)}. Every task but MNLI: glue_metrics on "dev".
    MNLI: {"accuracy": matched, "accuracy_mm": mismatched, "score": 100 × mean of the two (GLUE's
    single MNLI score averages MNLI-m and MNLI-mm), "collapsed": either split collapsed}."""
    sc = scoring(task)
    need = sc.splits
    missing = [s for s in need if s not in per_split]
    if missing:
        raise DataError(f"{task}: no predictions for split(s) {', '.join(missing)} (got "
                        f"{', '.join(per_split) or 'none'}); {task} is scored on {', '.join(need)}")
    if len(need) == 1:
        return glue_metrics(sc, *per_split["dev"])
    m, mm = (glue_metrics(task, *per_split[s]) for s in MNLI_SPLITS)
    return {"accuracy": m["accuracy"], "accuracy_mm": mm["accuracy"],
            "score": 100.0 * (m["accuracy"] + mm["accuracy"]) / 2,
            "collapsed": m["collapsed"] or mm["collapsed"]}


def is_collapsed(task: "str | Scoring", preds: np.ndarray, labels: np.ndarray) -> bool:
    """Classifier: majority predicted class share ≥ COLLAPSE_SHARE. Regressor: std(preds) <
    1% of std(labels)."""
    preds = np.asarray(preds)
    if scoring(task).regression:
        return bool(np.std(preds) < 0.01 * max(np.std(labels), 1e-12))
    _, counts = np.unique(preds, return_counts=True)
    return bool(counts.max() / len(preds) >= COLLAPSE_SHARE)


def constant_score(task: "str | Scoring", labels) -> float:
    """Task score of the best constant predictor: max over classes c (the classes in `labels`) of
    the score of predicting c everywhere; 0 for STS-B. `labels` is one split's labels, or
    {split: labels} (MNLI: dev and dev_mm, the same c on both, scored by task_metrics)."""
    per = {s: np.asarray(y) for s, y in labels.items()} if isinstance(labels, Mapping) else None
    every = np.concatenate(list(per.values())) if per is not None else np.asarray(labels)
    if every.size == 0:
        raise DataError(f"{task}: constant_score needs at least one label")
    if scoring(task).regression:
        return 0.0

    def score(c) -> float:
        if per is None:
            return glue_metrics(task, np.full(every.shape, c), every)["score"]
        return task_metrics(task, {s: (np.full(y.shape, c), y) for s, y in per.items()})["score"]

    return max(score(c) for c in np.unique(every))


def margin_kept(score: float, dense_score: float, const_score: float) -> Optional[float]:
    """(score − const) / (dense − const): share of the dense model's margin over the constant
    predictor kept by the compressed model; None when dense ≤ const (no margin to keep)."""
    if dense_score <= const_score:
        return None
    return (score - const_score) / (dense_score - const_score)


def predictions(task: "str | Scoring", logits: np.ndarray) -> np.ndarray:
    return logits[:, 0] if scoring(task).regression else logits.argmax(axis=-1)
