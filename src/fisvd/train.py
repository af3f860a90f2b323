"""Fine-tuning with the HF Trainer, shared by the finetune stage, recovery fine-tuning and the
fine-tune settings selection (benchmarks/finetune_select.py): one setup everywhere.

AdamW (weight decay), linear warm-up over `warmup_ratio` of all steps then linear decay to 0,
dynamic padding, seeded data order; CUDA + bf16 autocast when available, CPU otherwise. Eval on
`eval_feats` after every epoch (the per-epoch metrics land in `trainer.state.log_history`).

With a `teacher` (recovery: the dense model), the loss is fisvd.distill.mixed_loss: (1 − w) · task
loss + w · KD against the teacher's logits at temperature τ (teacher in eval mode, no gradients).

Under `accelerate launch` / `torchrun` with N processes the Trainer trains data-parallel (DDP) and
`batch_size` stays the global batch: each process takes batch_size / N examples per step (DDP
averages the gradients), so the number of steps and the learning-rate schedule are those of one
process.
"""
from __future__ import annotations

import math

import numpy as np

from .data import collate
from .dist import is_main, launched_world_size
from .distill import mixed_loss
from .errors import ParamError
from .metrics import glue_metrics, predictions, scoring

RUNTIME_WORDS = ("runtime", "per_second")


def is_runtime(key: str) -> bool:
    """Wall-clock log entries (vary run to run): kept out of deterministic metrics and plots."""
    return any(w in key for w in RUNTIME_WORDS)


def make_trainer(model, tokenizer, task: str, train_feats, eval_feats, *, epochs: int, learning_rate: float,
                 batch_size: int, weight_decay: float, warmup_ratio: float, seed: int, output_dir: str,
                 callbacks=(), teacher=None, kd_weight: float = 0.0, kd_temperature: float = 1.0):
    """A configured (not yet trained) transformers.Trainer; with `teacher` and kd_weight > 0 its loss
    mixes in distillation from the teacher's logits (module docstring)."""
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(seed)
    steps = epochs * math.ceil(len(train_feats) / batch_size)
    cuda = torch.cuda.is_available()
    world = launched_world_size()
    if batch_size % world:
        raise ParamError(f"batch size {batch_size} does not split evenly over {world} processes (WORLD_SIZE); "
                         f"use a multiple of {world}")

    def compute_metrics(ev):
        m = glue_metrics(task, predictions(task, np.asarray(ev.predictions)), ev.label_ids)
        return {k: float(v) for k, v in m.items()}

    args = TrainingArguments(
        output_dir=output_dir, num_train_epochs=epochs, learning_rate=learning_rate,
        per_device_train_batch_size=batch_size // world, per_device_eval_batch_size=64,
        weight_decay=weight_decay, warmup_steps=math.ceil(warmup_ratio * steps),
        lr_scheduler_type="linear", eval_strategy="epoch", logging_strategy="epoch", save_strategy="no",
        report_to="none", seed=seed, data_seed=seed, bf16=cuda, use_cpu=not cuda, dataloader_num_workers=0,
        # the classifier's loss is a per-example mean that ignores `num_items_in_batch`: with token
        # averaging (on by default) the Trainer would scale it by N under N processes (no-op for one)
        average_tokens_across_devices=False)
    kw = dict(model=model, args=args, train_dataset=train_feats, eval_dataset=eval_feats,
              data_collator=collate(tokenizer), processing_class=tokenizer,
              compute_metrics=compute_metrics, callbacks=list(callbacks))
    if teacher is None or kd_weight == 0.0:
        return Trainer(**kw)
    regression = scoring(task).regression

    class TeacherTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            ids = inputs["input_ids"]
            if next(teacher.parameters()).device != ids.device:
                teacher.to(ids.device)
            with torch.no_grad():
                t = teacher.eval()(**{k: v for k, v in inputs.items() if k != "labels"}).logits
            s = outputs.logits
            if regression:
                s, t = s.squeeze(-1), t.squeeze(-1)
            loss = mixed_loss(outputs.loss, s, t, kd_weight, kd_temperature, regression)
            return (loss, outputs) if return_outputs else loss

    return TeacherTrainer(**kw)


def epoch_scores(trainer) -> list[dict]:
    """Per-epoch eval entries of a trained Trainer: [{"epoch": 1, "score": …, <metrics>}, …]."""
    out = []
    for e in trainer.state.log_history:
        if "eval_score" in e:
            out.append({"epoch": int(round(e["epoch"])),
                        **{k[5:]: v for k, v in e.items() if k.startswith("eval_") and not is_runtime(k)}})
    return out


def live_callback(live_dir: str):
    """(DVCLive callback minus wall-clock entries, dict collecting those entries): per-epoch metrics
    and plots under `live_dir` stay deterministic; the runtime figures go wherever the caller puts
    the dict. The training arguments are not dumped (their params.yaml: the stage's params and the
    pinned environment fix them, and it records the device). On ranks other than 0 of a
    multi-process run: (None, {})."""
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    runtime: dict = {}

    class DeterministicLive(DVCLiveCallback):
        def setup(self, args, state, model):
            self._initialized = True

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            runtime.update({k: v for k, v in (logs or {}).items() if is_runtime(k)})
            logs = {k: v for k, v in (logs or {}).items() if not is_runtime(k)}
            super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    if not is_main():       # other processes of a multi-process run log nothing
        return None, runtime
    live = Live(live_dir, dvcyaml=False, save_dvc_exp=False)
    return DeterministicLive(live=live), runtime
