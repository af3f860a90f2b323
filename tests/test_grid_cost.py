"""benchmarks/grid_cost.py's planning estimate for run folders still to run, against hand sums."""
import math

import pandas as pd

from conftest import load_bench

COLS = ["task", "seed", "stage", "seconds", "cells", "name"]


def frame(rows):
    return pd.DataFrame(rows, columns=COLS)


def test_estimate_sums_same_task_stage_cells_and_recovery_means():
    done = frame([("mrpc", 42, "finetune", 600.0, None, None), ("mrpc", 43, "finetune", 800.0, None, None),
                  ("mrpc", 42, "cells (kfac)", 500.0, 40, None),      # another cell count: not this folder's
                  ("mrpc", 43, "cells (kfac)", 70.0, 24, None),
                  ("mrpc", 42, "recover", 120.0, None, "recover-a"), ("mrpc", 43, "recover", 100.0, None, "recover-a"),
                  ("mrpc", 43, "recover", 50.0, None, "recover-b"),
                  ("rte", 42, "finetune", 999.0, None, None)])       # another task's run: never borrowed
    missing = frame([("mrpc", 44, "finetune", None, None, None), ("mrpc", 44, "cells (kfac)", None, 24, None),
                     ("mrpc", 44, "recover", None, None, "recover-a"), ("mrpc", 44, "recover", None, None, "recover-b"),
                     ("mrpc", 45, "finetune", None, None, None), ("mrpc", 45, "recover", None, None, "recover-c"),
                     ("cola", 44, "finetune", None, None, None)])
    est = load_bench("grid_cost").estimate(done, missing)
    assert est[("mrpc", 44)] == 700 + 70 + 110 + 50
    assert math.isnan(est[("mrpc", 45)])       # recover-c never ran anywhere: no estimate for the folder
    assert math.isnan(est[("cola", 44)])       # no CoLA run measured
    assert list(est.index) == [("mrpc", 44), ("mrpc", 45), ("cola", 44)]
