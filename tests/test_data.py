"""GLUE loading: the real TSVs in ../shared (row counts and labels vs SOURCES.md), the HF path's
conversion, MNLI's two dev splits (synthetic folder, fake hub), machine-independent manifests,
prepared folders, subsets, and malformed-file errors."""
import re

import pytest

import json
import shutil

from fisvd.data import (TASKS, DataError, dev_splits, hf_to_rows, load_hf, load_local, load_prepared,
                        read_tsv, resolve_glue_dir, sha256_file, splits_of, subset, write_jsonl)
from conftest import SHARED_GLUE, write_mnli, write_mrpc

FOLDER_TO_TASK = {spec.folder: name for name, spec in TASKS.items()}


def sources_table():
    """(folder, split) -> (rows, label distribution text) parsed from SOURCES.md."""
    out = {}
    for line in (SHARED_GLUE / "SOURCES.md").read_text().splitlines():
        m = re.match(r"\| (\S+)/(train|dev)\.tsv \|[^|]*\|[^|]*\|[^|]*\| (\d+) \|[^|]*\| ([^|]*) \|", line)
        if m:
            out[(m.group(1), m.group(2))] = (int(m.group(3)), m.group(4).strip())
    return out


SOURCES = sources_table() if SHARED_GLUE.is_dir() else {}
needs_shared = pytest.mark.skipif(not SOURCES, reason="../shared/data/glue not present")


@needs_shared
def test_sources_table_covers_the_shared_files():
    present = {(p.parent.name, p.stem) for p in SHARED_GLUE.glob("*/*.tsv") if p.stem in ("train", "dev")}
    assert present and present == set(SOURCES)


@needs_shared
@pytest.mark.parametrize("key", sorted(SOURCES))
def test_real_glue_file_rows_and_labels_match_sources(key):
    folder, split = key
    spec = TASKS[FOLDER_TO_TASK[folder]]
    rows = read_tsv(spec, SHARED_GLUE / folder / f"{split}.tsv")
    n, dist = SOURCES[key]
    assert len(rows) == n
    assert all(isinstance(r["text_a"], str) and r["text_a"] for r in rows)
    assert all((r["text_b"] is None) == (spec.text_b is None) for r in rows)
    if spec.is_regression:
        mean = sum(r["label"] for r in rows) / len(rows)
        assert f"mean {mean:.3f}" in dist and min(r["label"] for r in rows) >= 0
    else:
        expected = {}
        for part in dist.split():
            label, count = part.rsplit(":", 1)
            expected[spec.labels.index(label) if spec.labels else int(label)] = int(count)
        got = {}
        for r in rows:
            got[r["label"]] = got.get(r["label"], 0) + 1
        assert got == expected


@needs_shared
def test_mrpc_quirks_bom_and_quotes():
    rows = read_tsv(TASKS["mrpc"], SHARED_GLUE / "MRPC" / "train.tsv")
    assert rows[0]["text_a"].startswith("Amrozi accused") and rows[0]["label"] == 1
    assert any('"' in r["text_a"] for r in rows)  # stray quotes survive (quoting off)


@needs_shared
def test_load_local_manifest_has_sha256():
    splits, manifest = load_local("rte", SHARED_GLUE)
    assert len(splits["train"]) == 2490 and len(splits["dev"]) == 277
    sums = dict(l.split()[::-1] for l in (SHARED_GLUE / "SHA256SUMS").read_text().splitlines() if l.strip())
    for split in ("train", "dev"):
        assert manifest["files"][split]["sha256"] == sums[f"RTE/{split}.tsv"]


