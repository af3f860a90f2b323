"""GLUE dev metrics (methods.md §8) with scikit-learn / scipy, and the collapse check.

CoLA: Matthews corr. SST-2, QNLI, RTE, WNLI, MNLI: accuracy. MRPC, QQP: F1 (positive class 1)
and accuracy. STS-B: Pearson and Spearman. `score` = mean of the pair (MRPC, QQP, STS-B) else the
single metric, ×100. A classifier whose predictions are (nearly) one class — majority share ≥
`COLLAPSE_SHARE` — is flagged `collapsed` (constant "paraphrase" on MRPC scores F1 81.2; constant
CoLA scores MCC 0); a regressor whose prediction std is < 1% of the label std likewise.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

COLLAPSE_SHARE = 0.98

PAIRS = {"mrpc": ("f1", "accuracy"), "qqp": ("f1", "accuracy"), "stsb": ("pearson", "spearman")}


def glue_metrics(task: str, preds: np.ndarray, labels: np.ndarray) -> dict:
    """Metrics for one GLUE task; `preds` are class ids (or scores for stsb)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    if task == "stsb":
        if np.std(preds) == 0:
            out = {"pearson": 0.0, "spearman": 0.0}
        else:
            out = {"pearson": float(pearsonr(preds, labels)[0]), "spearman": float(spearmanr(preds, labels)[0])}
    elif task == "cola":
        out = {"mcc": float(matthews_corrcoef(labels, preds))}
    elif task in ("mrpc", "qqp"):
        out = {"f1": float(f1_score(labels, preds, zero_division=0)), "accuracy": float(accuracy_score(labels, preds))}
    else:
        out = {"accuracy": float(accuracy_score(labels, preds))}
    keys = PAIRS.get(task, tuple(out))
    out["score"] = 100.0 * float(np.mean([out[k] for k in keys]))
    out["collapsed"] = is_collapsed(task, preds, labels)
    return out


def is_collapsed(task: str, preds: np.ndarray, labels: np.ndarray) -> bool:
    preds = np.asarray(preds)
    if task == "stsb":
        return bool(np.std(preds) < 0.01 * max(np.std(labels), 1e-12))
    _, counts = np.unique(preds, return_counts=True)
    return bool(counts.max() / len(preds) >= COLLAPSE_SHARE)


def predictions(task: str, logits: np.ndarray) -> np.ndarray:
    return logits[:, 0] if task == "stsb" else logits.argmax(axis=-1)
