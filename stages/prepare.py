"""prepare: GLUE task → data/prepared/{train,dev}.jsonl + meta.json, manifest in metrics/prepare/.

Source: env GLUE_DIR (GLUE TSV layout), else ../shared/data/glue beside the project, else
`datasets.load_dataset("nyu-mll/glue", task)`. Both give identical rows (see fisvd.data).
The committed manifest metrics/prepare/data.json records the source, the sha256 of every source
file (or the HF fingerprint) and row counts, so git shows which data each result came from.
"""
import logging

from fisvd.cli import run_stage
from fisvd.data import SPLITS, TASKS, label_counts, load_hf, load_local, resolve_glue_dir, subset, write_jsonl
from fisvd.io import atomic_dir, remove, write_json

OUT, MANIFEST = "data/prepared", "metrics/prepare/data.json"
log = logging.getLogger("fisvd")


def main(params):
    d = params.data
    spec = TASKS[d.task]
    glue_dir = resolve_glue_dir(".")
    remove(MANIFEST)
    if glue_dir is not None:
        log.info("reading %s from %s", d.task, glue_dir)
        splits, source = load_local(d.task, glue_dir)
    else:
        log.info("no local GLUE copy; loading nyu-mll/glue/%s from the HF hub", d.task)
        splits, source = load_hf(d.task)
    full_rows = {s: len(splits[s]) for s in SPLITS}
    splits = {"train": subset(splits["train"], d.max_train_samples, d.seed),
              "dev": subset(splits["dev"], d.max_eval_samples, d.seed + 1)}
    meta = {"task": d.task, "num_labels": spec.num_labels, "is_regression": spec.is_regression,
            "label_names": list(spec.labels), "rows": {s: len(splits[s]) for s in SPLITS}}
    with atomic_dir(OUT) as tmp:
        for s in SPLITS:
            write_jsonl(splits[s], tmp / f"{s}.jsonl")
        write_json(tmp / "meta.json", meta)
    write_json(MANIFEST, {"task": d.task, "source": source, "source_rows": full_rows,
                          "rows": meta["rows"], "labels": {s: label_counts(spec, splits[s]) for s in SPLITS}})
    log.info("wrote %s: train %d rows, dev %d rows", OUT, meta["rows"]["train"], meta["rows"]["dev"])


if __name__ == "__main__":
    run_stage("prepare", __doc__, ["data.task", "data.max_train_samples", "data.max_eval_samples", "data.seed"], main)
