"""GLUE loading: the real TSVs in ../shared (row counts and labels vs SOURCES.md), the HF path's
conversion, subsets, and malformed-file errors."""
import re

import pytest

from fisvd.data import TASKS, DataError, hf_to_rows, load_local, read_tsv, resolve_glue_dir, subset
from conftest import SHARED_GLUE, write_mrpc

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
