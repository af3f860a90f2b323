"""Your own data (issue 21): data.custom tasks from CSV / TSV / JSON Lines / Parquet files or a hub
dataset, their metrics, and every bad-data case stopping prepare with one line (exit 2) before any
output is touched. Every test writes its own files."""
from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import yaml

from fisvd.errors import DataError, ParamError
from fisvd.metrics import METRICS, Scoring, constant_score, glue_metrics, task_metrics
from fisvd.params import METRICS as PARAM_METRICS, parse_params
from fisvd.report import split_scores
from conftest import ROOT

TICKETS = [("printer jams", "the printer on floor 2 jams", "hardware"),
           ("vpn down", "cannot reach the vpn from home", "network"),
           ("new laptop", "my laptop screen is broken", "hardware"),
           ("wifi slow", "the office wifi is very slow", "network"),
           ("password", "i forgot my password again", "accounts"),
           ("locked out", "my account is locked", "accounts")]
SPEC = {"train": "data/custom/tickets/train.csv", "dev": "data/custom/tickets/dev.csv",
        "text": ["subject", "body"], "label": "team", "problem": "classification", "metric": ["f1_macro"]}


def write_csv(path, rows, header=("subject", "body", "team"), delimiter=","):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def project(tmp_path, spec=None, task="tickets", train=TICKETS * 3, dev=TICKETS):
    """A folder with .dvc/, the shipped params.yaml with `spec` as data.custom.<task>, the CSVs."""
    (tmp_path / ".dvc").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data/custom").mkdir(parents=True, exist_ok=True)   # committed in a real project
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["task"] = task
    params["data"]["custom"] = {task: dict(SPEC if spec is None else spec)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if train is not None:
        write_csv(tmp_path / "data/custom/tickets/train.csv", train)
    if dev is not None:
        write_csv(tmp_path / "data/custom/tickets/dev.csv", dev)
    return tmp_path


def prepare(repo, monkeypatch, capsys=None):
    """The prepare stage, in-process through fisvd.cli.run_stage: (exit code, stderr lines)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import stages.prepare as st
    from fisvd.cli import run_stage
    monkeypatch.chdir(repo)
    monkeypatch.setattr(sys, "argv", ["prepare"])
    if capsys is not None:
        capsys.readouterr()
    try:
        run_stage("prepare", st.__doc__, st.KEYS, st.main)
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines() if capsys is not None else []
    return code, err


def read_prepared(repo):
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    rows = {s: [json.loads(x) for x in (repo / f"data/prepared/{s}.jsonl").read_text().splitlines()]
            for s in meta["rows"]}
    return meta, rows


def test_csv_classification_two_text_columns_string_labels(tmp_path, monkeypatch):
    repo = project(tmp_path)
    assert prepare(repo, monkeypatch)[0] == 0
    meta, rows = read_prepared(repo)
    assert meta["task"] == "tickets" and meta["label_names"] == ["accounts", "hardware", "network"]
    assert meta["num_labels"] == 3 and meta["is_regression"] is False and meta["metrics"] == ["f1_macro"]
    assert meta["rows"] == {"train": 18, "dev": 6}
    assert rows["dev"][0] == {"text_a": "printer jams", "text_b": "the printer on floor 2 jams", "label": 1}
    manifest = json.loads((repo / "metrics/prepare/data.json").read_text())
    import hashlib
    sha = hashlib.sha256((repo / "data/custom/tickets/train.csv").read_bytes()).hexdigest()
    assert manifest["source"]["files"]["train"] == {"path": "data/custom/tickets/train.csv", "sha256": sha}
    assert manifest["labels"]["dev"] == {"0": 2, "1": 2, "2": 2}


def test_every_file_format_gives_the_same_rows(tmp_path, monkeypatch):
    import pandas as pd
    ref = project(tmp_path / "csv")
    prepare(ref, monkeypatch)
    want = read_prepared(ref)[1]
    for fmt in ("tsv", "jsonl", "parquet"):
        repo = project(tmp_path / fmt, {**SPEC, "train": f"data/custom/t/train.{fmt}",
                                        "dev": f"data/custom/t/dev.{fmt}"}, train=None, dev=None)
        for split, data in (("train", TICKETS * 3), ("dev", TICKETS)):
            path = repo / f"data/custom/t/{split}.{fmt}"
            frame = pd.DataFrame(data, columns=["subject", "body", "team"])
            path.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "tsv":
                write_csv(path, data, delimiter="\t")
            elif fmt == "jsonl":
                path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
            else:
                frame.to_parquet(path)
        assert prepare(repo, monkeypatch)[0] == 0, fmt
        assert read_prepared(repo)[1] == want, fmt


def test_regression_integer_labels_and_explicit_label_order(tmp_path, monkeypatch):
    scores = [(a, b, str(i * 0.5)) for i, (a, b, _) in enumerate(TICKETS)]
    repo = project(tmp_path, {**SPEC, "problem": "regression", "metric": ["pearson", "spearman"]},
                   train=scores * 2, dev=scores)
    assert prepare(repo, monkeypatch)[0] == 0
    meta, rows = read_prepared(repo)
    assert meta["num_labels"] == 1 and meta["is_regression"] and meta["label_names"] == []
    assert [r["label"] for r in rows["dev"]] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    ints = [(a, b, str(i % 2)) for i, (a, b, _) in enumerate(TICKETS)]
    repo = project(tmp_path / "b", {**SPEC, "metric": ["f1", "accuracy"], "labels": ["1", "0"]}, train=ints,
                   dev=ints)
    assert prepare(repo, monkeypatch)[0] == 0
    meta, rows = read_prepared(repo)
    assert meta["label_names"] == ["1", "0"] and [r["label"] for r in rows["train"]] == [1, 0, 1, 0, 1, 0]


def test_hub_dataset_source(tmp_path, monkeypatch):
    import datasets
    calls = []

    def fake_load(name, config=None):
        calls.append((name, config))
        make = lambda rows: datasets.Dataset.from_dict(  # noqa: E731
            {"text": [r[1] for r in rows], "label": [r[2] for r in rows]})
        return datasets.DatasetDict({"train": make(TICKETS * 2), "validation": make(TICKETS)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    repo = project(tmp_path, {"hub": "acme/tickets", "config": "v1", "train": "train", "dev": "validation",
                              "text": ["text"], "label": "label", "problem": "classification",
                              "metric": ["accuracy"]}, train=None, dev=None)
    assert prepare(repo, monkeypatch)[0] == 0 and calls == [("acme/tickets", "v1")]
    meta, rows = read_prepared(repo)
    assert meta["rows"] == {"train": 12, "dev": 6} and rows["dev"][4]["text_b"] is None
    manifest = json.loads((repo / "metrics/prepare/data.json").read_text())["source"]
    assert manifest["type"] == "hf_hub" and manifest["splits"] == {"train": "train", "dev": "validation"}


def test_hub_class_labels_keep_their_names(tmp_path, monkeypatch):
    """A hub dataset whose label column is a ClassLabel: the class names become the labels (saved as
    id2label), not the ids; the hub's -1 in a test split is unlabelled."""
    import datasets
    names = ["hardware", "network", "accounts"]
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})

    def fake_load(name, config=None):
        make = lambda rows, lab: datasets.Dataset.from_dict(  # noqa: E731
            {"text": [r[1] for r in rows], "label": [lab(r) for r in rows]}, features=feats)
        return datasets.DatasetDict({"train": make(TICKETS * 2, lambda r: names.index(r[2])),
                                     "validation": make(TICKETS, lambda r: names.index(r[2])),
                                     "test": make(TICKETS[:2], lambda r: -1)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    repo = project(tmp_path, {"hub": "acme/tickets", "train": "train", "dev": "validation", "test": "test",
                              "text": ["text"], "label": "label", "problem": "classification",
                              "metric": ["accuracy"]}, train=None, dev=None)
    assert prepare(repo, monkeypatch)[0] == 0
    meta, rows = read_prepared(repo)
    assert meta["label_names"] == ["accounts", "hardware", "network"]           # train's labels, sorted
    assert [meta["label_names"][r["label"]] for r in rows["dev"]] == [team for _, _, team in TICKETS]
    assert [r["label"] for r in rows["test"]] == [None, None]


def test_tsv_reads_quotes_as_text(tmp_path, monkeypatch):
    """TSV has no quoting: a field starting with `"` is text (as in GLUE's TSVs), not an unclosed quote."""
    repo = project(tmp_path, {**SPEC, "train": "data/custom/t/train.tsv", "dev": "data/custom/t/dev.tsv"},
                   train=None, dev=None)
    for split, data in (("train", TICKETS * 3), ("dev", TICKETS)):
        lines = ["subject\tbody\tteam"] + [f'"{a}" said\t{b} "x\t{c}' for a, b, c in data]
        path = repo / f"data/custom/t/{split}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    assert prepare(repo, monkeypatch)[0] == 0
    _, rows = read_prepared(repo)
    assert rows["dev"][0]["text_a"] == '"printer jams" said' and rows["dev"][0]["text_b"] == 'the printer on floor 2 jams "x'


BAD = {  # case: (how to break the project, the expected message)
    "missing file": (lambda r: (r / "data/custom/tickets/dev.csv").unlink(),
                     r"data/custom/tickets/dev.csv: file not found"),
    "missing column": (lambda r: write_csv(r / "data/custom/tickets/dev.csv", TICKETS, ("subject", "text", "team")),
                       r"data/custom/tickets/dev.csv: missing column\(s\) body; it has subject, text, team"),
    "empty split": (lambda r: write_csv(r / "data/custom/tickets/dev.csv", []),
                    r"data/custom/tickets/dev.csv: no data rows in the dev split"),
    "not utf-8": (lambda r: (r / "data/custom/tickets/train.csv").write_bytes(
        "subject,body,team\ncaf\u00e9,menu,hardware\n".encode("latin-1")),
        r"data/custom/tickets/train.csv: not UTF-8 text \(byte 0xe9 at offset 21\); re-save it as UTF-8"),
    "unseen dev label": (lambda r: write_csv(r / "data/custom/tickets/dev.csv", TICKETS + [("a", "b", "billing")]),
                         r"data/custom/tickets/dev.csv:8: dev label 'billing' never seen in train"),
    "one class": (lambda r: write_csv(r / "data/custom/tickets/train.csv", [(a, b, "hardware") for a, b, _ in TICKETS]),
                  r"data/custom/tickets/train.csv: the train split has one class only \('hardware'\)"),
    "ragged row": (lambda r: (r / "data/custom/tickets/train.csv").write_text(
        "subject,body,team\nprinter,jams,hardware\nvpn,down, again,network\n"),
        r"data/custom/tickets/train.csv:3: unparsable row, 4 fields where the header has 3"),
    "bad quoting": (lambda r: (r / "data/custom/tickets/train.csv").write_text(
        'subject,body,team\nprinter,"jams"x,hardware\n'),
        r"data/custom/tickets/train.csv:2: unparsable row \("),
    "empty text": (lambda r: write_csv(r / "data/custom/tickets/train.csv", TICKETS + [("", "b", "network")]),
                   r"data/custom/tickets/train.csv:8: empty text in column subject"),
    "missing label": (lambda r: write_csv(r / "data/custom/tickets/train.csv", TICKETS + [("a", "b", "")]),
                      r"data/custom/tickets/train.csv:8: no label in column team"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_stops_prepare_with_one_line_before_any_output(tmp_path, monkeypatch, capsys, case):
    repo = project(tmp_path)
    (repo / "metrics/prepare").mkdir(parents=True)
    (repo / "metrics/prepare/data.json").write_text("{}\n")    # an earlier run's manifest: left untouched
    breaker, message = BAD[case]
    breaker(repo)
    code, err = prepare(repo, monkeypatch, capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: invalid input: ")
    import re
    assert re.search(message, err[0]), err[0]
    assert not (repo / "data/prepared").exists()
    assert (repo / "metrics/prepare/data.json").read_text() == "{}\n"


@pytest.mark.parametrize("case, spec, train, message", [
    ("non-numeric regression", {**SPEC, "problem": "regression", "metric": ["pearson"]}, TICKETS,
     r"train.csv:2: label 'hardware' in column team is not a number \(problem: regression\)"),
    ("f1 on three classes", {**SPEC, "metric": ["f1"]}, TICKETS,
     r"train.csv: metric f1 is binary F1 but there are 3 classes; use f1_macro"),
    ("train label outside labels", {**SPEC, "labels": ["hardware", "network"]}, TICKETS,
     r"train.csv: train label\(s\) 'accounts' not in labels"),
])
def test_bad_labels_for_the_task(tmp_path, monkeypatch, capsys, case, spec, train, message):
    import re
    repo = project(tmp_path, spec, train=train)
    code, err = prepare(repo, monkeypatch, capsys)
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err


def test_unparsable_jsonl_line_and_unreadable_parquet(tmp_path, monkeypatch, capsys):
    spec = {**SPEC, "train": "data/custom/t/train.jsonl", "dev": "data/custom/t/dev.parquet"}
    repo = project(tmp_path, spec, train=None, dev=None)
    (repo / "data/custom/t").mkdir(parents=True)
    good = json.dumps({"subject": "a", "body": "b", "team": "x"})
    (repo / "data/custom/t/train.jsonl").write_text(f"{good}\n{{'single': quotes}}\n")
    (repo / "data/custom/t/dev.parquet").write_bytes(b"PAR1 not really")
    code, err = prepare(repo, monkeypatch, capsys)
    assert code == 2 and err == ["error: invalid input: data/custom/t/train.jsonl:2: unparsable row, not JSON "
                                 "(Expecting property name enclosed in double quotes)"]
    (repo / "data/custom/t/train.jsonl").write_text(f"{good}\n[1, 2]\n")
    code, err = prepare(repo, monkeypatch, capsys)
    assert err == ["error: invalid input: data/custom/t/train.jsonl:2: unparsable row, a JSON list instead of "
                   "an object"]
    (repo / "data/custom/t/train.jsonl").write_text(good + "\n" + json.dumps({"subject": "c", "body": "d",
                                                                             "team": "y"}) + "\n")
    code, err = prepare(repo, monkeypatch, capsys)
    assert code == 2 and err[0].startswith("error: invalid input: data/custom/t/dev.parquet: not a readable Parquet")


def test_glue_tsv_that_is_not_utf8_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    from conftest import write_mrpc
    glue = write_mrpc(tmp_path / "glue", n_train=8, n_dev=4)
    path = glue / "MRPC" / "dev.tsv"
    path.write_bytes(path.read_bytes().replace(b"the", b"th\xe9", 1))
    repo = project(tmp_path / "p", task="tickets")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["task"] = "mrpc"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("GLUE_DIR", str(glue))
    code, err = prepare(repo, monkeypatch, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: invalid input: {path}: not UTF-8 text (byte 0xe9 at offset ")


@pytest.mark.parametrize("change, message", [
    ({"metric": ["pearson"]}, r"data.custom.tickets.metric\[0\]: 'pearson' is not allowed; choose one of accuracy, "
                              r"f1, f1_macro, mcc"),
    ({"problem": "regression", "metric": ["accuracy"]}, r"metric\[0\]: 'accuracy' is not allowed; choose one of "
                                                         r"pearson, spearman"),
    ({"metric": ["f1", "accuracy", "mcc"]}, r"metric: .* give one metric or two to average"),
    ({"text": ["a", "b", "c"]}, r"data.custom.tickets.text: .* one or two text column names"),
    ({"problem": "ranking"}, r"data.custom.tickets.problem: 'ranking' is not allowed"),
    ({"train": "data/custom/t/train.xlsx"}, r"data.custom.tickets.train: .* no known extension .*set "
                                              r"data.custom.tickets.format"),
    ({"labels": ["a"]}, r"data.custom.tickets.labels: .* two or more distinct labels"),
    ({"labels": ["a", "b", "c"], "metric": ["f1"]}, r"metric: f1 is binary F1 .* need f1_macro"),
    ({"colour": "red"}, r"data.custom.tickets.colour: unknown key"),
    ({"label": None}, r"data.custom.tickets.label: None has the wrong type"),
])
def test_custom_task_params_are_validated_naming_the_key(change, message):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["custom"] = {"tickets": {k: v for k, v in {**SPEC, **change}.items()}}
    with pytest.raises(ParamError, match=message):
        parse_params(raw)


def test_task_names_custom_and_glue():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["custom"] = {"mrpc": dict(SPEC)}
    with pytest.raises(ParamError, match="data.custom.mrpc: a custom task name .* not a GLUE task name"):
        parse_params(raw)
    raw["data"]["custom"] = {"tickets": dict(SPEC)}
    raw["data"]["task"] = "ticket"
    with pytest.raises(ParamError, match="data.task: 'ticket' is not allowed; choose one of cola, .*wnli, tickets"):
        parse_params(raw)
    raw["data"]["task"] = "tickets"
    raw["grid"]["tasks"] = ["tickets"]
    with pytest.raises(ParamError, match="grid.finetune.tickets: missing"):
        parse_params(raw)
    raw["grid"]["finetune"]["tickets"] = {"learning_rate": 5e-5, "epochs": 3, "batch_size": 16}
    assert parse_params(raw).grid.tasks == ["tickets"]


# ---- the metrics a custom task may pick --------------------------------------------------------------

def test_metric_lists_agree():
    assert PARAM_METRICS == METRICS


@pytest.mark.parametrize("metrics, regression", [(("accuracy",), False), (("f1",), False), (("f1_macro",), False),
                                                 (("mcc",), False), (("f1_macro", "accuracy"), False),
                                                 (("pearson",), True), (("spearman", "pearson"), True)])
def test_vectorised_bootstrap_scores_equal_sklearn_scipy(metrics, regression):
    """fisvd.report's numpy metrics (the grid's bootstrap) against fisvd.metrics (sklearn / scipy)."""
    rng = np.random.default_rng(0)
    sc = Scoring("custom", metrics, regression)
    k = 2 if "f1" in metrics else 4          # mcc and f1_macro multiclass (f1: binary)
    for _ in range(5):
        y = rng.normal(size=40) if regression else rng.integers(0, k, 40)
        p = y + rng.normal(size=40) if regression else np.where(rng.random(40) < 0.6, y, rng.integers(0, k, 40))
        assert split_scores(sc, p[None], y[None])[0] == pytest.approx(glue_metrics(sc, p, y)["score"], abs=1e-9)


def test_constant_predictor_and_collapse_for_custom_scorings():
    y = np.array([0, 0, 0, 1, 1, 2])
    macro = Scoring("t", ("f1_macro",))
    # predicting class 0 everywhere: F1 of class 0 = 2*3/(2*3+3) = 2/3, others 0 -> macro 2/9
    assert constant_score(macro, y) == pytest.approx(100 * 2 / 9)
    assert constant_score(Scoring("t", ("accuracy",)), y) == pytest.approx(50.0)
    assert constant_score(Scoring("t", ("pearson",), True), y.astype(float)) == 0.0
    m = task_metrics(macro, {"dev": (np.zeros(6, int), y)})
    assert m["collapsed"] and m["f1_macro"] == pytest.approx(2 / 9)


# ---- a custom task in the grid ------------------------------------------------------------------------

def test_grid_runs_a_custom_task_like_a_glue_one():
    import fisvd.grid as G
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["custom"] = {"tickets": dict(SPEC)}
    raw["grid"]["tasks"] = ["mrpc", "tickets"]
    raw["grid"]["finetune"]["tickets"] = {"learning_rate": 5e-5, "epochs": 3, "batch_size": 16}
    p = parse_params(raw)
    run = G.task_params(raw, p, "tickets", 42)
    assert run["data"]["task"] == "tickets" and run["data"]["custom"]["tickets"]["train"] == SPEC["train"]
    assert parse_params(run).data.task == "tickets"             # the run folder's params validate
    prepare = G.task_pipeline(p, "tickets", 42)["stages"]["prepare"]
    assert "../../../data/custom" in prepare["deps"] and "data.custom" in prepare["params"]
    assert [c for c in G.cells(p) if c.task == "tickets"]       # its cells exist like mrpc's


def test_report_rows_of_a_custom_task_use_its_scoring():
    from fisvd.tables import markdown, rows_from_results
    y = [0] * 8 + [1, 2]
    y = y * 4
    good = [0] * 9 + [2]
    good = good * 4                                              # accuracy 90, macro F1 ~ 0.62 (sklearn below)
    rec = lambda preds, score, **kw: {"score": score, "collapsed": False,  # noqa: E731
                                      "metrics": {"f1_macro": score / 100}, "predictions": {"dev": preds},
                                      "total_params": 100, **kw}
    sc = {"metrics": ["f1_macro"], "regression": False}
    want = glue_metrics(Scoring("tickets", ("f1_macro",)), np.array(good), np.array(y))["score"]
    dense = {"tickets": [rec(y, 100.0, labels={"dev": y}, constant_score=16.67, scoring=sc)]}
    cells = {"tickets": {("max_fi", "kfac", 50): [rec(good, want, kept_ratio=0.5)]}}
    df, boots = rows_from_results(dense, cells, {}, 1, "m")
    b = boots[("tickets", "max_fi", "kfac", 50, 0)]
    assert np.median(b) == pytest.approx(want, abs=3) and b.std() > 0    # resampled macro F1, not accuracy
    acc = 100 * np.mean(np.array(good) == np.array(y))
    assert abs(np.median(b) - acc) > 3                                 # (accuracy would be far off)
    text = markdown(df, boots, "m", ["tickets"], [50], "metrics/report")
    assert "tickets" in text


@pytest.mark.parametrize("metric", ["f1_macro", "mcc", "accuracy"])
def test_vectorised_scores_per_row_use_that_rows_classes(metric):
    """A resample missing a class: sklearn averages macro F1 over the classes present in that sample."""
    from sklearn.metrics import f1_score, matthews_corrcoef
    P = np.array([[0, 1, 1, 0, 0, 1], [0, 1, 2, 2, 0, 1], [3, 3, 0, 1, 2, 0]])
    Y = np.array([[0, 1, 0, 0, 1, 1], [0, 2, 2, 1, 0, 1], [3, 2, 0, 1, 2, 2]])
    got = split_scores(Scoring("t", (metric,)), P, Y)
    ref = {"f1_macro": lambda y, p: f1_score(y, p, average="macro", zero_division=0),
           "mcc": matthews_corrcoef, "accuracy": lambda y, p: np.mean(y == p)}[metric]
    assert got == pytest.approx([100 * ref(y, p) for p, y in zip(P, Y)], abs=1e-9)


def test_label_spellings_are_one_class_and_hub_test_minus_one_is_unlabelled(tmp_path, monkeypatch):
    train = [(a, b, "1.0" if i % 2 else "0") for i, (a, b, _) in enumerate(TICKETS)] * 2
    dev = [(a, b, "1" if i % 2 else "0.0") for i, (a, b, _) in enumerate(TICKETS)]
    repo = project(tmp_path, {**SPEC, "metric": ["f1"], "labels": [0, 1], "test": "data/custom/tickets/test.csv"},
                   train=train, dev=dev)
    write_csv(repo / "data/custom/tickets/test.csv", [(a, b, "-1") for a, b, _ in TICKETS[:3]])
    assert prepare(repo, monkeypatch)[0] == 0
    meta, rows = read_prepared(repo)
    assert meta["label_names"] == ["0", "1"] and [r["label"] for r in rows["dev"]] == [0, 1, 0, 1, 0, 1]
    assert [r["label"] for r in rows["test"]] == [None, None, None]


def test_locate_finds_a_compressed_model_on_the_hub(tmp_path, monkeypatch):
    import transformers.utils as tu
    from fisvd.modeling_fisvd import RANKS_FILE, WEIGHTS_FILE, locate
    cache = {("acme/small-fisvd", WEIGHTS_FILE): str(tmp_path / "w"), ("acme/small-fisvd", RANKS_FILE): str(tmp_path / "r")}
    seen = []

    def fake(repo, name, _raise_exceptions_for_missing_entries=True, **kw):
        seen.append((repo, name, kw))
        return cache.get((repo, name))

    monkeypatch.setattr(tu, "cached_file", fake)
    assert locate("acme/small-fisvd", revision="v1") == (str(tmp_path / "w"), str(tmp_path / "r"))
    assert seen[0] == ("acme/small-fisvd", WEIGHTS_FILE, {"revision": "v1"})
    assert locate("acme/dense-model") == (None, None)            # a dense hub model: the base class loads it
    (tmp_path / "local").mkdir()
    assert locate(tmp_path / "local") == (None, None)


def test_calibration_rows_are_held_out_of_fine_tuning_seeded_and_recorded(tmp_path, monkeypatch, capsys):
    """data.calibration_rows moves seeded training rows to a `calibration` split: disjoint from train,
    together the old train split; the calibrated methods draw from it (fisvd.data.calibration_rows)."""
    from fisvd.data import calibration_rows, load_prepared
    repo = project(tmp_path / "base")
    assert prepare(repo, monkeypatch)[0] == 0
    _, base = read_prepared(repo)
    assert calibration_rows(base) is base["train"]                     # none held out: training rows
    held = project(tmp_path / "held")
    params = yaml.safe_load((held / "params.yaml").read_text())
    params["data"]["calibration_rows"] = 5
    (held / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert prepare(held, monkeypatch)[0] == 0
    meta, rows = read_prepared(held)
    assert meta["rows"] == {"train": 13, "dev": 6, "calibration": 5}
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, rows["train"] + rows["calibration"])) == sorted(map(key, base["train"]))   # a partition
    _, loaded = load_prepared(held / "data/prepared")
    assert calibration_rows(loaded) == rows["calibration"]
    manifest = json.loads((held / "metrics/prepare/data.json").read_text())
    assert manifest["rows"]["calibration"] == 5
    again = project(tmp_path / "again")                                 # seeded: the same rows
    (again / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prepare(again, monkeypatch)
    assert read_prepared(again)[1]["calibration"] == rows["calibration"]
    params["data"]["calibration_rows"] = 18                             # the whole split: one line, nothing written
    (again / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    code, err = prepare(again, monkeypatch, capsys)
    assert code == 2 and "data.calibration_rows: 18 of 18 training rows" in err[-1]
