"""What one MPNet grid run folder costs on a GPU machine, measured (issue 22: plan the BERT-base-sized
replication before running it).

Clones this repository's HEAD into a scratch folder (fisvd.results.scratch_clone: no DVC cache, so
every stage runs), puts a model of all-mpnet-base-v2's shape at models/all-mpnet-base-v2 there and
runs the named grid-mpnet run folders stage by stage (`dvc repro -s <stage>`, pipeline order,
fisvd.results.timed_repro) exactly as their committed dvc.yaml says. The model is the real one when
--model names its directory; otherwise a seeded random init of MPNet's configuration (12 layers,
hidden 768, FFN 3072, the transformers MPNetConfig defaults, which are all-mpnet-base-v2's) saved
with a BERT WordPiece tokenizer (MiniLM's): the same matrices and about the same sequence lengths, so
the same cost, but scores that mean nothing, so none are reported. Writes `<out>/gpu_cost.json`
(+ .md): the machine (fisvd.results.machine(): CPU, threads, GPU: the stages pick CUDA when this
interpreter sees it, fisvd.models.pick_device), wall seconds per stage and per folder; rewritten after each
folder, so a run cut short keeps what finished.

    python benchmarks/gpu_cost.py --folders grid-mpnet/mrpc/s42,grid-mpnet/sst2/s42 --out benchmarks/results

Needs GLUE (GLUE_DIR or ../shared/data/glue) and a GPU to mean what its name says (on CPU it measures
the CPU). A BERT-base folder is ~2 h on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODEL_AT = Path("models") / "all-mpnet-base-v2"          # where the grid-mpnet folders read it


def random_mpnet(dest: Path, tokenizer_dir: str, seed: int = 0, **overrides) -> Path:
    """A seeded random MPNet (MPNetConfig defaults, `overrides` applied) saved with the tokenizer of
    `tokenizer_dir`, its pad id matching the tokenizer's: a valid model.name of MPNet's shapes."""
    import torch
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = MPNetConfig(pad_token_id=tok.pad_token_id, **overrides)
    if tok.vocab_size > cfg.vocab_size:
        raise ValueError(f"tokenizer vocabulary {tok.vocab_size} > model vocabulary {cfg.vocab_size}")
    torch.manual_seed(seed)
    MPNetModel(cfg).save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def folder_stages(folder: Path) -> list[str]:
    """The stages of a run folder's dvc.yaml in file order (upstream before downstream there)."""
    return list(yaml.safe_load((folder / "dvc.yaml").read_text())["stages"])


def render(res: dict) -> str:
    lines = ["# One MPNet grid folder on a GPU machine: wall time per stage", "",
             f"Command: `{res['command']}` at fisvd {res['fisvd_commit'][:10]}. Machine: {res['machine']}. "
             f"Model: {res['model']}.", ""]
    for f, r in res["folders"].items():
        lines += [f"## {f}: {r['total_wall_s']:.0f} s ({r['total_wall_s'] / 60:.1f} min)", "", "| stage | wall s |", "|---|---|"]
        lines += [f"| {s} | {t:.1f} |" for s, t in r["stage_wall_s"].items()] + [""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folders", default="grid-mpnet/mrpc/s42", help="comma-separated run folders")
    ap.add_argument("--model", default=None, help="the real all-mpnet-base-v2 directory (default: random init)")
    ap.add_argument("--tokenizer", default="minilm-l6", help="tokenizer of the random init (a model.name)")
    ap.add_argument("--config", default="{}", help="JSON overrides of the random init's MPNetConfig (a "
                    "smoke run: '{\"num_hidden_layers\": 1, \"hidden_size\": 64, \"num_attention_heads\": 2, "
                    "\"intermediate_size\": 128}')")
    ap.add_argument("--scratch", default="/tmp/fisvd-gpu-cost")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from fisvd.models import resolve_model
    from fisvd.results import machine, scratch_clone, timed_repro

    commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
    dest, env = scratch_clone(ROOT, args.scratch)
    if args.model:
        (dest / MODEL_AT).parent.mkdir(parents=True, exist_ok=True)
        (dest / MODEL_AT).symlink_to(Path(args.model).resolve())
        model = f"all-mpnet-base-v2 from {args.model}"
    else:
        overrides = json.loads(args.config)
        random_mpnet(dest / MODEL_AT, resolve_model(args.tokenizer), **overrides)
        shapes = overrides or "all-mpnet-base-v2's shapes"
        model = f"random init of MPNetConfig ({shapes}), MiniLM's WordPiece tokenizer: scores meaningless"
    res = {"command": "python benchmarks/gpu_cost.py " + shlex.join(sys.argv[1:]), "fisvd_commit": commit,
           "machine": machine(), "model": model, "folders": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in args.folders.split(","):
        t0 = time.perf_counter()
        stages = timed_repro(dest / f, env, folder_stages(dest / f), label=f"{f} ")
        res["folders"][f] = {"stage_wall_s": stages, "total_wall_s": round(time.perf_counter() - t0, 1)}
        (out / "gpu_cost.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / "gpu_cost.md").write_text(render(res))
    print((out / "gpu_cost.md").read_text())


if __name__ == "__main__":
    main()
