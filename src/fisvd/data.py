"""GLUE loading: official TSVs (offline) or `nyu-mll/glue` via `datasets`, to one schema.

Every example becomes `{"text_a": str, "text_b": str | None, "label": int | float}` with GLUE's
label ids (the ids of HF `nyu-mll/glue`), in file order; STS-B labels are float scores in [0, 5].
Splits (`splits_of`): `train` plus the task's dev splits (`dev_splits`): `dev` for every task;
MNLI has two, `dev` = dev_matched.tsv (HF `validation_matched`) and `dev_mm` = dev_mismatched.tsv
(HF `validation_mismatched`). The source manifest names files relative to the GLUE folder (plus
their sha256), never an absolute machine path, so it is identical on every clone. TSVs are read
with quoting off (GLUE text has stray `"`), MRPC's UTF-8 byte-order mark is stripped and CoLA's
header-less files are read by position.

Source resolution (`resolve_glue_dir`): env `GLUE_DIR` if set, else `../shared/data/glue` beside
the project when present, else the HF hub.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import paths
from .errors import DataError

csv.field_size_limit(1 << 24)




DEV = (("dev", "dev.tsv", "validation"),)
MNLI_DEV = (("dev", "dev_matched.tsv", "validation_matched"),
            ("dev_mm", "dev_mismatched.tsv", "validation_mismatched"))


@dataclass(frozen=True)
class TaskSpec:
    name: str                     # our id (params data.task)
    folder: str                   # GLUE folder name
    text_a: str | int             # TSV column (header name, or index when header-less)
    text_b: str | int | None
    label: str | int
    labels: tuple[str, ...] = ()  # TSV label strings in GLUE id order; () = already int ids / float
    num_labels: int = 2
    header: bool = True
    hf_text: tuple[str, Optional[str]] = ("sentence1", "sentence2")
    dev: tuple[tuple[str, str, str], ...] = DEV   # (split, TSV file, HF split) per dev split

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def dev_file(self) -> str:
        """The main dev split's TSV (MNLI: matched)."""
        return self.dev[0][1]

    @property
    def hf_dev(self) -> str:
        return self.dev[0][2]

    @property
    def files(self) -> dict[str, str]:
        """split -> TSV file name inside the task folder."""
        return {"train": "train.tsv", **{s: f for s, f, _ in self.dev}}


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("cola", "CoLA", 3, None, 1, header=False, hf_text=("sentence", None)),
    TaskSpec("sst2", "SST-2", "sentence", None, "label", hf_text=("sentence", None)),
    TaskSpec("mrpc", "MRPC", "#1 String", "#2 String", "Quality"),
    TaskSpec("stsb", "STS-B", "sentence1", "sentence2", "score", num_labels=1),
    TaskSpec("qqp", "QQP", "question1", "question2", "is_duplicate",
             hf_text=("question1", "question2")),
    TaskSpec("mnli", "MNLI", "sentence1", "sentence2", "gold_label",
             labels=("entailment", "neutral", "contradiction"), num_labels=3,
             hf_text=("premise", "hypothesis"), dev=MNLI_DEV),
    TaskSpec("qnli", "QNLI", "question", "sentence", "label",
             labels=("entailment", "not_entailment"), hf_text=("question", "sentence")),
    TaskSpec("rte", "RTE", "sentence1", "sentence2", "label",
             labels=("entailment", "not_entailment")),
    TaskSpec("wnli", "WNLI", "sentence1", "sentence2", "label"),
]}

SPLITS = ("train", "dev")   # the splits every task has; a task's full list is splits_of(task)


def _spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise DataError(f"unknown GLUE task {task!r}; one of {', '.join(TASKS)}")
    return TASKS[task]


def dev_splits(task) -> tuple[str, ...]:
    """The task's dev split names: ("dev",), or ("dev", "dev_mm") for MNLI; a custom task's Scoring
    (fisvd.metrics) names its own."""
    if not isinstance(task, str):
        return tuple(task.splits)
    return tuple(s for s, _, _ in _spec(task).dev)


def splits_of(task: str) -> tuple[str, ...]:
    """All split names of a task: ("train", *dev_splits(task))."""
    return ("train", *dev_splits(task))


def resolve_glue_dir(project_root: str | Path = ".") -> Optional[Path]:
    """GLUE_DIR env, else ../shared/data/glue beside the project (the nearest folder at or above
    `project_root` holding .dvc/), else None (= HF hub)."""
    env = os.environ.get("GLUE_DIR")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"GLUE_DIR={env}: directory not found; point it at a folder holding "
                            f"<TASK>/train.tsv and dev.tsv, or unset it to load nyu-mll/glue from the hub")
        return path.resolve()
    sibling = paths.project_root(project_root).parent / "shared" / "data" / "glue"   # grid run folders:
                                                                                    # the project's root
    return sibling if sibling.is_dir() else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def utf8_text(path: Path, name: str | Path | None = None) -> str:
    """The file's text (a UTF-8 byte-order mark dropped); DataError naming the first bad byte."""
    data = path.read_bytes()
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = bom + exc.start
        raise DataError(f"{name or path}: not UTF-8 text (byte 0x{data[at]:02x} at offset {at}); "
                        f"re-save it as UTF-8") from None


