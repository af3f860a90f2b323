"""evaluate: GLUE dev metrics of the dense (data/model) and compressed (data/compressed) models on
every dev split of the task (MNLI: matched and mismatched), parameter counts, kept ratio p,
compression ratio, the best constant predictor's score, "% of dense" and the share of the dense
model's margin over the constant predictor kept by the compressed one → metrics/evaluate/metrics.json
(deterministic on CPU), and median CPU latency per batch → metrics/evaluate/latency.json (timings
vary run to run). Both git-tracked: columns of `dvc exp show`, compared by `dvc metrics diff`.
"""
import logging
import statistics

from fisvd.cli import run_stage
from fisvd.data import batches, collate, dev_splits, load_prepared, tokenize
from fisvd.evaluate import kept_ratio, latency_batch, latency_rounds, model_inputs, predict, speedup_spread
from fisvd.io import remove, write_json
from fisvd.lowrank import load_compressed
from fisvd.metrics import constant_score, margin_kept, predictions, task_metrics
from fisvd.models import count_params, load_classifier, load_tokenizer, pick_device
from fisvd.paths import COMPRESSED, LATENCY, METRICS as OUT, MODEL, PREPARED as DATA

KEYS = ["evaluate.batch_size", "evaluate.latency_batches", "finetune.max_length"]
log = logging.getLogger("fisvd")


def main(params):
    import numpy as np
    import torch

    e = params.evaluate
    meta, splits = load_prepared(DATA)
    task = meta["task"]
    tokenizer = load_tokenizer(MODEL)
    devs = {s: tokenize(tokenizer, splits[s], params.finetune.max_length) for s in dev_splits(task)}
    labels = {s: np.array([f["labels"] for f in feats]) for s, feats in devs.items()}
    models = {"dense": load_classifier(MODEL, meta["num_labels"]).float(), "compressed": load_compressed(COMPRESSED)}
    remove(OUT, LATENCY)
    device = pick_device()
    lat_batch = latency_batch(devs["dev"], e.batch_size, params.finetune.max_length, model_inputs(models["dense"]))
    torch.manual_seed(0)
    out, lat = {"task": task}, {"shape": [e.batch_size, params.finetune.max_length], "device": "cpu"}
    for name, model in models.items():
        per_split = {s: (predictions(task, predict(model, batches(feats, e.batch_size, collate(tokenizer)), device)),
                         labels[s]) for s, feats in devs.items()}
        m = task_metrics(task, per_split)
        m["params"] = count_params(model)
        out[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
        log.info("%s: %s", name, out[name])
    rounds = latency_rounds(models, lat_batch, e.latency_batches)   # CPU, interleaved rounds
    for name, ms in rounds.items():
        lat[f"{name}_ms"] = round(statistics.median(ms), 2)
    p, kept, dense = kept_ratio(models["compressed"])
    const = constant_score(task, labels)
    margin = margin_kept(out["compressed"]["score"], out["dense"]["score"], const)
    out["kept_ratio"] = round(p, 6)
    out["compression_ratio"] = round(out["dense"]["params"] / out["compressed"]["params"], 4)
    out["score_drop"] = round(out["dense"]["score"] - out["compressed"]["score"], 4)
    out["constant_score"] = round(const, 4)
    out["pct_of_dense"] = round(100 * out["compressed"]["score"] / out["dense"]["score"], 2) \
        if out["dense"]["score"] > 0 else None
    out["margin_kept"] = None if margin is None else round(margin, 4)
    lat["speedup"] = round(lat["dense_ms"] / lat["compressed_ms"], 3)
    lat.update(speedup_spread(rounds, "dense", "compressed"))   # per-round ratios: their spread
    write_json(OUT, out)
    write_json(LATENCY, lat)
    log.info("kept ratio %.4f, compression %.3fx, speed-up %.2fx, score %.2f -> %.2f (constant %.2f, margin kept %s)",
             p, out["compression_ratio"], lat["speedup"], out["dense"]["score"], out["compressed"]["score"], const,
             out["margin_kept"])


if __name__ == "__main__":
    run_stage("evaluate", __doc__, KEYS, main)
