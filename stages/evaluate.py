"""evaluate: GLUE dev metrics of the dense (data/model) and compressed (data/compressed) models,
parameter counts, kept ratio p and compression ratio → metrics/evaluate/metrics.json (deterministic
on CPU), and median CPU latency per batch → metrics/evaluate/latency.json (timings vary run to run).
Both git-tracked: columns of `dvc exp show`, compared by `dvc metrics diff`.
"""
import logging

from fisvd.cli import run_stage
from fisvd.data import batches, collate, load_prepared, tokenize
from fisvd.evaluate import kept_ratio, latency_batch, latency_ms, predict
from fisvd.io import remove, write_json
from fisvd.lowrank import load_compressed
from fisvd.metrics import glue_metrics, predictions
from fisvd.models import count_params, load_classifier, load_tokenizer, pick_device

DATA, MODEL, COMPRESSED = "data/prepared", "data/model", "data/compressed"
OUT, LATENCY = "metrics/evaluate/metrics.json", "metrics/evaluate/latency.json"
log = logging.getLogger("fisvd")


def main(params):
    import numpy as np
    import torch

    e = params.evaluate
    meta, splits = load_prepared(DATA)
    remove(OUT, LATENCY)
    task = meta["task"]
    tokenizer = load_tokenizer(MODEL)
    dev = tokenize(tokenizer, splits["dev"], params.finetune.max_length)
    labels = np.array([f["labels"] for f in dev])
    models = {"dense": load_classifier(MODEL, meta["num_labels"]).float(), "compressed": load_compressed(COMPRESSED)}
    device = pick_device()
    lat_batch = latency_batch(dev, e.batch_size, params.finetune.max_length)
    torch.manual_seed(0)
    out, lat = {"task": task}, {"shape": [e.batch_size, params.finetune.max_length], "device": "cpu"}
    for name, model in models.items():
        logits = predict(model, batches(dev, e.batch_size, collate(tokenizer)), device)
        m = glue_metrics(task, predictions(task, logits), labels)
        m["params"] = count_params(model)
        out[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
        log.info("%s: %s", name, out[name])
    for name, ms in latency_ms(models, lat_batch, e.latency_batches).items():  # CPU, interleaved rounds
        lat[f"{name}_ms"] = round(ms, 2)
    p, kept, dense = kept_ratio(models["compressed"])
    out["kept_ratio"] = round(p, 6)
    out["compression_ratio"] = round(out["dense"]["params"] / out["compressed"]["params"], 4)
    out["score_drop"] = round(out["dense"]["score"] - out["compressed"]["score"], 4)
    lat["speedup"] = round(lat["dense_ms"] / lat["compressed_ms"], 3)
    write_json(OUT, out)
    write_json(LATENCY, lat)
    log.info("kept ratio %.4f, compression %.3fx, speed-up %.2fx, score %.2f -> %.2f", p, out["compression_ratio"],
             lat["speedup"], out["dense"]["score"], out["compressed"]["score"])


if __name__ == "__main__":
    run_stage("evaluate", __doc__, ["evaluate.batch_size", "evaluate.latency_batches", "finetune.max_length"], main)
