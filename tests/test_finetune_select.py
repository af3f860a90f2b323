"""benchmarks/finetune_select.py: the choice rule and --apply's in-place params.yaml edit."""

import pandas as pd
import pytest
import yaml

from conftest import load_bench


def _bench():
    return load_bench("finetune_select")


PARAMS = """\
finetune:
  learning_rate: 5.0e-5   # the single experiment's own key, not the grid's
grid:
  tasks: [mrpc, rte]
  finetune:               # per-task settings
    mrpc: {learning_rate: 5.0e-5, epochs: 3}
    rte: {learning_rate: 3.0e-5, epochs: 5}   # an old comment
recover:
  epochs: 1
"""


def test_apply_rewrites_only_the_named_tasks_lines(tmp_path):
    bench = _bench()
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    chosen = {"mrpc": {"learning_rate": 1e-4, "epochs": 4, "batch_size": 32, "holdout_score": 86.25},
              "rte": {"learning_rate": 3e-5, "epochs": 5, "holdout_score": 59.84}}
    assert bench.apply(chosen, ["mrpc"], path) == ["mrpc"]
    loaded = yaml.safe_load(path.read_text())
    assert loaded["grid"]["finetune"]["mrpc"] == {"learning_rate": 1e-4, "epochs": 4, "batch_size": 32}
    assert loaded["grid"]["finetune"]["rte"] == {"learning_rate": 3e-5, "epochs": 5}
    assert loaded["finetune"]["learning_rate"] == 5e-5          # outside grid: untouched
    new, old = path.read_text().splitlines(), PARAMS.splitlines()
    assert [i for i, (a, b) in enumerate(zip(new, old)) if a != b] == [5]
    assert new[5] == "    mrpc: {learning_rate: 1.0e-4, epochs: 4, batch_size: 32}  # held-out 86.25"
    assert "# per-task settings" in new[4] and "# an old comment" in new[6]


def test_apply_adds_a_line_for_a_task_without_one(tmp_path):
    """A task joining the grid (qnli) gets its line after the last task line, in that indentation; the
    file then holds every task's settings and nothing else moved."""
    bench = _bench()
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    assert bench.apply({"qnli": {"learning_rate": 1e-4, "epochs": 3, "batch_size": 32, "holdout_score": 85.5}},
                       ["qnli"], path) == ["qnli"]
    new = path.read_text().splitlines()
    assert new[:7] == PARAMS.splitlines()[:7] and new[8:] == PARAMS.splitlines()[7:]
    assert new[7] == "    qnli: {learning_rate: 1.0e-4, epochs: 3, batch_size: 32}  # held-out 85.50"
    assert yaml.safe_load(path.read_text())["grid"]["finetune"]["qnli"] == {"learning_rate": 1e-4, "epochs": 3,
                                                                            "batch_size": 32}
    path.write_text("grid:\n  finetune: {}\n")
    with pytest.raises(SystemExit, match="no task line"):
        bench.apply({"qnli": {"learning_rate": 1e-4, "epochs": 3, "holdout_score": 1.0}}, ["qnli"], path)


def test_glue_rows_read_where_prepare_reads(tmp_path, monkeypatch):
    """The same rule as the prepare stage (stages.prepare.glue_source): a local copy lacking the task's
    training split sends both to the hub."""
    bench = _bench()
    (tmp_path / "QNLI").mkdir()
    (tmp_path / "QNLI" / "dev.tsv").write_text("index\tquestion\tsentence\tlabel\n")
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    monkeypatch.setattr(bench, "load_hf", lambda task: ({"train": ["hub " + task]}, {}))
    assert bench.glue_source is __import__("stages.prepare", fromlist=["x"]).glue_source
    assert bench.glue_rows("qnli") == {"train": ["hub qnli"]}
    monkeypatch.setattr("sys.argv", ["finetune_select.py", "--tasks", "mrpc,tickets"])
    with pytest.raises(SystemExit, match="--tasks: tickets: not a GLUE task"):
        bench.main()


