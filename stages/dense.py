"""dense (grid): dev predictions and scores of the fine-tuned dense model → results/dense.json
(task, metrics, score, the best constant predictor's score, parameter count, and the per-split
predictions and labels the report bootstraps). Runs in a grid run folder (fisvd.grid).
"""
import logging

from fisvd.cli import run_stage
from fisvd.data import collate, dev_features, load_prepared
from fisvd.evaluate import dev_record, score_dev
from fisvd.io import remove, write_json
from fisvd.metrics import constant_score, scoring, scoring_of
from fisvd.models import count_params, load_classifier, load_tokenizer, pick_device
from fisvd.paths import DENSE_RESULT as OUT, MODEL, PREPARED

KEYS = ["evaluate.batch_size", "finetune.max_length"]
log = logging.getLogger("fisvd")


def main(params):
    meta, splits = load_prepared(PREPARED)
    task = scoring_of(meta)
    tok = load_tokenizer(MODEL)
    model = load_classifier(MODEL, meta["num_labels"]).float().eval()
    remove(OUT)
    devs = dev_features(task, splits, tok, params.finetune.max_length)
    m, per_split = score_dev(model, devs, task, params.evaluate.batch_size, collate(tok), pick_device())
    rec = dev_record(m, per_split)
    out = {"task": str(task), "seed": params.finetune.seed, **{k: rec[k] for k in ("score", "collapsed", "metrics")},
           "constant_score": round(constant_score(task, {s: y for s, (_, y) in per_split.items()}), 4),
           "total_params": count_params(model), "predictions": rec["predictions"],
           "labels": {s: [float(v) if scoring(task).regression else int(v) for v in y] for s, (_, y) in per_split.items()}}
    if not isinstance(task, str):       # a custom task: the report needs its scoring
        out["scoring"] = {"metrics": list(task.metrics), "regression": task.regression}
    write_json(OUT, out)
    log.info("%s dense: score %.2f (constant %.2f), %d params", task, out["score"], out["constant_score"],
             out["total_params"])


if __name__ == "__main__":
    run_stage("dense", __doc__, KEYS, main)
