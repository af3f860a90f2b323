"""fisvd: Fisher-aware per-matrix ("dynamic") low-rank compression of fine-tuned transformers.

The modules by layer; imports only point down (tests/test_imports.py fails on a cycle), and a
stage's DVC code deps are the computing modules it reaches (fisvd.deps):

interface — parse, validate, describe; no torch, no numpy (not code deps of any stage)
    errors    exception types; each message names the key, file or matrix and the fix
    validate  value checks (choice, unit, at_least, positive) raising ParamError
    params    params.yaml → typed, validated Params (every default lives in params.yaml)
    paths     every stage's input and output paths; `require` checks inputs first
    cli       run_stage: --help, validation, exit code 2 with one line
    deps      code deps of a stage script (dvc.yaml, grid pipelines and the cell memo share them)
    preflight model/params mismatches known before fine-tuning (checks only)
    grid      the comparison grid: which cells exist; writes grid/<task>/s<seed>/ pipelines
    docs      generated tables in docs/params.md and docs/methods.md

method specs — no torch, no numpy; code deps of the stages that dispatch methods
    registry  Registry / Entry: method specs and their implementations, by name
    methods   every allocation method and factorisation: options dataclass, needs, help

data and models
    io        atomic writes, JSON
    data      GLUE TSVs / hub → prepared JSONL, tokenising, batching
    custom    your own tasks (data.custom): CSV / TSV / JSONL / Parquet / hub → prepared rows, checks
    modeling_fisvd  LowRankLinear and the loader, self-contained: saved beside every compressed model
    models    model resolution and loading (Conv1D → Linear, pad tokens), the compressible Linears
    lowrank   save_compressed / load_compressed, apply_lowrank
    dist      data-parallel helpers (one process without a group)

statistics
    fisher    diagonal (empirical) Fisher: per-batch or per-sample squared gradients
    stats     two-sided K-FAC statistics Σx, Σg; load_statistics: the per-matrix dict

math (pure functions on tensors and arrays)
    factorize the factorisations (svd, fwsvd, tfwsvd, whiten, kfac), Factors, break_even
    allocate  Matrix and the rank allocators
    calibrate measured loss curves on a training slice and the joint check
    speed     latency tables; speed-aware ranks
    balance   equal-norm factors before recovery fine-tuning
    metrics   task scoring (GLUE and custom metrics), constant predictor, margin kept, bootstrap

library calls the stages make
    plan      matrices → ranks for any allocation method (what its spec needs)
    evaluate  dev scoring (score_dev), latency, the evaluate stage's comparison
    train     the HF Trainer setup of fine-tuning and recovery
    cells     the grid's cell engine and its memo
    report    bootstrap resampling of dev scores, paired wins
    tables    the grid report: rows, tables, summary, Pareto plots

tools (no stage imports them)
    export    python -m fisvd.export: deployable directory, ONNX + parity, model card
    results   machine description and recorded output of benchmark scripts
    mpnet     assemble all-mpnet-base-v2 from PyPI parts

Run: `make run` (dvc repro), `make test`; a stage: `python -m stages.<name> --help`.
"""
