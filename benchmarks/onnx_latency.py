"""Dense vs compressed, PyTorch vs onnxruntime, on this CPU: the number a user deploying on CPU sees.

Takes the pipeline's models (data/model, data/compressed: `dvc repro` first), exports both to ONNX
(fisvd.export.export_onnx, TorchScript exporter, opset 18) and times four forward passes in the same
interleaved rounds (each round runs all four once, in turn, so drift hits them alike): PyTorch dense,
PyTorch compressed, onnxruntime dense, onnxruntime compressed. Two workloads: the evaluate stage's
batch (evaluate.batch_size × finetune.max_length real dev tokens, no padding) and one request of
finetune.max_length tokens. Threads: torch's count for both runtimes (2 on this machine).
Speed-ups are per-round ratios (median and quartiles), so each compares two runs of one round.

    python benchmarks/onnx_latency.py [--rounds 15]
    → benchmarks/results/onnx_latency.json and .md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fisvd.data import dev_features, load_prepared  # noqa: E402
from fisvd.evaluate import interleaved_rounds, latency_batch, model_inputs  # noqa: E402
from fisvd.export import export_onnx, onnx_logits, session  # noqa: E402
from fisvd.lowrank import load_compressed  # noqa: E402
from fisvd.metrics import scoring_of  # noqa: E402
from fisvd.models import load_classifier, load_tokenizer  # noqa: E402
from fisvd.params import load_params  # noqa: E402
from fisvd.paths import COMPRESSED, MODEL, PREPARED  # noqa: E402
from fisvd.results import machine  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "onnx_latency"


def ratios(a: list[float], b: list[float]) -> dict:
    r = sorted(x / y for x, y in zip(a, b))
    q = statistics.quantiles(r, n=4, method="inclusive")
    return {"median": round(q[1], 3), "q25": round(q[0], 3), "q75": round(q[2], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    meta, splits = load_prepared(ROOT / PREPARED)
    tok = load_tokenizer(str(ROOT / MODEL))
    L, B = params.finetune.max_length, params.evaluate.batch_size
    dense = load_classifier(str(ROOT / MODEL), meta["num_labels"]).float().eval()
    compressed = load_compressed(ROOT / COMPRESSED).eval()
    feats = dev_features(scoring_of(meta), splits, tok, L)["dev"]
    names = model_inputs(dense)
    threads = torch.get_num_threads()
    result = {"cpu": machine(), "threads": threads, "torch": torch.__version__,
              "model": params.model.name, "task": meta["task"], "rounds": args.rounds, "workloads": {}}
    import onnxruntime
    result["onnxruntime"] = onnxruntime.__version__
    with tempfile.TemporaryDirectory() as tmp:
        example = latency_batch(feats, 2, 16, names)
        sessions = {}
        for name, model in (("dense", dense), ("compressed", compressed)):
            export_onnx(model, Path(tmp) / f"{name}.onnx", example)
            sessions[name] = session(Path(tmp) / f"{name}.onnx", threads=threads)
            result[f"{name}_onnx_mb"] = round((Path(tmp) / f"{name}.onnx").stat().st_size / 2**20, 1)
        for label, batch_size in (("batch", B), ("single", 1)):
            batch = latency_batch(feats, batch_size, L, names)
            with torch.no_grad():
                diff = {n: float(np.abs(onnx_logits(sessions[n], batch) - m(**batch).logits.numpy()).max())
                        for n, m in (("dense", dense), ("compressed", compressed))}

            def torch_fn(m):
                def run():
                    with torch.no_grad():
                        m(**batch)
                return run

            fns = {"torch_dense": torch_fn(dense), "torch_compressed": torch_fn(compressed),
                   "onnx_dense": lambda: onnx_logits(sessions["dense"], batch),
                   "onnx_compressed": lambda: onnx_logits(sessions["compressed"], batch)}
            rounds = interleaved_rounds(fns, args.rounds, warmup=3)
            result["workloads"][label] = {
                "shape": [batch_size, L], "max_abs_diff_onnx_vs_torch": diff,
                "median_ms": {k: round(statistics.median(v), 2) for k, v in rounds.items()},
                "speedup_compressed_vs_dense": {"torch": ratios(rounds["torch_dense"], rounds["torch_compressed"]),
                                                "onnx": ratios(rounds["onnx_dense"], rounds["onnx_compressed"])},
                "speedup_onnx_vs_torch": {"dense": ratios(rounds["torch_dense"], rounds["onnx_dense"]),
                                          "compressed": ratios(rounds["torch_compressed"], rounds["onnx_compressed"])},
                "onnx_compressed_vs_torch_dense": ratios(rounds["torch_dense"], rounds["onnx_compressed"])}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Dense vs compressed, PyTorch vs onnxruntime ({result['model']}, {result['task']})", "",
             f"`python benchmarks/onnx_latency.py --rounds {args.rounds}` on {result['cpu']}, "
             f"onnxruntime {result['onnxruntime']} ({threads} intra-op threads); models of the workspace pipeline "
             f"(data/model, data/compressed). ONNX files: dense {result['dense_onnx_mb']} MB, compressed "
             f"{result['compressed_onnx_mb']} MB. Median ms over {args.rounds} interleaved rounds; speed-ups are "
             "per-round ratios, median [quartiles].", "",
             "| workload | torch dense | torch compressed | onnx dense | onnx compressed | compressed/dense torch | "
             "compressed/dense onnx | onnx compressed vs torch dense | max |onnx − torch| |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, w in result["workloads"].items():
        ms, s = w["median_ms"], w["speedup_compressed_vs_dense"]
        f = lambda r: f"{r['median']}× [{r['q25']}, {r['q75']}]"  # noqa: E731
        lines.append(f"| {label} {w['shape'][0]}×{w['shape'][1]} | {ms['torch_dense']} | {ms['torch_compressed']} | "
                     f"{ms['onnx_dense']} | {ms['onnx_compressed']} | {f(s['torch'])} | {f(s['onnx'])} | "
                     f"{f(w['onnx_compressed_vs_torch_dense'])} | "
                     f"{max(w['max_abs_diff_onnx_vs_torch'].values()):.1e} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