def test_hf_rows_match_local_rows(tmp_path):
    """The HF branch's conversion yields the same rows as the TSV branch for the same examples."""
    write_mrpc(tmp_path)
    local, _ = load_local("mrpc", tmp_path)
    hf_like = [{"sentence1": r["text_a"], "sentence2": r["text_b"], "label": r["label"], "idx": i}
               for i, r in enumerate(local["dev"])]
    assert hf_to_rows(TASKS["mrpc"], hf_like) == local["dev"]
    stsb = [{"sentence1": "a", "sentence2": "b", "label": 3.2, "idx": 0}]
    assert hf_to_rows(TASKS["stsb"], stsb) == [{"text_a": "a", "text_b": "b", "label": 3.2}]
    cola = [{"sentence": "x", "label": 1, "idx": 0}]
    assert hf_to_rows(TASKS["cola"], cola) == [{"text_a": "x", "text_b": None, "label": 1}]


def test_subset_is_seeded_ordered_and_total_when_none():
    rows = [{"i": i} for i in range(100)]
    a, b = subset(rows, 10, 3), subset(rows, 10, 3)
    assert a == b and [r["i"] for r in a] == sorted(r["i"] for r in a) and len(a) == 10
    assert subset(rows, 10, 4) != a and subset(rows, None, 0) is rows and subset(rows, 500, 0) is rows


@pytest.mark.parametrize("content,needle", [
    ("", "empty file"),
    ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n", "no data rows"),
    ("Quality\t#1 ID\t#2 ID\t#1 String\n1\t1\t2\ta\n", "missing column(s) #2 String"),
    ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n7\t1\t2\ta\tb\n", "label '7' not in 0, 1"),
    ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\n", "columns, expected at least 5"),
])
def test_malformed_tsv_errors_name_the_path(tmp_path, content, needle):
    p = tmp_path / "train.tsv"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_tsv(TASKS["mrpc"], p)
    assert needle in str(err.value) and str(p) in str(err.value)


def test_stsb_non_numeric_and_out_of_range_scores(tmp_path):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    p = tmp_path / "dev.tsv"
    p.write_text(head + "0\tg\tf\ty\t0\ts\ts\ta\tb\tfive\n")
    with pytest.raises(DataError, match="not a number"):
        read_tsv(TASKS["stsb"], p)
    p.write_text(head + "0\tg\tf\ty\t0\ts\ts\ta\tb\t7.5\n")
    with pytest.raises(DataError, match=r"outside the STS-B range"):
        read_tsv(TASKS["stsb"], p)


def test_glue_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="GLUE_DIR=.*directory not found"):
        resolve_glue_dir(tmp_path)
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    assert resolve_glue_dir(tmp_path) == tmp_path.resolve()
    with pytest.raises(DataError, match="task folder not found"):
        load_local("cola", tmp_path)
    monkeypatch.delenv("GLUE_DIR")
    project = tmp_path / "proj"
    project.mkdir()
    assert resolve_glue_dir(project) is None
    (tmp_path / "shared" / "data" / "glue").mkdir(parents=True)
    assert resolve_glue_dir(project) == tmp_path / "shared" / "data" / "glue"


def test_dev_splits_and_splits_of():
    for task in TASKS:
        want = ("dev", "dev_mm") if task == "mnli" else ("dev",)
        assert dev_splits(task) == want and splits_of(task) == ("train", *want)
    assert TASKS["mnli"].dev_file == "dev_matched.tsv" and TASKS["rte"].dev_file == "dev.tsv"
    with pytest.raises(DataError, match="unknown GLUE task 'foo'"):
        splits_of("foo")


def test_load_local_mnli_matched_and_mismatched(tmp_path):
    write_mnli(tmp_path, n_train=6, n_dev=4, n_dev_mm=5)
    splits, manifest = load_local("mnli", tmp_path)
    assert tuple(splits) == ("train", "dev", "dev_mm")
    assert [len(splits[s]) for s in splits] == [6, 4, 5]
    assert splits["dev"][1] == {"text_a": "dev_matched premise 1", "text_b": "hypothesis 1", "label": 1}
    assert splits["dev_mm"][2] == {"text_a": "dev_mismatched premise 2", "text_b": "hypothesis 2", "label": 2}
    assert [r["label"] for r in splits["dev_mm"]] == [0, 1, 2, 0, 1]
    assert manifest == {"type": "local_tsv", "files": {
        s: {"path": f"MNLI/{f}", "sha256": sha256_file(tmp_path / "MNLI" / f)}
        for s, f in (("train", "train.tsv"), ("dev", "dev_matched.tsv"), ("dev_mm", "dev_mismatched.tsv"))}}


