"""recover (grid): recovery fine-tuning of one compressed grid cell → results/recover-<f>-<a>-p<b>.json
(the cell's sizes and ranks, dev metrics, score, collapsed flag and predictions after
`recover.epochs` epochs), per-epoch loss and dev metric logged by DVCLive to metrics/recover/<name>/.

The cell's ranks come from results/<factorisation>/<allocation>-p<budget>.json; the factors are rebuilt with
fisvd.sequential.build_factors (as the cell built them), balanced (fisvd.balance: the same product, each rank component's two factors of equal
norm, so that Adam's steps are of one relative size on both) and trained as two Linears each
(LowRankLinear: first = B, second = A with the bias) together with everything else, with the task's
fine-tune setup (fisvd.train: its learning rate, batch size, warm-up, weight decay, seed) on the whole
training split. `--teacher`: the loss mixes in distillation from the dense model's logits
(fisvd.distill; recover.teacher); `--seed`: a recovery seed other than the fine-tune seed (data order).
"""
import json
import logging
import time
from pathlib import Path

from fisvd.balance import balance
from fisvd.cli import run_stage
from fisvd.data import calibration_rows, collate, dev_features, load_prepared, tokenize, training_slice
from fisvd.dist import is_main
from fisvd.evaluate import dev_record, score_dev
from fisvd.metrics import scoring_of
from fisvd.factorize import break_even
from fisvd.io import remove, write_json
from fisvd.lowrank import apply_lowrank
from fisvd.methods import FACTORISATIONS
from fisvd.models import count_params, load_classifier, load_tokenizer, pick_device
from fisvd.paths import FISHER, MODEL, PREPARED, RECOVER_LIVE, STATS, cell_result, recover_name, recover_result
from fisvd.sequential import build_factors
from fisvd.stats import load_statistics
from fisvd.train import live_callback, make_trainer

KEYS = ["recover.epochs", "finetune", "compress.<factorisation>", "recover.teacher (--teacher)", "evaluate.batch_size"]
log = logging.getLogger("fisvd")


def arguments(parser):
    parser.add_argument("--factorisation", required=True)
    parser.add_argument("--allocation", required=True)
    parser.add_argument("--budget", type=int, required=True, help="kept percent of the cell")
    parser.add_argument("--teacher", action="store_true",
                        help="distil from the dense model (recover.teacher: weight, temperature)")
    parser.add_argument("--seed", type=int, help="recovery seed (default: the fine-tune seed)")


def main(params, args):
    name = recover_name(args.factorisation, args.allocation, args.budget, args.teacher,
                        None if args.seed in (None, params.finetune.seed) else args.seed)
    out, live_dir = recover_result(name), f"{RECOVER_LIVE}/{name}"
    cell = json.loads(Path(cell_result(args.factorisation, args.allocation, args.budget)).read_text())
    meta, splits = load_prepared(PREPARED)
    task, ft = scoring_of(meta), params.finetune
    tok = load_tokenizer(MODEL)
    model = load_classifier(MODEL, meta["num_labels"]).float()
    weights = {n: model.get_submodule(n).weight.detach() for n in cell["ranks"]}
    low = {n: r for n, r in cell["ranks"].items() if r < break_even(*weights[n].shape)}   # r ≥ r̄ is dense
    stats = load_statistics(FACTORISATIONS[args.factorisation].needs, {n: tuple(weights[n].shape) for n in low},
                            FISHER, STATS)
    if is_main():
        remove(out, live_dir)
    opts = params.compress.opts(args.factorisation)
    factors = build_factors(args.factorisation, model, stats, low, opts,
                            lambda: training_slice(calibration_rows(splits), opts.examples, tok, ft.max_length), pick_device())
    apply_lowrank(model.cpu(), {n: balance(*AB) for n, AB in factors.items()})
    train = tokenize(tok, splits["train"], ft.max_length)
    devs = dev_features(task, splits, tok, ft.max_length)
    callback, runtime = live_callback(live_dir)
    seed = ft.seed if args.seed is None else args.seed
    kd = params.recover.teacher
    teacher = load_classifier(MODEL, meta["num_labels"]).float().eval() if args.teacher else None
    trainer = make_trainer(model, tok, task, train, devs["dev"], epochs=params.recover.epochs,
                           learning_rate=ft.learning_rate, batch_size=ft.batch_size, weight_decay=ft.weight_decay,
                           warmup_ratio=ft.warmup_ratio, seed=seed, output_dir="data/.recover-checkpoints",
                           callbacks=[callback] if callback is not None else [], teacher=teacher,
                           kd_weight=kd.weight, kd_temperature=kd.temperature)
    t0 = time.perf_counter()
    trainer.train()                 # the callback ends its DVCLive run at the end of training
    if not is_main():          # a multi-process run (accelerate launch): rank 0 evaluates and writes
        return
    model = trainer.model.float().eval()
    m, per_split = score_dev(model, devs, task, params.evaluate.batch_size, collate(tok), pick_device())
    keep = ("kept_ratio", "total_params", "compressible_params_kept", "num_dense", "ranks")
    write_json(out, {"task": str(task), "seed": ft.seed, "factorisation": args.factorisation, "allocation": args.allocation,
                     "budget": args.budget, "recovery_epochs": params.recover.epochs, "recovery_seed": seed,
                     "teacher": {"weight": kd.weight, "temperature": kd.temperature} if args.teacher else None,
                     **{k: cell[k] for k in keep}, "params_counted": count_params(model),
                     **dev_record(m, per_split)})
    write_json(f"metrics/runtime/{name}.json", {"train_s": round(time.perf_counter() - t0, 1),
                                                **{k: round(v, 3) for k, v in runtime.items()}})
    log.info("%s: score %.2f -> %.2f after %d epoch(s)", name, cell["score"], m["score"], params.recover.epochs)


if __name__ == "__main__":
    run_stage("recover", __doc__, KEYS, main, arguments=arguments)