def test_choose_reads_complete_runs_only_and_breaks_ties_to_the_smaller_rate():
    bench = _bench()
    df = pd.DataFrame({"learning_rate": [3e-5, 3e-5, 1e-4, 1e-4, 5e-5, 5e-5],
                       "epochs": [1, 2, 1, 2, 1, 2],
                       "score": [90.0, 70.0, 60.0, 75.0, 50.0, 75.0]})
    # 3e-5's epoch-1 reading (90) is the best number but not a complete run; 5e-5 and 1e-4 tie at 75
    assert bench.choose(df) == {"learning_rate": 5e-5, "epochs": 2, "batch_size": 16, "holdout_score": 75.0}


def test_runs_of_different_lengths_compete_at_their_own_last_epoch():
    bench = _bench()
    old = pd.DataFrame({"task": "cola", "model": "m", "learning_rate": [3e-5] * 4 + [1e-4] * 4,
                        "epochs": [1, 2, 3, 4] * 2, "score": [5, 22, 27, 33, 0, 20, 32, 29]})
    df = bench.with_run_epochs(old)                 # rows from before the column: one run per rate
    assert df.run_epochs.tolist() == [4] * 8
    new = pd.DataFrame({"task": "cola", "model": "m", "learning_rate": 3e-5, "run_epochs": 8,
                        "epochs": range(1, 9), "score": [4, 20, 26, 30, 36, 34, 37, 35.0]})
    df = bench.with_run_epochs(pd.concat([old, new], ignore_index=True))
    assert df.run_epochs.tolist() == [4] * 8 + [8] * 8    # the 8-epoch run does not stretch the old ones
    # complete readings: 3e-5/4 → 33, 1e-4/4 → 29, 3e-5/8 → 35 (its epoch-7 37 is not a complete run)
    assert bench.choose(df) == {"learning_rate": 3e-5, "epochs": 8, "batch_size": 16, "holdout_score": 35.0}
    assert bench.choose(df[df.run_epochs == 4]) == {"learning_rate": 3e-5, "epochs": 4, "batch_size": 16,
                                                    "holdout_score": 33.0}
    # the same rate, equal final scores after 2 and after 4 epochs: the shorter run
    tie = pd.DataFrame({"learning_rate": 3e-5, "run_epochs": [2, 2, 4, 4, 4, 4], "epochs": [1, 2, 1, 2, 3, 4],
                        "score": [30, 40, 20, 30, 35, 40.0]})
    assert bench.choose(tie) == {"learning_rate": 3e-5, "epochs": 2, "batch_size": 16, "holdout_score": 40.0}


def test_batch_size_is_a_candidate_and_old_rows_are_batch_16():
    bench = _bench()
    old = pd.DataFrame({"task": "mrpc", "model": "m", "learning_rate": [3e-5, 3e-5, 1e-4, 1e-4],
                        "run_epochs": 2, "epochs": [1, 2, 1, 2], "score": [80, 82, 79, 83.0]})
    new = pd.DataFrame({"task": "mrpc", "model": "m", "learning_rate": [3e-5, 3e-5, 1e-4, 1e-4],
                        "batch_size": 32, "run_epochs": 2, "epochs": [1, 2, 1, 2], "score": [81, 84, 80, 83.0]})
    df = bench.with_run_epochs(pd.concat([old, new], ignore_index=True))
    assert df.batch_size.tolist() == [16] * 4 + [32] * 4
    assert bench.choose(df) == {"learning_rate": 3e-5, "epochs": 2, "batch_size": 32, "holdout_score": 84.0}
    # a tie between batch sizes at the same rate and length goes to the smaller batch
    tie = df.assign(score=df.score.where(~((df.batch_size == 32) & (df.learning_rate == 1e-4)), 83.0))
    assert bench.choose(tie[tie.learning_rate == 1e-4]) == {"learning_rate": 1e-4, "epochs": 2, "batch_size": 16,
                                                            "holdout_score": 83.0}