def test_load_local_mnli_missing_mismatched_names_the_path(tmp_path):
    write_mnli(tmp_path)
    (tmp_path / "MNLI" / "dev_mismatched.tsv").unlink()
    with pytest.raises(DataError) as err:
        load_local("mnli", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "MNLI" / "dev_mismatched.tsv") in msg and "file not found" in msg
    assert "{train.tsv,dev_matched.tsv,dev_mismatched.tsv}" in msg


@pytest.mark.parametrize("task,write", [("mrpc", write_mrpc), ("mnli", write_mnli)])
def test_manifest_has_no_machine_path(tmp_path, task, write):
    """Two copies of one GLUE folder at different absolute paths give identical manifests."""
    a = write(tmp_path / "clone_a" / "glue")
    b = tmp_path / "elsewhere" / "deeper" / "glue"
    shutil.copytree(a, b)
    _, man_a = load_local(task, a)
    _, man_b = load_local(task, b)
    assert man_a == man_b
    text = json.dumps(man_a)
    assert str(tmp_path) not in text and "glue_dir" not in man_a
    assert set(man_a["files"]) == set(splits_of(task))
    assert all(not f["path"].startswith("/") and len(f["sha256"]) == 64 for f in man_a["files"].values())


class FakeSplit(list):
    """Stands in for a `datasets.Dataset` split: iterable of dicts, `.info.version`, `._fingerprint`."""
    def __init__(self, rows, fingerprint):
        super().__init__(rows)
        self._fingerprint = fingerprint
        self.info = type("Info", (), {"version": "1.0.0"})()


def fake_load_dataset(calls):
    def load_dataset(path, config):
        calls.append((path, config))
        if config == "mnli":
            ex = lambda tag, i: {"premise": f"{tag} p{i}", "hypothesis": f"h{i}", "label": i % 3, "idx": i}
            names = {"train": 3, "validation_matched": 2, "validation_mismatched": 4,
                     "test_matched": 1, "test_mismatched": 1}
        else:
            ex = lambda tag, i: {"sentence1": f"{tag} a{i}", "sentence2": f"b{i}", "label": i % 2, "idx": i}
            names = {"train": 3, "validation": 2, "test": 1}
        return {n: FakeSplit([ex(n, i) for i in range(k)], f"fp-{n}") for n, k in names.items()}
    return load_dataset


def test_load_hf_mnli_returns_both_dev_splits(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset(calls))
    splits, manifest = load_hf("mnli")
    assert calls == [("nyu-mll/glue", "mnli")]
    assert tuple(splits) == ("train", "dev", "dev_mm")
    assert [len(splits[s]) for s in splits] == [3, 2, 4]
    assert splits["dev_mm"][3] == {"text_a": "validation_mismatched p3", "text_b": "h3", "label": 0}
    assert splits["dev"][1] == {"text_a": "validation_matched p1", "text_b": "h1", "label": 1}
    assert manifest["fingerprint"] == {"train": "fp-train", "dev": "fp-validation_matched",
                                       "dev_mm": "fp-validation_mismatched"}
    assert manifest["revision"] == "1.0.0" and manifest["config"] == "mnli"

    splits, manifest = load_hf("mrpc")
    assert tuple(splits) == ("train", "dev") and len(splits["dev"]) == 2
    assert manifest["fingerprint"] == {"train": "fp-train", "dev": "fp-validation"}