def _convert_label(spec: TaskSpec, raw: str, path: Path, line: int) -> int | float:
    raw = raw.strip()
    if spec.is_regression:
        try:
            value = float(raw)
        except ValueError:
            raise DataError(f"{path}:{line}: score {raw!r} is not a number") from None
        if not (0.0 <= value <= 5.0):
            raise DataError(f"{path}:{line}: score {value} outside the STS-B range [0, 5]")
        return value
    if spec.labels:
        if raw not in spec.labels:
            raise DataError(f"{path}:{line}: label {raw!r} not in {', '.join(spec.labels)}")
        return spec.labels.index(raw)
    allowed = [str(i) for i in range(spec.num_labels)]
    if raw not in allowed:
        raise DataError(f"{path}:{line}: label {raw!r} not in {', '.join(allowed)}")
    return int(raw)


def read_tsv(spec: TaskSpec, path: Path) -> list[dict]:
    """Read one GLUE TSV into our schema; raises DataError naming the path on any problem."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected GLUE layout <GLUE_DIR>/{spec.folder}/"
                        f"{{{','.join(spec.files.values())}}})")
    rows = list(csv.reader(io.StringIO(utf8_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    if spec.header:
        if not rows:
            raise DataError(f"{path}: empty file (no header row)")
        header = [h.strip() for h in rows[0]]
        wanted = [c for c in (spec.text_a, spec.text_b, spec.label) if c is not None]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(map(str, missing))}; header has "
                            f"{', '.join(header)}")
        idx = {c: header.index(c) for c in wanted}
        body, first_line = rows[1:], 2
    else:
        idx = {c: c for c in (spec.text_a, spec.text_b, spec.label) if c is not None}
        body, first_line = rows, 1
    if not body:
        raise DataError(f"{path}: no data rows")
    need = max(idx.values()) + 1
    out = []
    for n, row in enumerate(body, start=first_line):
        if len(row) < need:
            raise DataError(f"{path}:{n}: {len(row)} columns, expected at least {need}")
        out.append({
            "text_a": row[idx[spec.text_a]],
            "text_b": row[idx[spec.text_b]] if spec.text_b is not None else None,
            "label": _convert_label(spec, row[idx[spec.label]], path, n),
        })
    return out


def load_local(task: str, glue_dir: Path) -> tuple[dict[str, list[dict]], dict]:
    """Load every split (`splits_of(task)`) of `task` from a GLUE TSV folder; returns (splits,
    source manifest). The manifest holds each file's path relative to the GLUE folder and its
    sha256 only (no absolute path), so two copies of one folder give identical manifests."""
    spec = _spec(task)
    folder = Path(glue_dir) / spec.folder
    if not folder.is_dir():
        raise DataError(f"{folder}: task folder not found in GLUE_DIR {glue_dir}")
    files = {s: folder / name for s, name in spec.files.items()}
    splits = {s: read_tsv(spec, p) for s, p in files.items()}
    manifest = {"type": "local_tsv",
                "files": {s: {"path": f"{spec.folder}/{p.name}", "sha256": sha256_file(p)}
                          for s, p in files.items()}}
    return splits, manifest


def hf_to_rows(spec: TaskSpec, dataset) -> list[dict]:
    """Convert one `nyu-mll/glue` split (any iterable of dicts) into our schema."""
    a, b = spec.hf_text
    rows = []
    for ex in dataset:
        label = float(ex["label"]) if spec.is_regression else int(ex["label"])
        rows.append({"text_a": ex[a], "text_b": ex[b] if b else None, "label": label})
    return rows


def load_hf(task: str) -> tuple[dict[str, list[dict]], dict]:
    """Load every split (`splits_of(task)`) of `task` from the HF hub dataset nyu-mll/glue."""
    import datasets

    spec = _spec(task)
    try:
        ds = datasets.load_dataset("nyu-mll/glue", task)
    except Exception as exc:  # offline, hub down, ...
        raise DataError(f"nyu-mll/glue/{task}: could not load from the HF hub ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); set GLUE_DIR to a local GLUE "
                        f"TSV folder to work offline") from None
    hf_split = {"train": "train", **{s: h for s, _, h in spec.dev}}
    missing = [h for h in hf_split.values() if h not in ds]
    if missing:
        raise DataError(f"nyu-mll/glue/{task}: split(s) {', '.join(missing)} not in the hub dataset "
                        f"(it has {', '.join(ds)})")
    splits = {s: hf_to_rows(spec, ds[h]) for s, h in hf_split.items()}
    info = ds["train"].info
    manifest = {"type": "hf_hub", "dataset": "nyu-mll/glue", "config": task,
                "revision": getattr(info, "version", None) and str(info.version),
                "fingerprint": {s: ds[h]._fingerprint for s, h in hf_split.items()}}
    return splits, manifest


def subset(rows: list[dict], n: Optional[int], seed: int) -> list[dict]:
    """Seeded random subset of size n, kept in original order (n=None or >= len: all rows)."""
    if n is None or n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def hold_out(rows: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(the rest, `n` seeded rows held out), both in original order."""
    if not 0 < n < len(rows):
        raise DataError(f"data.calibration_rows: {n} of {len(rows)} training rows; hold out fewer than the split")
    held = set(random.Random(seed).sample(range(len(rows)), n))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def label_counts(rows: list[dict], regression: bool) -> dict:
    """Manifest summary of one split's labels: min / max / mean (regression) or the count of each
    class id; unlabelled rows (a custom task's test split) are left out."""
    vals = [r["label"] for r in rows if r["label"] is not None]
    if not vals:
        return {}
    if regression:
        return {"min": min(vals), "max": max(vals), "mean": round(sum(vals) / len(vals), 4)}
    counts: dict[str, int] = {}
    for v in vals:
        counts[str(v)] = counts.get(str(v), 0) + 1
    return dict(sorted(counts.items()))


