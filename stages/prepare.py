"""prepare: GLUE task → data/prepared/{train,dev}.jsonl + meta.json, manifest in metrics/prepare/.

Source: env GLUE_DIR (GLUE TSV layout), else ../shared/data/glue beside the project, else
`datasets.load_dataset("nyu-mll/glue", task)`. Both give identical rows (see fisvd.data).
The committed manifest metrics/prepare/data.json records the source, the sha256 of every source
file (or the HF fingerprint) and row counts, so git shows which data each result came from.
"""
import logging

from fisvd.cli import run_stage
from fisvd.data import TASKS, label_counts, load_hf, load_local, resolve_glue_dir, splits_of, subset, write_jsonl
from fisvd.io import atomic_dir, remove, write_json
from fisvd.paths import MANIFEST, PREPARED as OUT

KEYS = ["data.task", "data.max_train_samples", "data.max_eval_samples", "data.seed"]
log = logging.getLogger("fisvd")


def main(params):
    d = params.data
    spec = TASKS[d.task]
    glue_dir = resolve_glue_dir(".")
    if glue_dir is not None:
        log.info("reading %s from %s", d.task, glue_dir)
        splits, source = load_local(d.task, glue_dir)
    else:
        log.info("no local GLUE copy; loading nyu-mll/glue/%s from the HF hub", d.task)
        splits, source = load_hf(d.task)
    remove(MANIFEST)
    names = splits_of(d.task)
    full_rows = {s: len(splits[s]) for s in names}
    splits = {s: subset(splits[s], d.max_train_samples if s == "train" else d.max_eval_samples,
                        d.seed if s == "train" else d.seed + 1) for s in names}
    meta = {"task": d.task, "num_labels": spec.num_labels, "is_regression": spec.is_regression,
            "label_names": list(spec.labels), "rows": {s: len(splits[s]) for s in names}}
    with atomic_dir(OUT) as tmp:
        for s in names:
            write_jsonl(splits[s], tmp / f"{s}.jsonl")
        write_json(tmp / "meta.json", meta)
    write_json(MANIFEST, {"task": d.task, "source": source, "source_rows": full_rows,
                          "rows": meta["rows"], "labels": {s: label_counts(spec, splits[s]) for s in names}})
    log.info("wrote %s: train %d rows, dev %d rows", OUT, meta["rows"]["train"], meta["rows"]["dev"])


if __name__ == "__main__":
    run_stage("prepare", __doc__, KEYS, main)
