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
    chosen = {"mrpc": {"learning_rate": 1e-4, "epochs": 4, "holdout_score": 86.25},
              "rte": {"learning_rate": 3e-5, "epochs": 5, "holdout_score": 59.84}}
    assert bench.apply(chosen, ["mrpc"], path) == ["mrpc"]
    loaded = yaml.safe_load(path.read_text())
    assert loaded["grid"]["finetune"]["mrpc"] == {"learning_rate": 1e-4, "epochs": 4}
    assert loaded["grid"]["finetune"]["rte"] == {"learning_rate": 3e-5, "epochs": 5}
    assert loaded["finetune"]["learning_rate"] == 5e-5          # outside grid: untouched
    new, old = path.read_text().splitlines(), PARAMS.splitlines()
    assert [i for i, (a, b) in enumerate(zip(new, old)) if a != b] == [5]
    assert new[5] == "    mrpc: {learning_rate: 1.0e-4, epochs: 4}  # held-out 86.25"
    assert "# per-task settings" in new[4] and "# an old comment" in new[6]


def test_apply_names_a_task_without_a_line(tmp_path):
    bench = _bench()
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    with pytest.raises(SystemExit, match="grid.finetune.cola"):
        bench.apply({"cola": {"learning_rate": 1e-4, "epochs": 4, "holdout_score": 40.0}}, ["cola"], path)


def test_choose_reads_complete_runs_only_and_breaks_ties_to_the_smaller_rate():
    bench = _bench()
    df = pd.DataFrame({"learning_rate": [3e-5, 3e-5, 1e-4, 1e-4, 5e-5, 5e-5],
                       "epochs": [1, 2, 1, 2, 1, 2],
                       "score": [90.0, 70.0, 60.0, 75.0, 50.0, 75.0]})
    # 3e-5's epoch-1 reading (90) is the best number but not a complete run; 5e-5 and 1e-4 tie at 75
    assert bench.choose(df) == {"learning_rate": 5e-5, "epochs": 2, "holdout_score": 75.0}