def write_jsonl(rows: list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load_prepared(data_dir: str | Path) -> tuple[dict, dict[str, list[dict]]]:
    """Read the prepare stage's output: (meta, {split: rows}) for every split that meta.json lists
    in `meta["rows"]` (e.g. train, dev, and MNLI's dev_mm); a meta without `rows` means SPLITS."""
    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: not found; run `dvc repro prepare` first")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc}); re-run `dvc repro prepare`") from None
    names = list(meta.get("rows") or SPLITS)
    out = {}
    for s in names:
        path = data_dir / f"{s}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: not found but {meta_path} lists split {s!r}; "
                            f"re-run `dvc repro prepare`")
        out[s] = read_jsonl(path)
    return meta, out


def tokenize(tokenizer, rows: list[dict], max_length: int, with_labels: bool = True) -> list[dict]:
    """Tokenise rows (no padding: batches are padded dynamically by `collate`)."""
    a = [r["text_a"] for r in rows]
    b = [r["text_b"] for r in rows] if rows and rows[0]["text_b"] is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_length)
    feats = [{k: enc[k][i] for k in enc.keys()} for i in range(len(rows))]
    if with_labels:
        for f, r in zip(feats, rows):
            f["labels"] = r["label"]
    return feats


def dev_features(task: str, splits: dict[str, list[dict]], tokenizer, max_length: int) -> dict[str, list[dict]]:
    """Every dev split of `task` (MNLI: matched and mismatched), tokenised with labels."""
    return {s: tokenize(tokenizer, splits[s], max_length) for s in dev_splits(task)}


def collate(tokenizer):
    """Dynamic-padding collator (pads each batch to its longest sequence)."""
    from transformers import DataCollatorWithPadding
    return DataCollatorWithPadding(tokenizer)


def batches(features: list[dict], batch_size: int, collator):
    """Fixed-order (unshuffled) padded batches."""
    for i in range(0, len(features), batch_size):
        yield collator(features[i:i + batch_size])


def by_length(features: list[dict]) -> list[int]:
    """Indices of `features` sorted by token count (stable): batching in this order pads far less
    (dev sets, calibration slices); results are put back in the original order by the caller."""
    return sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))


def calibration_rows(splits: dict[str, list[dict]]) -> list[dict]:
    """The rows the calibrated methods (the `measured` allocator's slice, kfac_seq) draw from: the
    `calibration` split that prepare holds out of fine-tuning (data.calibration_rows > 0), else the
    training rows (seen in fine-tuning)."""
    return splits.get("calibration") or splits["train"]


SLICE_SEED, SLICE_BATCH = 0, 32          # training slices: seeded subset, batches of 32 in length order


def training_slice(train_rows: list[dict], n: int, tokenizer, max_length: int) -> list[dict]:
    """A seeded subset of `n` TRAINING rows (never dev), tokenised and batched in token-length order
    (far less padding than file order): the `measured` allocator's slice (its Δ is a mean over
    examples, so the order does not change what is measured) and kfac_seq's calibration rows."""
    feats = tokenize(tokenizer, subset(train_rows, n, SLICE_SEED), max_length)
    return list(batches([feats[i] for i in by_length(feats)], SLICE_BATCH, collate(tokenizer)))
