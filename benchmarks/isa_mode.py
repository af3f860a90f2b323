"""Same bytes on another x86 CPU? The fine-tuned weights in the default mode and with the CPU kernels
held to AVX2 (issue 22 item 6).

For each mode, a scratch clone of HEAD runs `dvc repro finetune` (prepare + finetune on the shipped
params: MiniLM, MRPC) with the mode's environment, and records the md5 of data/model/model.safetensors,
the final training loss and grad norm, the dev score and the fine-tune wall time. Modes:
- `default`: no variable set (this machine picks its best kernels: AVX-512 where present);
- `avx2`: `MKL_CBWR=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` (MKL's conditional bitwise
  reproducibility branch, PyTorch's ATen dispatch, oneDNN's ISA cap).
The reference: an AVX2-only machine wrote md5 d088153111c6e021dbccc2f798e7ec89 in both modes for the
same params. Results accumulate in benchmarks/results/isa_mode.json (+ .md), per machine instruction set
(AVX-512, AVX2: /proc/cpuinfo), so runs on different machines sit side by side; a mode already there
for this machine's instruction set is skipped unless --force.

    python benchmarks/isa_mode.py [--modes default avx2] [--force]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "isa_mode"
REFERENCE = "d088153111c6e021dbccc2f798e7ec89"
MODES = {"default": {}, "avx2": {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def cpu_flags() -> str:
    try:
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return "?"
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "older"


def run(mode: str) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from fisvd.results import scratch_clone
    scratch, env = scratch_clone(ROOT, f"/tmp/fisvd-isa-{mode}", drop=tuple(MODES["avx2"]))
    env.update(MODES[mode])
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "dvc", "repro", "finetune"], cwd=scratch, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    weights = (scratch / "data/model/model.safetensors").read_bytes()
    history = json.loads((scratch / "metrics/finetune/metrics.json").read_text())
    runtime = json.loads((scratch / "metrics/finetune/runtime.json").read_text())
    lock = (scratch / "dvc.lock").read_text()
    return {"mode": mode, "env": MODES[mode], "md5": hashlib.md5(weights).hexdigest(), "bytes": len(weights),
            "matches_avx2_reference": hashlib.md5(weights).hexdigest() == REFERENCE,
            "dev_metrics": history, "train_runtime_s": runtime.get("train_runtime"), "wall_s": round(wall, 1),
            "data_model_dir_md5": lock.split("path: data/model\n", 1)[1].split("md5: ", 1)[1].split()[0]}


def load(path: Path) -> dict:
    """{"reference_md5", "machines": {isa: {"cpu", "runs": {mode: run}}}}; the older one-machine layout is read as such."""
    res = json.loads(path.read_text()) if path.is_file() else {}
    if "runs" in res:                                  # one machine's runs at the top level
        res = {"machines": {res["isa"]: {"cpu": res["cpu"], "runs": res["runs"]}}}
    res.setdefault("machines", {})
    res["reference_md5"] = REFERENCE
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    path = OUT.with_suffix(".json")
    res = load(path)
    here = res["machines"].setdefault(cpu_flags(), {"runs": {}})
    here["cpu"] = platform.processor() or platform.machine()
    for mode in args.modes:
        if mode in here["runs"] and not args.force:
            continue
        here["runs"][mode] = run(mode)
        here["runs"][mode]["commit"] = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(here["runs"][mode], indent=1), flush=True)
    lines = ["# Fine-tuned weights by machine and CPU kernel mode", "",
             "`python benchmarks/isa_mode.py` on each machine: `dvc repro finetune` (MiniLM, MRPC, shipped params) in a "
             f"scratch clone per mode. Reference from an AVX2-only machine (issue 22): md5 `{REFERENCE}` in both modes.", "",
             "| machine | mode | env | model.safetensors md5 | = AVX2 reference | final grad_norm | dev score | fine-tune wall (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for isa, m in res["machines"].items():
        for mode, r in m["runs"].items():
            env = " ".join(f"{k}={v}" for k, v in r["env"].items()) or "(none)"
            d = r["dev_metrics"]
            lines.append(f"| {isa} | {mode} | {env} | `{r['md5']}` | {'yes' if r['matches_avx2_reference'] else 'no'} | "
                         f"{d.get('grad_norm')} | {d.get('eval', {}).get('score')} | {r['wall_s']} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
