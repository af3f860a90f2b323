"""GLUE metrics against hand-computed values on tiny arrays, the task score, the collapse flag,
the constant-predictor floor, the kept margin and MNLI's matched + mismatched score."""
import math

import numpy as np
import pytest

from fisvd.errors import DataError
from fisvd.metrics import (COLLAPSE_SHARE, constant_score, glue_metrics, is_collapsed, margin_kept,
                           predictions, task_metrics)

# A binary confusion with TP=3, FN=2, FP=1, TN=2 (n=8).
BIN_LABELS = np.array([1, 1, 1, 1, 1, 0, 0, 0])
BIN_PREDS = np.array([1, 1, 1, 0, 0, 1, 0, 0])

# MRPC dev: 279 paraphrase (1), 129 not (0).
MRPC_DEV = np.array([1] * 279 + [0] * 129)


def test_cola_mcc_from_confusion_formula():
    # MCC = (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6 − 2) / sqrt(4·5·3·4)
    m = glue_metrics("cola", BIN_PREDS, BIN_LABELS)
    assert m["mcc"] == pytest.approx(4 / math.sqrt(240))          # 0.2582
    assert m["score"] == pytest.approx(100 * 4 / math.sqrt(240))
    assert set(m) == {"mcc", "score", "collapsed"} and m["collapsed"] is False


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_f1_accuracy_pair_and_score(task):
    # precision 3/4, recall 3/5 -> F1 = 2·(3/4)(3/5)/(3/4 + 3/5) = 2/3; accuracy (3+2)/8 = 5/8
    m = glue_metrics(task, BIN_PREDS, BIN_LABELS)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["score"] == pytest.approx(100 * (2 / 3 + 5 / 8) / 2)  # 64.583
    assert m["collapsed"] is False


@pytest.mark.parametrize("task", ["sst2", "qnli", "rte", "wnli", "mnli"])
def test_accuracy_tasks(task):
    m = glue_metrics(task, [0, 1, 1, 0, 1], [0, 1, 0, 0, 0])
    assert m == {"accuracy": pytest.approx(3 / 5), "score": pytest.approx(60.0), "collapsed": False}


def test_stsb_pearson_and_spearman_with_ties():
    preds = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    labels = np.array([1.0, 3.0, 3.0, 2.0, 5.0])
    # Pearson: dx = (−2,−1,0,1,2), dy = labels − 2.8 = (−1.8,.2,.2,−.8,2.2);
    #   Σdxdy = 3.6−.2+0−.8+4.4 = 7, Σdx² = 10, Σdy² = 8.8  ->  r = 7/sqrt(88)
    # Spearman: label ranks (1, 3.5, 3.5, 2, 5) (tie shares ranks 3 and 4), dy = (−2,.5,.5,−1,2);
    #   Σdxdy = 4−.5+0−1+4 = 6.5, Σdy² = 9.5  ->  ρ = 6.5/sqrt(95)
    m = glue_metrics("stsb", preds, labels)
    assert m["pearson"] == pytest.approx(7 / math.sqrt(88))        # 0.7462
    assert m["spearman"] == pytest.approx(6.5 / math.sqrt(95))     # 0.6669
    assert m["score"] == pytest.approx(100 * (7 / math.sqrt(88) + 6.5 / math.sqrt(95)) / 2)
    assert m["collapsed"] is False


def test_stsb_constant_prediction_scores_zero_and_collapses():
    m = glue_metrics("stsb", [2.5] * 5, [1.0, 3.0, 3.0, 2.0, 5.0])
    assert m == {"pearson": 0.0, "spearman": 0.0, "score": 0.0, "collapsed": True}
    labels = np.array([0.0, 5.0] * 10)                              # std 2.5
    assert is_collapsed("stsb", 2.5 + np.array([-0.02, 0.02] * 10), labels)       # std 0.02 < 0.025
    assert not is_collapsed("stsb", 2.5 + np.array([-0.03, 0.03] * 10), labels)   # std 0.03


def test_mrpc_constant_not_paraphrase_is_collapsed():
    m = glue_metrics("mrpc", np.zeros(408, int), MRPC_DEV)
    assert m["f1"] == 0.0 and m["accuracy"] == pytest.approx(129 / 408) and m["collapsed"] is True


