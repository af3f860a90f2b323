"""evaluate: GLUE dev metrics of the dense (data/model) and compressed (data/compressed) models on
every dev split of the task (MNLI: matched and mismatched), parameter counts, kept ratio p,
compression ratio, each model's 95 % bootstrap interval (`ci95`: 1000 seeded resamples of dev examples,
fisvd.report's vectorised bootstrap, the grid's), the best constant predictor's score, "% of dense" and the share of the dense
model's margin over the constant predictor kept by the compressed one → metrics/evaluate/metrics.json
(deterministic on CPU), and median CPU latency per batch → metrics/evaluate/latency.json (timings
vary run to run). Both git-tracked: columns of `dvc exp show`, compared by `dvc metrics diff`.
"""
import logging
import statistics

from fisvd.cli import run_stage
from fisvd.data import collate, dev_features, load_prepared
from fisvd.evaluate import comparison, kept_ratio, latency_batch, latency_rounds, model_inputs, score_dev, \
    speedup_spread
from fisvd.metrics import scoring_of
from fisvd.io import remove, write_json
from fisvd.lowrank import load_compressed
from fisvd.models import count_params, load_classifier, load_tokenizer, pick_device
from fisvd.report import bootstrap_ci
from fisvd.paths import COMPRESSED, LATENCY, METRICS as OUT, MODEL, PREPARED as DATA

KEYS = ["evaluate.batch_size", "evaluate.latency_batches", "finetune.max_length"]
log = logging.getLogger("fisvd")


def main(params):
    import torch

    e = params.evaluate
    meta, splits = load_prepared(DATA)
    task = scoring_of(meta)
    tokenizer = load_tokenizer(MODEL)
    devs = dev_features(task, splits, tokenizer, params.finetune.max_length)
    models = {"dense": load_classifier(MODEL, meta["num_labels"]).float(), "compressed": load_compressed(COMPRESSED)}
    remove(OUT, LATENCY)
    device = pick_device()
    lat_batch = latency_batch(devs["dev"], e.batch_size, params.finetune.max_length, model_inputs(models["dense"]))
    torch.manual_seed(0)
    scores, labels = {}, None
    for name, model in models.items():     # file order (by_length=False): the numbers this stage always gave
        m, per_split = score_dev(model, devs, task, e.batch_size, collate(tokenizer), device, by_length=False)
        lo, hi = bootstrap_ci(task, per_split)      # the grid's bootstrap (fisvd.report)
        scores[name] = {**m, "ci95": [round(lo, 4), round(hi, 4)], "params": count_params(model)}
        labels = {s: y for s, (_, y) in per_split.items()}
        log.info("%s: %s", name, scores[name])
    rounds = latency_rounds(models, lat_batch, e.latency_batches)   # CPU, interleaved rounds
    lat = {"shape": [e.batch_size, params.finetune.max_length], "device": "cpu",
           **{f"{name}_ms": round(statistics.median(ms), 2) for name, ms in rounds.items()}}
    lat["speedup"] = round(lat["dense_ms"] / lat["compressed_ms"], 3)
    lat.update(speedup_spread(rounds, "dense", "compressed"))   # per-round ratios: their spread
    out = comparison(task, scores, labels, kept_ratio(models["compressed"])[0])
    write_json(OUT, out)
    write_json(LATENCY, lat)
    log.info("kept ratio %.4f, compression %.3fx, speed-up %.2fx, score %.2f -> %.2f (constant %.2f, margin kept %s)",
             out["kept_ratio"], out["compression_ratio"], lat["speedup"], out["dense"]["score"],
             out["compressed"]["score"], out["constant_score"], out["margin_kept"])


if __name__ == "__main__":
    run_stage("evaluate", __doc__, KEYS, main)
