"""Every stage's input and output paths, defined once (dvc.yaml is tested against this table).

`require(stage)` checks a stage's pipeline inputs before it removes or writes anything: a missing
path raises `MissingInputError` naming the path and the stage that produces it (`dvc repro
fisher`), so a stage never deletes its tracked outputs and then dies, and a missing local
directory is never mistaken for an HF hub id.
"""
from __future__ import annotations

from pathlib import Path

from .errors import InputError

PREPARED = "data/prepared"
MODEL = "data/model"
FISHER = "data/fisher.safetensors"
STATS = "data/stats.safetensors"
COMPRESSED = "data/compressed"
MANIFEST = "metrics/prepare/data.json"
FINETUNE_LIVE = "metrics/finetune"
FINETUNE_RUNTIME = "metrics/finetune/runtime.json"
FISHER_SUMMARY = "metrics/fisher/summary.json"
FISHER_RUNTIME = "metrics/fisher/runtime.json"
RANKS = "metrics/allocate/ranks.json"
METRICS = "metrics/evaluate/metrics.json"
LATENCY = "metrics/evaluate/latency.json"
# the CPU latency table (benchmarks/latency_table.py, committed): the one `allocate.speed_table` may
# name, so DVC re-runs allocate when it is re-measured
LATENCY_TABLE = "benchmarks/results/latency_table_cpu.json"
# your own data's home (committed folder, data.custom tasks' files go here): prepare depends on it, so
# editing a file re-runs the pipeline from prepare (fisvd.custom); relative to the project root
CUSTOM_DATA = "data/custom"
# grid run folders (grid/<task>/s<seed>/, fisvd.grid): the same stages above plus these
RESULTS = "results"
DENSE_RESULT = "results/dense.json"
CELL_MEMO = ".cellcache"
RECOVER_LIVE = "metrics/recover"


def cell_result(factorisation: str, allocation: str, budget: int) -> str:
    """One grid cell's result (one file per cell: a recovery stage depends on exactly its cell)."""
    return f"{RESULTS}/{factorisation}/{allocation}-p{budget:02d}.json"


def cells_runtime(factorisation: str) -> str:
    """Wall-clock figures of a cells stage (git-tracked, not an output: they differ run to run)."""
    return f"metrics/runtime/cells-{factorisation}.json"


def recover_result(name: str) -> str:
    return f"{RESULTS}/{name}.json"


KD = "+kd"      # a recovery with the dense model as teacher: its name and report label carry this


def recover_name(factorisation: str, allocation: str, budget: int, teacher: bool = False,
                 seed: int | None = None) -> str:
    """recover-<f>-<a>-p<b>, + `-kd` with the dense model as teacher, + `-r<seed>` for a recovery seed
    other than the cell's fine-tune seed (seed=None)."""
    return (f"recover-{factorisation}-{allocation}-p{budget:02d}" + ("-kd" if teacher else "")
            + (f"-r{seed}" if seed is not None else ""))

# stage: (pipeline inputs, outputs); sources (scripts, modules) are listed in dvc.yaml
STAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "prepare": ((CUSTOM_DATA,), (PREPARED, MANIFEST)),
    "finetune": ((PREPARED,), (MODEL, FINETUNE_LIVE)),
    "fisher": ((PREPARED, MODEL), (FISHER, STATS, FISHER_SUMMARY)),
    "allocate": ((PREPARED, MODEL, FISHER, STATS, LATENCY_TABLE), (RANKS,)),
    "compress": ((PREPARED, MODEL, FISHER, STATS, RANKS), (COMPRESSED,)),
    "evaluate": ((PREPARED, MODEL, COMPRESSED), (METRICS,)),
    # grid stages (fisvd.grid; outputs named per factorisation / cell)
    "dense": ((PREPARED, MODEL), (DENSE_RESULT,)),
    "cells": ((PREPARED, MODEL, FISHER, STATS), (cell_result("<factorisation>", "<allocation>", 0),)),
    "recover": ((PREPARED, MODEL, FISHER, STATS), (recover_result("recover-<cell>"),)),
    "report": ((), ("../metrics/report",)),
}
# --help's words for inputs no single path names (a stage with none listed reads its data source)
INPUTS_TEXT = {"prepare": "the GLUE TSVs ($GLUE_DIR or ../shared/data/glue) or the hub's nyu-mll/glue; the files or "
                          "hub dataset a data.custom task names (DVC tracks data/custom)",
               "report": "every run folder's results/*.json (<task>/s<seed>/results/, as the grid's dvc.yaml lists them)"}
OUTPUTS_TEXT = {"report": "../metrics/report (the grid `grids.<name>`: ../metrics/report-<name>)"}
ROOT_STAGES = ("prepare", "finetune", "fisher", "allocate", "compress", "evaluate")   # dvc.yaml
# Run-time figures (wall clock: differ on every run) a stage also writes, git-tracked. They are
# dvc.yaml's top-level `metrics` (shown by `dvc metrics show/diff`, `dvc exp show`), not stage
# outputs: an output's hash lands in dvc.lock, which would then change on every run.
RUNTIME: dict[str, str] = {"finetune": FINETUNE_RUNTIME, "fisher": FISHER_RUNTIME, "evaluate": LATENCY}


class MissingInputError(InputError):
    """A stage input is missing: run the stage that produces it first."""


def producer(path: str) -> str:
    for stage, (_, outs) in STAGES.items():
        if path in outs:
            return stage
    raise KeyError(path)


def require(stage: str, root: str | Path = ".") -> None:
    """Raise MissingInputError for the first missing input of `stage` (checked in pipeline order)."""
    for path in STAGES[stage][0]:
        if not ((project_root(root) if path == CUSTOM_DATA else Path(root)) / path).exists():
            if path in (LATENCY_TABLE, CUSTOM_DATA):   # committed, not a stage output
                raise MissingInputError(f"{path}: missing input of stage {stage}; restore it from git"
                                        + (" or rebuild it with `python benchmarks/latency_table.py`"
                                           if path == LATENCY_TABLE else f" (git checkout -- {path})"))
            raise MissingInputError(f"{path}: missing input of stage {stage}; run `dvc repro "
                                    f"{producer(path)}` first")


def project_root(start: str | Path = ".") -> Path:
    """The nearest folder at or above `start` holding .dvc/ (grid run folders sit inside the project),
    else `start` itself."""
    start = Path(start).resolve()
    return next((d for d in (start, *start.parents) if (d / ".dvc").is_dir()), start)
