"""dense (grid): dev predictions and scores of the fine-tuned dense model → results/dense.json
(task, metrics, score, the best constant predictor's score, parameter count, and the per-split
predictions and labels the report bootstraps). Runs in a grid run folder (fisvd.grid).
"""
import logging

import numpy as np

from fisvd.cli import run_stage
from fisvd.data import collate, dev_splits, load_prepared, tokenize
from fisvd.evaluate import predict_sorted
from fisvd.io import remove, write_json
from fisvd.metrics import constant_score, predictions, task_metrics
from fisvd.models import count_params, load_classifier, load_tokenizer, pick_device
from fisvd.paths import DENSE_RESULT as OUT, MODEL, PREPARED

KEYS = ["evaluate.batch_size", "finetune.max_length"]
log = logging.getLogger("fisvd")


def main(params):
    meta, splits = load_prepared(PREPARED)
    task = meta["task"]
    tok = load_tokenizer(MODEL)
    model = load_classifier(MODEL, meta["num_labels"]).float().eval()
    remove(OUT)
    device = pick_device()
    per_split = {}
    for s in dev_splits(task):
        feats = tokenize(tok, splits[s], params.finetune.max_length)
        logits = predict_sorted(model, feats, params.evaluate.batch_size, collate(tok), device)
        per_split[s] = (predictions(task, logits), np.array([f["labels"] for f in feats]))
    m = task_metrics(task, per_split)
    out = {"task": task, "score": round(m["score"], 4), "collapsed": m["collapsed"],
           "metrics": {k: round(v, 6) for k, v in m.items() if k not in ("score", "collapsed")},
           "constant_score": round(constant_score(task, {s: y for s, (_, y) in per_split.items()}), 4),
           "total_params": count_params(model),
           "predictions": {s: [round(float(v), 5) for v in p] for s, (p, _) in per_split.items()},
           "labels": {s: [float(v) if task == "stsb" else int(v) for v in y] for s, (_, y) in per_split.items()}}
    write_json(OUT, out)
    log.info("%s dense: score %.2f (constant %.2f), %d params", task, out["score"], out["constant_score"],
             out["total_params"])


if __name__ == "__main__":
    run_stage("dense", __doc__, KEYS, main)
