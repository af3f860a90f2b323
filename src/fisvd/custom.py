"""Your own data: a `data.custom.<name>` task (fisvd.params.CustomTask) → rows in fisvd's schema.

Sources: local CSV, TSV, JSON Lines or Parquet files (`train`, `dev`, optional `test`; paths relative
to the project root, format from the extension or `format`), or a hub dataset (`hub` id, `config`,
and `train` / `dev` / `test` as its split names) through `datasets.load_dataset`.

Rows become `{"text_a": str, "text_b": str | None, "label": int | float | None}` (one or two `text`
columns, the `label` column). Classification: labels are compared as strings (1 and "1" alike); the
label set is `labels` when given (its order = class ids) else the sorted labels of train (numeric
order when all are integers); it is saved with the model as id2label / label2id. Regression: labels
are floats. `test` may lack labels (None; a test label -1, the hub's "no label", too).

Every problem raises `DataError` with one line naming the file (and line) before prepare writes
anything: missing file or column, a file that is not UTF-8, an unparsable row (a CSV/TSV row with
another number of fields than the header, a JSON Lines line that is not an object, an unreadable
Parquet file), an empty split, an empty text, a missing label, a dev label never seen in train, one
class only, a non-numeric regression label, f1 (binary) on more than two classes.

The manifest (`metrics/prepare/data.json` `source`) records each file's path and sha256 (a hub
dataset: its id, config and fingerprints), so git shows which data a result came from; prepare
depends on data/custom/ (dvc.yaml), so editing a file there re-runs the pipeline from prepare.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from .data import sha256_file, utf8_text
from .errors import DataError
from .paths import project_root

SPLIT_KEYS = ("train", "dev", "test")


def read_table(path: Path, fmt: str, name: str | None = None) -> list[tuple[int, dict]]:
    """(line or row number, record) of every data row of a local file (`name`: how messages call it)."""
    path, shown = Path(path), name or str(path)
    if not path.is_file():
        raise DataError(f"{shown}: file not found")
    if fmt == "parquet":
        import pandas as pd
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise DataError(f"{shown}: not a readable Parquet file ({type(exc).__name__})") from None
        return [(i + 1, r) for i, r in enumerate(frame.to_dict("records"))]
    text = utf8_text(path, shown)
    if fmt == "jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{shown}:{n}: unparsable row, not JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{shown}:{n}: unparsable row, a JSON {type(rec).__name__} instead of an object")
            out.append((n, rec))
        return out
    # TSV: tab-separated, no quoting (a field cannot hold a tab; a `"` is text, as in GLUE's TSVs); CSV: RFC 4180
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",", strict=True,
                        quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
    try:
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise DataError(f"{shown}:{reader.line_num}: unparsable row ({exc})") from None
    rows = [(n, r) for n, r in rows if r]            # blank lines
    if not rows:
        raise DataError(f"{shown}: empty file (no header row)")
    header = [h.strip() for h in rows[0][1]]
    out = []
    for n, row in rows[1:]:
        if len(row) != len(header):
            raise DataError(f"{shown}:{n}: unparsable row, {len(row)} fields where the header has {len(header)}"
                            + ("" if len(row) < len(header) else " (a TSV field cannot hold a tab)" if fmt == "tsv"
                               else " (quote fields holding the delimiter)"))
        out.append((n, dict(zip(header, row))))
    return out


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        (isinstance(value, str) and not value.strip())


def _label_key(value) -> str:
    """Labels compare as strings; 1, 1.0, "1" and "1.0" are one class."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def to_rows(spec, records: list[tuple[int, dict]], where: str, split: str) -> list[dict]:
    """fisvd rows from (line, record) pairs; labels kept raw (str / float) until `encode_labels`."""
    if not records:
        raise DataError(f"{where}: no data rows in the {split} split")
    columns = list(spec.text) + [spec.label]
    first = records[0][1]
    absent = [c for c in columns if c not in first and not (split == "test" and c == spec.label)]
    if absent:
        raise DataError(f"{where}: missing column(s) {', '.join(absent)}; it has {', '.join(map(str, first))}")
    out = []
    for n, rec in records:
        texts = []
        for c in spec.text:
            v = rec.get(c)
            if _missing(v):
                raise DataError(f"{where}:{n}: empty text in column {c}")
            texts.append(str(v))
        label = rec.get(spec.label)
        if _missing(label):
            if split != "test":
                raise DataError(f"{where}:{n}: no label in column {spec.label}")
            label = None
        elif spec.problem == "regression":
            try:
                label = float(label)
            except (TypeError, ValueError):
                raise DataError(f"{where}:{n}: label {label!r} in column {spec.label} is not a number "
                                f"(problem: regression)") from None
            if not math.isfinite(label):
                raise DataError(f"{where}:{n}: label {label!r} is not a finite number")
        else:
            label = _label_key(label)
        out.append({"text_a": texts[0], "text_b": texts[1] if len(texts) > 1 else None, "label": label,
                    "_line": n})
    return out