def test_load_prepared_returns_every_split_in_meta(tmp_path):
    write_mnli(tmp_path / "glue")
    splits, _ = load_local("mnli", tmp_path / "glue")
    out = tmp_path / "prepared"
    out.mkdir()
    for s, rows in splits.items():
        write_jsonl(rows, out / f"{s}.jsonl")
    meta = {"task": "mnli", "rows": {s: len(r) for s, r in splits.items()}}
    (out / "meta.json").write_text(json.dumps(meta))
    got_meta, got = load_prepared(out)
    assert got_meta == meta and got == splits and tuple(got) == ("train", "dev", "dev_mm")

    # an older two-split folder still loads (only what its meta lists)
    (out / "meta.json").write_text(json.dumps({"task": "mnli", "rows": {"train": 6, "dev": 4}}))
    assert tuple(load_prepared(out)[1]) == ("train", "dev")

    (out / "meta.json").write_text(json.dumps(meta))
    (out / "dev_mm.jsonl").unlink()
    with pytest.raises(DataError) as err:
        load_prepared(out)
    assert str(out / "dev_mm.jsonl") in str(err.value) and "'dev_mm'" in str(err.value)


def test_hold_out_is_a_seeded_partition_in_file_order():
    from fisvd.data import DataError, hold_out
    rows = [{"i": i} for i in range(20)]
    rest, held = hold_out(rows, 5, 7)
    r, h = [x["i"] for x in rest], [x["i"] for x in held]
    assert len(h) == 5 and set(r).isdisjoint(h) and sorted(r + h) == list(range(20))
    assert r == sorted(r) and h == sorted(h)                   # both keep the file order
    assert h == sorted(__import__("random").Random(7).sample(range(20), 5))   # the seed's draw
    assert h != list(range(5)) and [x["i"] for x in hold_out(rows, 5, 8)[1]] != h
    for n in (0, 20):
        with pytest.raises(DataError, match="data.calibration_rows"):
            hold_out(rows, n, 7)


def test_prepare_reads_from_the_hub_a_task_the_local_copy_lacks(tmp_path, monkeypatch):
    """../shared/data/glue holds QNLI's dev/test only and no MNLI: prepare loads those from nyu-mll/glue
    (a task the copy holds stays local), whether the copy was found beside the project or named by
    GLUE_DIR (the Makefile sets it); offline, the error names both the missing files and the hub."""
    import importlib
    from fisvd.data import DataError
    prepare = importlib.import_module("stages.prepare")
    shared = tmp_path / "glue"
    (shared / "QNLI").mkdir(parents=True)
    for name in ("dev.tsv", "test.tsv"):
        (shared / "QNLI" / name).write_text("index\tquestion\tsentence\tlabel\n")
    write_mrpc(shared)
    hub = []
    monkeypatch.setattr(prepare, "load_hf", lambda task: (hub.append(task) or ({"train": [], "dev": []}, {"type": "hf_hub"})))
    for env in (str(shared), None):          # GLUE_DIR (real resolution) first, then the copy beside the project
        hub.clear()
        if env:
            monkeypatch.setenv("GLUE_DIR", env)
        else:
            monkeypatch.delenv("GLUE_DIR", raising=False)
            monkeypatch.setattr(prepare, "resolve_glue_dir", lambda root: shared)
        assert prepare.glue_source("qnli") == ("hub", f"{shared} lacks QNLI/train.tsv")
        assert prepare.glue("qnli")[1] == {"type": "hf_hub"} and prepare.glue("mnli")[1] == {"type": "hf_hub"}
        assert prepare.glue("mrpc")[1]["type"] == "local_tsv" and hub == ["qnli", "mnli"]

    def offline(task):
        raise DataError(f"nyu-mll/glue/{task}: could not load from the HF hub (ConnectionError)")
    monkeypatch.setattr(prepare, "load_hf", offline)
    with pytest.raises(DataError, match=r"lacks QNLI/train.tsv, and nyu-mll/glue/qnli: could not load"):
        prepare.glue("qnli")
