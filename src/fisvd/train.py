"""Fine-tuning with the HF Trainer, shared by the finetune stage, recovery fine-tuning and the
fine-tune settings selection (benchmarks/finetune_select.py): one setup everywhere.

AdamW (weight decay), linear warm-up over `warmup_ratio` of all steps then linear decay to 0,
dynamic padding, seeded data order; CUDA + bf16 autocast when available, CPU otherwise. Eval on
`eval_feats` after every epoch (the per-epoch metrics land in `trainer.state.log_history`).
"""
from __future__ import annotations

import math

import numpy as np

from .data import collate
from .metrics import glue_metrics, predictions

RUNTIME_WORDS = ("runtime", "per_second")


def is_runtime(key: str) -> bool:
    """Wall-clock log entries (vary run to run): kept out of deterministic metrics and plots."""
    return any(w in key for w in RUNTIME_WORDS)


def make_trainer(model, tokenizer, task: str, train_feats, eval_feats, *, epochs: int, learning_rate: float,
                 batch_size: int, weight_decay: float, warmup_ratio: float, seed: int, output_dir: str,
                 callbacks=()):
    """A configured (not yet trained) transformers.Trainer."""
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(seed)
    steps = epochs * math.ceil(len(train_feats) / batch_size)
    cuda = torch.cuda.is_available()

    def compute_metrics(ev):
        m = glue_metrics(task, predictions(task, np.asarray(ev.predictions)), ev.label_ids)
        return {k: float(v) for k, v in m.items()}

    args = TrainingArguments(
        output_dir=output_dir, num_train_epochs=epochs, learning_rate=learning_rate,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=64,
        weight_decay=weight_decay, warmup_steps=math.ceil(warmup_ratio * steps),
        lr_scheduler_type="linear", eval_strategy="epoch", logging_strategy="epoch", save_strategy="no",
        report_to="none", seed=seed, data_seed=seed, bf16=cuda, use_cpu=not cuda, dataloader_num_workers=0)
    return Trainer(model=model, args=args, train_dataset=train_feats, eval_dataset=eval_feats,
                   data_collator=collate(tokenizer), processing_class=tokenizer,
                   compute_metrics=compute_metrics, callbacks=list(callbacks))


def epoch_scores(trainer) -> list[dict]:
    """Per-epoch eval entries of a trained Trainer: [{"epoch": 1, "score": …, <metrics>}, …]."""
    out = []
    for e in trainer.state.log_history:
        if "eval_score" in e:
            out.append({"epoch": int(round(e["epoch"])),
                        **{k[5:]: v for k, v in e.items() if k.startswith("eval_") and not is_runtime(k)}})
    return out