@pytest.mark.parametrize("task", ["mrpc", "cola", "stsb"])
def test_bootstrap_interval_is_the_percentiles_of_a_written_out_resampling_loop(task):
    """bootstrap_ci against a plain loop: the same seeded index draws (numpy's default_rng(seed).integers),
    each replicate scored with sklearn / scipy and the GLUE formula (MRPC: mean of F1 and accuracy; CoLA: MCC;
    STS-B: mean of Pearson and Spearman; ×100), then the 2.5 / 97.5 % percentiles."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    from fisvd.report import bootstrap_ci
    rng = np.random.default_rng(11)
    if task == "stsb":
        labels = rng.uniform(0, 5, 120)
        preds = labels + rng.normal(0, 1.2, 120)
        score = lambda p, y: 50 * (pearsonr(p, y)[0] + spearmanr(p, y)[0])          # noqa: E731
    else:
        labels = rng.integers(0, 2, 120)
        preds = np.where(rng.random(120) < 0.75, labels, 1 - labels)
        score = ((lambda p, y: 50 * (f1_score(y, p) + accuracy_score(y, p))) if task == "mrpc"   # noqa: E731
                 else (lambda p, y: 100 * matthews_corrcoef(y, p)))
    n, seed = 300, 5
    idx = np.random.default_rng(seed).integers(0, 120, (n, 120))
    loop = [score(preds[i], labels[i]) for i in idx]
    want = np.quantile(loop, [0.025, 0.975])
    got = bootstrap_ci(task, {"dev": (preds, labels)}, n=n, seed=seed)
    assert got == pytest.approx(tuple(want), abs=1e-6)
    assert bootstrap_ci(task, {"dev": (preds, labels)}, n=n, seed=seed + 1) != got          # the seed matters


def test_mrpc_near_constant_not_paraphrase_is_collapsed():
    """12 of 408 predicted positive (8 right, 4 wrong): acc 32.6, F1 5.5, majority share 97.1%."""
    preds = np.zeros(408, int)
    preds[:8] = 1            # true positives
    preds[-4:] = 1           # false positives
    m = glue_metrics("mrpc", preds, MRPC_DEV)
    # TP 8, FP 4, FN 271, TN 125: acc 133/408, F1 = 2·8 / (2·8 + 4 + 271) = 16/291
    assert m["accuracy"] == pytest.approx(133 / 408) and m["f1"] == pytest.approx(16 / 291)
    assert m["collapsed"] is True                     # 396 / 408 = 97.1 % predicted not-paraphrase


def test_collapse_share_threshold():
    assert COLLAPSE_SHARE == 0.95
    labels = np.array([0, 1] * 50)
    assert is_collapsed("sst2", np.array([1] * 97 + [0] * 3), labels)       # ~97% one class
    assert is_collapsed("sst2", np.array([1] * 95 + [0] * 5), labels)       # exactly 95%
    assert not is_collapsed("sst2", np.array([1] * 94 + [0] * 6), labels)
    assert not is_collapsed("sst2", np.array([0, 1] * 50), labels)          # balanced
    balanced = np.array([1, 0] * 204)                                        # 50% positive
    assert not glue_metrics("mrpc", balanced, MRPC_DEV)["collapsed"]
    assert is_collapsed("mnli", np.array([2] * 96 + [0, 1, 0, 1]), np.zeros(100, int))


def test_constant_score_mrpc_is_the_paraphrase_floor():
    # constant 1: F1 = 2·279/(408+279) = 558/687 = 81.2, acc 279/408 = 68.4 -> 74.8
    # constant 0: F1 0, acc 129/408 = 31.6 -> 15.8
    assert constant_score("mrpc", MRPC_DEV) == pytest.approx(100 * (558 / 687 + 279 / 408) / 2)
    assert round(constant_score("mrpc", MRPC_DEV), 1) == 74.8
    # qqp, labels 0 0 0 1: constant 1 -> F1 2/5, acc 1/4 -> 32.5; constant 0 -> F1 0, acc 3/4 -> 37.5
    assert constant_score("qqp", [0, 0, 0, 1]) == pytest.approx(37.5)
    assert constant_score("cola", [1, 1, 1, 0]) == 0.0
    assert constant_score("sst2", [1, 1, 1, 0]) == pytest.approx(75.0)
    assert constant_score("mnli", [0, 2, 2, 1, 2]) == pytest.approx(60.0)
    assert constant_score("stsb", [0.0, 1.5, 5.0]) == 0.0
    with pytest.raises(DataError, match="at least one label"):
        constant_score("sst2", [])


def test_constant_score_mnli_uses_one_class_on_both_splits():
    # c=0: (2/4 + 1/5)/2 = .35; c=1: (1/4 + 3/5)/2 = .425; c=2: (1/4 + 1/5)/2 = .225 -> 42.5
    per = {"dev": [0, 0, 1, 2], "dev_mm": [1, 1, 1, 0, 2]}
    assert constant_score("mnli", per) == pytest.approx(42.5)


def test_margin_kept():
    assert margin_kept(70.0, 90.0, 50.0) == pytest.approx(0.5)        # 20 / 40
    assert margin_kept(90.0, 90.0, 50.0) == pytest.approx(1.0)
    assert margin_kept(40.0, 90.0, 50.0) == pytest.approx(-0.25)      # below the floor
    assert margin_kept(74.8, 74.8, 74.8) is None and margin_kept(60.0, 70.0, 74.8) is None
    assert margin_kept(80.0, 90.0, 70.0) == pytest.approx(0.5)       # half of the 20-point lead kept
    assert margin_kept(60.0, 90.0, 70.0) == pytest.approx(-0.5)      # below the constant predictor
    assert margin_kept(5.0, 0.0, 0.0) is None and margin_kept(5.0, 50.0, 52.7) is None   # no lead to keep


def test_task_metrics_mnli_averages_matched_and_mismatched():
    per = {"dev": ([0, 1, 2, 0], [0, 1, 1, 0]),             # 3/4
           "dev_mm": ([2, 2, 1, 0, 0], [2, 1, 1, 0, 1])}    # 3/5
    m = task_metrics("mnli", per)
    assert m == {"accuracy": pytest.approx(0.75), "accuracy_mm": pytest.approx(0.6),
                 "score": pytest.approx(67.5), "collapsed": False}
    per["dev_mm"] = ([1] * 5, [2, 1, 1, 0, 1])              # mismatched collapsed
    assert task_metrics("mnli", per)["collapsed"] is True
    with pytest.raises(DataError, match="dev_mm"):
        task_metrics("mnli", {"dev": per["dev"]})


def test_task_metrics_other_tasks_is_glue_metrics_on_dev():
    per = {"dev": (BIN_PREDS, BIN_LABELS), "train": ([0], [1])}
    for task in ("mrpc", "cola", "rte"):
        assert task_metrics(task, per) == glue_metrics(task, BIN_PREDS, BIN_LABELS)
    with pytest.raises(DataError, match="no predictions for split"):
        task_metrics("rte", {"dev_mm": (BIN_PREDS, BIN_LABELS)})


def test_predictions():
    logits = np.array([[0.1, 0.9], [2.0, -1.0]])
    assert predictions("mrpc", logits).tolist() == [1, 0]
    assert predictions("stsb", np.array([[3.2], [0.5]])).tolist() == [3.2, 0.5]


def test_bootstrap_interval_matches_the_binomial_interval_for_accuracy():
    """Accuracy of a 70 %-correct classifier on 400 examples: the bootstrap 95 % interval is the
    normal-approximation binomial one, 70 ± 1.96·sqrt(.7·.3/400)·100 = 70 ± 4.49, within Monte-Carlo error."""
    from fisvd.report import bootstrap_ci
    labels = np.array([0, 1] * 200)
    preds = labels.copy()
    preds[:120] = 1 - preds[:120]                                    # 280 / 400 right
    lo, hi = bootstrap_ci("rte", {"dev": (preds, labels)}, n=4000, seed=1)
    half = 1.96 * np.sqrt(0.7 * 0.3 / 400) * 100
    assert lo == pytest.approx(70 - half, abs=0.5) and hi == pytest.approx(70 + half, abs=0.5)
    assert bootstrap_ci("rte", {"dev": (preds, labels)}, n=200, seed=3) == \
        bootstrap_ci("rte", {"dev": (preds, labels)}, n=200, seed=3)  # seeded
    perfect = bootstrap_ci("rte", {"dev": (labels, labels)}, n=100)
    assert perfect == (100.0, 100.0)
