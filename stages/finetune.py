"""finetune: fine-tune `model.name` on the prepared GLUE task → data/model/ (safetensors, config,
tokenizer); per-epoch loss and dev metric logged by DVCLive to metrics/finetune/ (deterministic on
CPU), wall-clock figures (runtime, samples per second) to metrics/finetune/runtime.json alone.

HF Trainer with dynamic padding, AdamW, linear warm-up (finetune.warmup_ratio of all steps) and
linear decay; CUDA + bf16 when available, CPU otherwise; seeded.

`accelerate launch --num_processes N -m stages.finetune` (or `torchrun --nproc_per_node N -m
stages.finetune`) trains data-parallel on N GPUs with the same global batch (finetune.batch_size,
a multiple of N); rank 0 alone writes data/model, the DVCLive logs and runtime.json.
"""
import logging
from pathlib import Path

from fisvd.cli import run_stage
from fisvd.data import load_prepared, tokenize
from fisvd.dist import close_group, init_group, is_main
from fisvd.io import atomic_dir, remove, write_json
from fisvd.metrics import scoring_of
from fisvd.models import load_classifier, load_tokenizer, resolve_model, save_tokenizer, skeleton
from fisvd.preflight import check as preflight
from fisvd.paths import FINETUNE_LIVE as LIVE_DIR, FINETUNE_RUNTIME, MODEL as OUT, PREPARED as DATA
from fisvd.train import is_runtime, live_callback, make_trainer

KEYS = ["model.name", "finetune.epochs", "finetune.learning_rate", "finetune.batch_size", "finetune.weight_decay",
        "finetune.warmup_ratio", "finetune.seed", "finetune.max_length"]
log = logging.getLogger("fisvd")


def main(params):
    import torch
    from transformers import set_seed

    f = params.finetune
    meta, splits = load_prepared(DATA)
    path = resolve_model(params.model.name)
    tokenizer = load_tokenizer(path)
    preflight(params, path, [m.shape for m in skeleton(path, meta["num_labels"])])  # mismatches stop here
    set_seed(f.seed)
    model = load_classifier(path, meta["num_labels"], tuple(meta["label_names"]), tokenizer.pad_token_id)
    init_group()            # N processes when launched by accelerate / torchrun (else a no-op): every rank
    main_rank = is_main()   # trains, rank 0 alone logs and writes
    if main_rank:
        remove(OUT, FINETUNE_RUNTIME)
    train = tokenize(tokenizer, splits["train"], f.max_length)
    dev = tokenize(tokenizer, splits["dev"], f.max_length)
    log.info("fine-tuning %s on %s: %d train / %d dev rows, %d epochs, %s", params.model.name, meta["task"],
             len(train), len(dev), f.epochs, "cuda+bf16" if torch.cuda.is_available() else "cpu")
    callback, runtime = live_callback(LIVE_DIR)     # rank 0 only (None elsewhere)
    trainer = make_trainer(model, tokenizer, scoring_of(meta), train, dev, epochs=f.epochs,
                           learning_rate=f.learning_rate, batch_size=f.batch_size, weight_decay=f.weight_decay,
                           warmup_ratio=f.warmup_ratio, seed=f.seed, output_dir="data/.finetune-checkpoints",
                           callbacks=[callback] if main_rank else [])
    trainer.train()                 # the callback ends its DVCLive run at the end of training
    final = trainer.evaluate()      # on every rank: evaluation gathers the predictions of all processes
    close_group()
    if not main_rank:
        return
    log.info("dev %s", {k: round(v, 4) for k, v in final.items() if k.startswith("eval_") and not is_runtime(k)})
    write_json(FINETUNE_RUNTIME, {k: round(v, 4) for k, v in runtime.items()})
    with atomic_dir(OUT) as tmp:
        trainer.model.float().save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
    Path(trainer.args.output_dir).exists() and remove(trainer.args.output_dir)
    log.info("wrote %s", OUT)


if __name__ == "__main__":
    run_stage("finetune", __doc__, KEYS, main)
