"""Out the door: a compressed model as a deployable directory, with ONNX and a model card.

    dvc repro                      # the pipeline: data/compressed, metrics/
    python -m fisvd.export         # → models/export/ (or --out DIR)

writes, from the finished pipeline in the current project:
- everything in data/compressed/ (weights, config.json with `auto_map`, modeling_fisvd.py,
  ranks.json, tokenizer): loads with `AutoModelForSequenceClassification.from_pretrained(dir,
  trust_remote_code=True)`, `pipeline(..., trust_remote_code=True)` or `fisvd.lowrank.load_compressed`;
- `model.onnx` (unless --no-onnx): the compressed classifier, inputs `input_ids`, `attention_mask`
  (and `token_type_ids` where the model reads it), dynamic batch and length, output `logits`. Its
  parity is checked on the whole dev set: onnxruntime logits against PyTorch's, max |difference|
  must be ≤ `--tolerance` (1e-4), else exit 1 and nothing is published (the attempt stays in
  <out>.tmp). The result goes into the card and `export.json`;
- `README.md`: a model card in the hub's format (YAML front matter + text): base model, data,
  method, budget, ranks summary, dense vs compressed dev scores with 95 % bootstrap intervals,
  parameters, measured CPU speed-up (metrics/evaluate/latency.json), ONNX parity, the fisvd commit
  and the commands that made it.

ONNX uses torch's TorchScript exporter (`dynamo=False`: it needs only `onnx`, exports every tested
family in under a second, and gives logits equal to PyTorch's to ~1e-8); onnxruntime runs it.
This is not a DVC stage on purpose: the card quotes a measured latency, which differs run to run
and would make dvc.lock differ run to run. Inputs missing → exit 2 naming the file.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import batches, collate, dev_features, load_prepared
from .errors import InputError
from .evaluate import model_inputs
from .lowrank import load_compressed
from .metrics import scoring_of
from .models import load_tokenizer
from .params import load_params
from .paths import COMPRESSED, LATENCY, MANIFEST, METRICS, PREPARED, RANKS

log = logging.getLogger("fisvd")
OPSET = 18
TOLERANCE = 1e-4


class _Logits(nn.Module):
    """model(**named inputs).logits as a positional-input module (what the ONNX exporter traces)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs))).logits


