"""Where the AVX-512 and AVX2 kernels part: the first op whose output bytes differ (issue 22 item 6).

Runs one forward + backward of MiniLM (classifier head seeded 42) on the first 16 MRPC training pairs
twice, in fresh processes: with this machine's default kernels and with the AVX2-held mode of
benchmarks/isa_mode.py (MKL_CBWR=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2). Every module's
forward output is recorded in execution order, and every parameter gradient; the report names the first
module whose output differs, its largest difference, and how many outputs and gradients differ.

    python benchmarks/isa_first_op.py     → benchmarks/results/isa_first_op.md
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AVX2 = {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def dump(out: str) -> None:
    import torch
    from safetensors.torch import save_file
    sys.path.insert(0, str(ROOT / "src"))
    from fisvd.data import collate, load_local, resolve_glue_dir, tokenize
    from fisvd.models import load_classifier, load_tokenizer, resolve_model
    torch.manual_seed(42)
    path = resolve_model("minilm-l6")
    tok, model = load_tokenizer(path), load_classifier(path, 2).eval()
    splits, _ = load_local("mrpc", resolve_glue_dir(ROOT))
    batch = collate(tok)(tokenize(tok, splits["train"][:16], 128))
    outs: dict = {}

    def hook(name):
        def h(_m, _i, o):
            t = o[0] if isinstance(o, tuple) else o
            if torch.is_tensor(t):
                outs[f"{len(outs):04d}:{name}"] = t.detach().contiguous().clone()
        return h

    for n, m in model.named_modules():
        if n:
            m.register_forward_hook(hook(n))
    model(**batch).loss.backward()
    grads = {f"grad:{n}": p.grad.contiguous() for n, p in model.named_parameters() if p.grad is not None}
    save_file({**outs, **grads}, out, metadata={"capability": torch.backends.cpu.get_cpu_capability()})


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--dump":
        return dump(sys.argv[2])
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    sys.path.insert(0, str(ROOT / "src"))
    from fisvd.results import machine
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for mode, extra in (("default", {}), ("avx2", AVX2)):
            files[mode] = f"{tmp}/{mode}.st"
            env = {k: v for k, v in os.environ.items() if k not in AVX2} | extra
            subprocess.run([sys.executable, __file__, "--dump", files[mode]], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        caps = {m: safe_open(f, "pt").metadata()["capability"] for m, f in files.items()}
        a, b = load_file(files["default"]), load_file(files["avx2"])
    fw = sorted(k for k in a if not k.startswith("grad:"))
    diff = [k for k in fw if not torch.equal(a[k], b[k])]
    grads = [k for k in a if k.startswith("grad:")]
    lines = [f"# The first op whose bytes differ: default ({caps['default']}) vs AVX2-held ({caps['avx2']}) kernels", "",
             f"`python benchmarks/isa_first_op.py` on {machine()}: one forward + backward of MiniLM on 16 MRPC "
             "training pairs per mode, every module's output compared byte for byte, in execution order.", ""]
    if diff:
        first = diff[0]
        before = [k.split(":", 1)[1] for k in fw if k < first]
        lines += [f"- first differing output: `{first.split(':', 1)[1]}` (max |difference| "
                  f"{(a[first] - b[first]).abs().max().item():.2e}); every output before it is identical: "
                  f"{', '.join(f'`{n}`' for n in before)}",
                  f"- forward outputs differing: {len(diff)} of {len(fw)}; parameter gradients differing: "
                  f"{sum(not torch.equal(a[k], b[k]) for k in grads)} of {len(grads)}"]
    else:
        lines.append("- no output differs")
    text = "\n".join(lines) + "\n"
    (ROOT / "benchmarks/results/isa_first_op.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
