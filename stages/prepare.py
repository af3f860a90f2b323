"""prepare: the task (GLUE, or your own: data.custom) → data/prepared/{train,dev[,test]}.jsonl +
meta.json, manifest in metrics/prepare/.

GLUE source: env GLUE_DIR (GLUE TSV layout), else ../shared/data/glue beside the project, else
`datasets.load_dataset("nyu-mll/glue", task)`. Both give identical rows (see fisvd.data). A task
the copy beside the project lacks (QNLI there has dev/test only; no MNLI, QQP) comes from the hub
too (logged; the manifest records the source). A custom
task (`data.task` naming a `data.custom` section): its local CSV / TSV / JSON Lines / Parquet files or
hub dataset (fisvd.custom); meta.json then also records its metrics and label names.
`data.calibration_rows` > 0 moves that many seeded training rows (seed data.seed + 2) to a
`calibration` split that fine-tuning never sees (the measured allocator's slice and kfac_seq draw
from it: fisvd.data.calibration_rows); the manifest lists its row count like every split's.
The committed manifest metrics/prepare/data.json records the source, the sha256 of every source
file (or the HF fingerprint) and row counts, so git shows which data each result came from.
Every data problem stops here with one line naming the file, before any output is touched.
"""
import logging

from fisvd.cli import run_stage
from fisvd.custom import load_custom
from fisvd.data import (TASKS, hold_out, label_counts, load_hf, load_local, resolve_glue_dir, splits_of, subset,
                        write_jsonl)
from fisvd.errors import DataError
from fisvd.io import atomic_dir, remove, write_json
from fisvd.paths import MANIFEST, PREPARED as OUT

KEYS = ["data.task", "data.max_train_samples", "data.max_eval_samples", "data.seed", "data.calibration_rows",
        "data.custom"]
log = logging.getLogger("fisvd")


def glue_source(task):
    """Where a GLUE task's rows come from: ("local", folder) when a local copy (GLUE_DIR, else
    ../shared/data/glue) holds every TSV of the task, else ("hub", why) (no local copy, or it lacks the
    task: the shared copy has QNLI's dev/test only, no MNLI or QQP). benchmarks/finetune_select.py
    reads the same way."""
    glue_dir, spec = resolve_glue_dir("."), TASKS[task]
    if glue_dir is None:
        return "hub", "no local GLUE copy"
    missing = [n for n in spec.files.values() if not (glue_dir / spec.folder / n).is_file()]
    return ("hub", f"{glue_dir} lacks {spec.folder}/{', '.join(missing)}") if missing else ("local", glue_dir)


def glue(task):
    kind, where = glue_source(task)
    if kind == "local":
        log.info("reading %s from %s", task, where)
        splits, source = load_local(task, where)
    else:
        log.info("%s; loading nyu-mll/glue/%s from the HF hub", where, task)
        try:
            splits, source = load_hf(task)
        except DataError as exc:
            raise DataError(f"{where}, and {exc}") from None
    spec = TASKS[task]
    info = {"num_labels": spec.num_labels, "is_regression": spec.is_regression, "label_names": list(spec.labels)}
    return splits, source, info, splits_of(task)


def custom(task, spec):
    log.info("reading custom task %s from %s", task, spec.hub or ", ".join(
        str(getattr(spec, s)) for s in ("train", "dev", "test") if getattr(spec, s)))
    splits, source, info = load_custom(task, spec)
    return splits, source, info, tuple(splits)


def main(params):
    d = params.data
    spec = d.custom.get(d.task)         # None: a GLUE task
    splits, source, info, names = custom(d.task, spec) if spec else glue(d.task)
    full_rows = {s: len(splits[s]) for s in names}
    splits = {s: subset(splits[s], d.max_train_samples if s == "train" else d.max_eval_samples,
                        d.seed if s == "train" else d.seed + 1) for s in names}
    if d.calibration_rows:              # held out of fine-tuning for the calibrated methods
        splits["train"], splits["calibration"] = hold_out(splits["train"], d.calibration_rows, d.seed + 2)
        names = (*names, "calibration")
    meta = {"task": d.task, **info, "rows": {s: len(splits[s]) for s in names}}
    remove(MANIFEST)
    with atomic_dir(OUT) as tmp:
        for s in names:
            write_jsonl(splits[s], tmp / f"{s}.jsonl")
        write_json(tmp / "meta.json", meta)
    write_json(MANIFEST, {"task": d.task, "source": source, "source_rows": full_rows,
                          "rows": meta["rows"], "labels": {s: label_counts(splits[s], info["is_regression"]) for s in names}})
    log.info("wrote %s: %s", OUT, ", ".join(f"{s} {n} rows" for s, n in meta["rows"].items()))


if __name__ == "__main__":
    run_stage("prepare", __doc__, KEYS, main)