def export_onnx(model: nn.Module, path: str | Path, example: dict[str, torch.Tensor]) -> list[str]:
    """Write `model` (eval, CPU, fp32) as ONNX with the inputs of `example`; returns the graph's input
    names (an input the model ignores, e.g. DeBERTa-v3's token_type_ids, is pruned by the exporter)."""
    import onnx

    names = tuple(example)
    model = model.float().cpu().eval()
    wrapped = _Logits(model, names).eval()
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(wrapped, tuple(example[n] for n in names), str(path), input_names=list(names),
                          output_names=["logits"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    model.eval()
    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]


def session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_logits(sess, batch: dict[str, torch.Tensor]) -> np.ndarray:
    wanted = {i.name for i in sess.get_inputs()}
    return sess.run(["logits"], {k: v.numpy().astype(np.int64) for k, v in batch.items() if k in wanted})[0]


def parity(model: nn.Module, sess, features: list[dict], batch_size: int, collator) -> dict:
    """max |ONNX − PyTorch| over the logits of `features` (fixed-order padded batches)."""
    worst, n = 0.0, 0
    names = model_inputs(model)
    model.eval()
    for batch in batches([{k: v for k, v in f.items() if k != "labels"} for f in features], batch_size, collator):
        batch = {k: v for k, v in batch.items() if k in names}
        with torch.no_grad():
            ref = model(**batch).logits.float().numpy()
        worst = max(worst, float(np.abs(onnx_logits(sess, batch) - ref).max()))
        n += len(ref)
    return {"examples": n, "max_abs_diff": worst}


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def card(params, metrics: dict, ranks: dict, latency: dict | None, manifest: dict, onnx: dict | None,
         command: str) -> str:
    """The model card (README.md): hub YAML front matter + the facts of this run."""
    t = ranks["totals"]             # what the run did (params.yaml may have moved on since)
    method, factors, budget = t["method"], t.get("spectrum") or params.compress.method, t["budget"]
    d, m = metrics["dense"], metrics["compressed"]
    commit = _git("rev-parse", "HEAD") or "unknown (not a git checkout)"
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--untracked-files=no") else ""
    score_keys = [k for k in d if k not in ("score", "collapsed", "params", "ci95")]

    def ci(x):
        return f" [{x['ci95'][0]:.1f}, {x['ci95'][1]:.1f}]" if x.get("ci95") else ""

    front = ["---", "library_name: transformers", "pipeline_tag: text-classification",
             f"base_model: {json.dumps(params.model.name)}", "tags: [fisvd, low-rank, compressed, custom_code]",
             "model-index:", f"- name: {json.dumps(params.model.name + ' ' + method + ' + ' + factors)}",
             "  results:", "  - task: {type: text-classification}",
             f"    dataset: {{name: {json.dumps(metrics['task'])}, type: {json.dumps(metrics['task'])}, split: dev}}",
             "    metrics:", *[f"    - {{type: {k}, value: {m[k]}}}" for k in score_keys], "---", ""]
    fam = [f"| {name} | {x['score']:.2f}{ci(x)} | {'yes' if x['collapsed'] else 'no'} | "
           + " | ".join(f"{x[k]:.4f}" for k in score_keys) + f" | {x['params']:,} |" for name, x in (("dense", d), ("compressed", m))]
    body = [f"# {params.model.name}, compressed by fisvd ({method} ranks + {factors} factors, p = {budget})", "",
            "Low-rank compression of a fine-tuned classifier: each Linear of the repeated blocks "
            "replaced by two (W ≈ A·B) with its own rank. Load it with plain transformers:", "",
            "```python", "from transformers import pipeline",
            "clf = pipeline(\"text-classification\", model=\"<this directory>\", trust_remote_code=True)",
            "```", "", "`trust_remote_code=True` runs `modeling_fisvd.py` beside the weights (torch, "
            "transformers and safetensors only); without it loading fails rather than giving random weights.", "",
            "## Data", "", f"Task `{metrics['task']}`; source `{manifest.get('source', {}).get('type', '?')}`; rows "
            + ", ".join(f"{s} {n}" for s, n in manifest.get("rows", {}).items())
            + " (files and sha256: metrics/prepare/data.json of the run).", "",
            "## Method", "", f"- ranks: `{method}` on the `{factors}` spectrum, budget kind "
            f"`{t.get('budget_kind')}`, kept ratio p = {t.get('kept_ratio')} of the compressible matrices",
            f"- factors: `{factors}`", f"- {len(ranks['matrices'])} matrices, {t.get('num_dense', 0)} kept dense; "
            f"equivalent uniform rank {t.get('equivalent_uniform_rank')}",
            f"- speed-table shapes not timed (any rank allowed): {', '.join(t.get('speed_missing') or []) or 'none'}", "",
            "## Dev scores (×100, 95 % bootstrap interval over dev examples)", "",
            "| model | score | collapsed | " + " | ".join(score_keys) + " | params |",
            "|---|---|---|" + "---|" * len(score_keys) + "---|", *fam, "",
            f"Constant predictor {metrics['constant_score']:.2f}; compressed = {metrics['pct_of_dense']} % of dense; "
            f"margin over the constant predictor kept: {metrics['margin_kept']}; compression "
            f"{metrics['compression_ratio']}×.", ""]
    if latency:
        body += ["## Speed", "", f"Median forward time on {latency['device']} for a batch {latency['shape'][0]} × "
                 f"{latency['shape'][1]} tokens: dense {latency['dense_ms']} ms, compressed {latency['compressed_ms']} ms "
                 f"({latency['speedup']}× faster; per-round quartiles {latency.get('speedup_q25')}–"
                 f"{latency.get('speedup_q75')}, {latency.get('rounds')} interleaved rounds; metrics/evaluate/latency.json).", ""]
    if onnx:
        body += ["## ONNX", "", f"`model.onnx` (opset {OPSET}): onnxruntime logits within "
                 f"{onnx['max_abs_diff']:.2e} of PyTorch's over {onnx['examples']} dev examples.", ""]
    body += ["## Provenance", "", f"fisvd commit `{commit}`{dirty}.", "", "```bash", command, "```", ""]
    return "\n".join(front + body)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fisvd.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/export", help="output directory (replaced)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--no-onnx", action="store_true", help="skip model.onnx and its parity check")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE, help="max |ONNX − PyTorch| logit difference")
    args = ap.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s export: %(message)s", datefmt="%H:%M:%S")
    try:
        params = load_params(args.params)
        for path in (COMPRESSED, METRICS, RANKS, PREPARED, MANIFEST):
            if not Path(path).exists():
                raise InputError(f"{path}: missing; run `dvc repro` first")
        metrics, ranks, manifest = (json.loads(Path(p).read_text()) for p in (METRICS, RANKS, MANIFEST))
        latency = json.loads(Path(LATENCY).read_text()) if Path(LATENCY).is_file() else None
        model = load_compressed(COMPRESSED)
        meta, splits = load_prepared(PREPARED)
        if metrics["task"] != meta["task"] or params.data.task != meta["task"]:
            raise InputError(f"{METRICS} is for {metrics['task']}, data/prepared for {meta['task']}, params.yaml "
                             f"says {params.data.task}: run `dvc repro` first")
    except InputError as exc:
        print(f"error: invalid input: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(COMPRESSED, tmp)
    onnx = None
    if not args.no_onnx:
        tok = load_tokenizer(COMPRESSED)
        devs = dev_features(scoring_of(meta), splits, tok, params.finetune.max_length)
        names = model_inputs(model)
        first = next(batches([{k: v for k, v in f.items() if k != "labels"} for f in devs["dev"][:2]], 2,
                             collate(tok)))
        example = {k: first[k] for k in names if k in first}
        inputs = export_onnx(model, tmp / "model.onnx", example)
        sess = session(tmp / "model.onnx")
        onnx = {"inputs": inputs, "opset": OPSET, **parity(model, sess, [f for d in devs.values() for f in d],
                                                           params.evaluate.batch_size, collate(tok))}
        log.info("model.onnx: max |onnxruntime - pytorch| = %.2e over %d dev examples", onnx["max_abs_diff"],
                 onnx["examples"])
    command = (f"dvc repro   # params: model.name={params.model.name}, data.task={params.data.task}, "
               f"allocate.method={ranks['totals']['method']}, allocate.budget={ranks['totals']['budget']}, "
               f"compress.method={ranks['totals'].get('spectrum') or params.compress.method}\n"
               f"python -m fisvd.export --out {args.out}")
    (tmp / "README.md").write_text(card(params, metrics, ranks, latency, manifest, onnx, command))
    (tmp / "export.json").write_text(json.dumps({"onnx": onnx, "metrics": metrics}, indent=2) + "\n")
    if onnx and onnx["max_abs_diff"] > args.tolerance:      # never publish a model that failed the check
        print(f"error: model.onnx logits differ from PyTorch's by {onnx['max_abs_diff']:.2e} > {args.tolerance}; "
              f"nothing written to {out} (the attempt: {tmp})", file=sys.stderr)
        raise SystemExit(1)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