def label_set(spec, train: list[dict], where: str) -> tuple[str, ...]:
    seen = sorted({r["label"] for r in train})
    if spec.labels is not None:
        names = tuple(_label_key(x) for x in spec.labels)
        unknown = [x for x in seen if x not in names]
        if unknown:
            raise DataError(f"{where}: train label(s) {', '.join(map(repr, unknown[:5]))} not in labels "
                            f"{list(names)}")
    else:
        try:
            names = tuple(sorted(seen, key=int))      # integer labels: numeric order
        except ValueError:
            names = tuple(seen)
    if len(seen) < 2:
        raise DataError(f"{where}: the train split has one class only ({seen[0]!r}); a classifier needs two or more")
    if "f1" in spec.metric and len(names) != 2:
        raise DataError(f"{where}: metric f1 is binary F1 but there are {len(names)} classes; use f1_macro")
    return names


def load_custom(name: str, spec, root: str | Path = ".") -> tuple[dict[str, list[dict]], dict, dict]:
    """(splits {train, dev[, test]}: rows, source manifest, task info {num_labels, is_regression,
    label_names, metrics}) of the custom task `name` (`spec`: its params section)."""
    splits, where = {}, {}
    if spec.hub is not None:
        raw, manifest = _load_hub(name, spec)
        for split, recs in raw.items():
            where[split] = f"{spec.hub}[{getattr(spec, split)}]"
            splits[split] = to_rows(spec, recs, where[split], split)
    else:
        root = project_root(root)
        files = {}
        for split in SPLIT_KEYS:
            rel = getattr(spec, split)
            if rel is None:
                continue
            path = Path(rel) if Path(rel).is_absolute() else root / rel
            where[split] = str(rel)
            splits[split] = to_rows(spec, read_table(path, spec.file_format(rel), str(rel)), where[split], split)
            files[split] = {"path": str(rel), "sha256": sha256_file(path)}
        manifest = {"type": "local_files", "files": files}
    if spec.problem == "regression":
        names: tuple[str, ...] = ()
    else:
        names = label_set(spec, splits["train"], where["train"])
        ids = {x: i for i, x in enumerate(names)}
        for split, rows in splits.items():
            for r in rows:
                if split == "test" and r["label"] == "-1" and "-1" not in ids:
                    r["label"] = None                 # the hub's "no label" in test splits (GLUE's too)
                if r["label"] is None:
                    continue
                if r["label"] not in ids:
                    raise DataError(f"{where[split]}:{r['_line']}: {split} label {r['label']!r} never seen in train "
                                    f"(train has {', '.join(names)})")
                r["label"] = ids[r["label"]]
    for rows in splits.values():
        for r in rows:
            del r["_line"]
    info = {"num_labels": 1 if spec.problem == "regression" else len(names),
            "is_regression": spec.problem == "regression", "label_names": list(names),
            "metrics": list(spec.metric)}
    return splits, manifest, info


def _named(rec: dict, label: str, names) -> dict:
    """A hub row with its ClassLabel id replaced by the class name (-1, the hub's "no label": None)."""
    if names and isinstance(rec.get(label), int):
        rec[label] = names[rec[label]] if 0 <= rec[label] < len(names) else None
    return rec


def _load_hub(name: str, spec) -> tuple[dict[str, list[tuple[int, dict]]], dict]:
    import datasets

    try:
        ds = datasets.load_dataset(spec.hub, spec.config)
    except Exception as exc:  # offline, unknown id, ...
        raise DataError(f"data.custom.{name}.hub: {spec.hub!r} could not be loaded ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); use local files when offline") from None
    out, fingerprints = {}, {}
    for split in SPLIT_KEYS:
        hub_split = getattr(spec, split)
        if hub_split is None:
            continue
        if hub_split not in ds:
            raise DataError(f"data.custom.{name}.{split}: {spec.hub} has no split {hub_split!r} (it has "
                            f"{', '.join(ds)})")
        names = getattr(ds[hub_split].features.get(spec.label), "names", None)   # a ClassLabel: its class names
        out[split] = [(i + 1, _named(dict(r), spec.label, names)) for i, r in enumerate(ds[hub_split])]
        fingerprints[split] = getattr(ds[hub_split], "_fingerprint", None)
    manifest = {"type": "hf_hub", "dataset": spec.hub, "config": spec.config,
                "splits": {s: getattr(spec, s) for s in out}, "fingerprint": fingerprints}
    return out, manifest
