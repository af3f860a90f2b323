"""Shared fixtures: tiny random models built from configs (no downloads) and paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_GLUE = ROOT.parent / "shared" / "data" / "glue"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_bert_config(num_labels: int = 2, vocab_size: int = 30522, **kw):
    from transformers import BertConfig
    base = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=128, num_labels=num_labels)
    base.update(kw)
    return BertConfig(**base)


def tiny_bert(num_labels: int = 2, seed: int = 0, **kw):
    from transformers import BertForSequenceClassification
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(num_labels, **kw)).eval()


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from fisvd.models import load_tokenizer, resolve_model
    return load_tokenizer(resolve_model("minilm-l6"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, minilm_tokenizer) -> Path:
    """A tiny random BERT classifier saved with the MiniLM tokenizer: a valid `model.name`."""
    d = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert(vocab_size=minilm_tokenizer.vocab_size).save_pretrained(d)
    minilm_tokenizer.save_pretrained(d)
    return d


def write_mrpc(dir_: Path, n_train: int = 48, n_dev: int = 24, seed: int = 0) -> Path:
    """A small MRPC-format GLUE folder (BOM header, stray quotes) with learnable labels."""
    import random
    rng = random.Random(seed)
    words = "the a cat dog runs sleeps quickly big small red blue house car tree sees eats".split()
    (dir_ / "MRPC").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(n):
            a = " ".join(rng.choice(words) for _ in range(rng.randint(4, 10)))
            label = i % 2
            b = a if label else " ".join(rng.choice(words) for _ in range(rng.randint(4, 10)))
            lines.append(f"{label}\t{i}\t{i + 1000}\t\" {a}\t{b} \"")
        (dir_ / "MRPC" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dir_


MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
               "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1")
MNLI_LABELS = ("entailment", "neutral", "contradiction")


def write_mnli(dir_: Path, n_train: int = 6, n_dev: int = 4, n_dev_mm: int = 5) -> Path:
    """A small MNLI-format GLUE folder: train.tsv (label1, gold_label), dev_matched.tsv and
    dev_mismatched.tsv (label1..label5, gold_label), with the real MNLI headers. Row i of a file
    has sentence1 "<split> premise i", sentence2 "hypothesis i" and gold label MNLI_LABELS[i % 3]."""
    (dir_ / "MNLI").mkdir(parents=True, exist_ok=True)
    for name, n, votes in (("train", n_train, 1), ("dev_matched", n_dev, 5), ("dev_mismatched", n_dev_mm, 5)):
        head = MNLI_HEADER + "".join(f"\tlabel{k}" for k in range(2, votes + 1)) + "\tgold_label"
        lines = [head]
        for i in range(n):
            gold = MNLI_LABELS[i % 3]
            lines.append("\t".join([str(i), str(100 + i), f"{100 + i}e", "fiction", "( a b )", "( c d )",
                                    "(ROOT (S a b))", "(ROOT (S c d))", f"{name} premise {i}",
                                    f"hypothesis {i}", *[gold] * votes, gold]))
        (dir_ / "MNLI" / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dir_


PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "src", ".gitignore",
                 "benchmarks/results/latency_table_cpu.json")   # the last: an allocate input (paths.LATENCY_TABLE)


def copy_project(repo: Path) -> Path:
    """The pipeline's sources copied into `repo` (a fresh temp project for end-to-end tests)."""
    import shutil
    repo.mkdir(parents=True, exist_ok=True)
    for item in PROJECT_FILES:
        src, dst = ROOT / item, repo / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")) \
            if src.is_dir() else shutil.copy(src, dst)
    return repo


def git_dvc_init(repo: Path) -> None:
    """git init + dvc init + a first commit of everything in `repo`."""
    import subprocess
    import sys
    run = lambda *a: subprocess.run(list(a), cwd=repo, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    run("git", "config", "user.email", "ci@example.com")
    run("git", "config", "user.name", "ci")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "init")


def load_bench(name: str):
    """benchmarks/<name>.py imported as a module (the benchmark scripts are not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
