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
# Under pytest-xdist (`make test` runs `-n auto`) the cores are shared by the workers: one thread
# each when there are as many workers as cores, so they do not oversubscribe the CPU.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))


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
    has sentence1 "<split> premise i", sentence2 "hypothesis i" and gold label MNLI_LABELS[i % 3]; its
    annotators' votes are other labels (a reader that took a vote instead of gold_label would fail)."""
    (dir_ / "MNLI").mkdir(parents=True, exist_ok=True)
    for name, n, votes in (("train", n_train, 1), ("dev_matched", n_dev, 5), ("dev_mismatched", n_dev_mm, 5)):
        head = MNLI_HEADER + "".join(f"\tlabel{k}" for k in range(2, votes + 1)) + "\tgold_label"
        lines = [head]
        for i in range(n):
            gold = MNLI_LABELS[i % 3]
            lines.append("\t".join([str(i), str(100 + i), f"{100 + i}e", "fiction", "( a b )", "( c d )",
                                    "(ROOT (S a b))", "(ROOT (S c d))", f"{name} premise {i}",
                                    f"hypothesis {i}", *[MNLI_LABELS[(i + 1 + k) % 3] for k in range(votes)], gold]))
        (dir_ / "MNLI" / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dir_


PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "src", ".gitignore", "data/custom",
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


# ---- the tiny DVC project: one reproduced run shared by the end-to-end tests ----------------------

ALL_STAGES = ["prepare", "finetune", "fisher", "allocate", "compress", "evaluate"]


def git(repo, *args):
    import subprocess
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def reproduce(repo) -> list[str]:
    """`Repo.reproduce()` in `repo`: the names of the stages that ran, in order."""
    from dvc.repo import Repo
    with Repo(str(repo)) as r:
        return [s.addressing for s in r.reproduce()]


def tiny_project(repo: Path, model_dir: Path, glue: Path) -> Path:
    """The pipeline's sources in `repo` with params for a tiny run (tiny model, 40 MRPC rows), git+DVC
    initialised and committed."""
    import yaml
    copy_project(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["name"] = str(model_dir)
    params["finetune"].update(epochs=1, batch_size=8, max_length=32)
    params["fisher"]["batch_size"] = 8
    params["evaluate"].update(batch_size=8, latency_batches=2)
    params["allocate"]["method"] = "fi_retention"   # the tests change its tau, then other methods
    params["compress"]["method"] = "fwsvd"          # speed_table stays the shipped one: it times MiniLM's
                                                    # shapes only, so the tiny model's take any rank (issue 21)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git_dvc_init(repo)
    return repo


def tiny_env(mp, repo: Path, glue: Path, scratch: Path) -> None:
    """Environment of a tiny project's DVC run (offline, its own DVC site cache, its sources first)."""
    import sys
    for k, v in {"GLUE_DIR": str(glue), "DVC_SITE_CACHE_DIR": str(scratch / "dvc-site-cache"),
                 "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo / "src"),
                 "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}.items():
        mp.setenv(k, v)


@pytest.fixture(scope="session")
def tiny_glue(tmp_path_factory) -> Path:
    return write_mrpc(tmp_path_factory.mktemp("glue"), n_train=40, n_dev=16)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir, tiny_glue) -> Path:
    """One tiny project reproduced once (every stage runs) and committed; tests that need a finished
    run take a copy (`ran_project`) instead of paying for another."""
    base = tmp_path_factory.mktemp("tiny-run")
    repo = tiny_project(base / "proj", tiny_model_dir, tiny_glue)
    with pytest.MonkeyPatch.context() as mp:
        tiny_env(mp, repo, tiny_glue, base)
        mp.chdir(repo)
        assert reproduce(repo) == ALL_STAGES
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "run")
    return repo


@pytest.fixture
def project(tmp_path, tiny_model_dir, tiny_glue, monkeypatch) -> Path:
    """A fresh tiny project, not run yet; the test runs in it."""
    repo = tiny_project(tmp_path / "proj", tiny_model_dir, tiny_glue)
    tiny_env(monkeypatch, repo, tiny_glue, tmp_path)
    monkeypatch.chdir(repo)
    return repo


@pytest.fixture
def ran_project(tiny_run, tmp_path, tiny_glue, monkeypatch) -> Path:
    """A copy of the shared finished run (workspace, git history, DVC cache); the test runs in it."""
    import shutil
    repo = tmp_path / "proj"
    shutil.copytree(tiny_run, repo, symlinks=True)
    tiny_env(monkeypatch, repo, tiny_glue, tmp_path)
    monkeypatch.chdir(repo)
    return repo


# ---- model families: tiny random classifiers built from configs (issue 21) ---------------------------

ENCODER_TYPES = ["q", "k", "v", "attn_out", "ffn_in", "ffn_out"]
FAMILY_TYPES = {   # the matrix types of one block, in module order
    "bert": ENCODER_TYPES, "roberta": ENCODER_TYPES, "distilbert": ENCODER_TYPES, "electra": ENCODER_TYPES,
    "mpnet": ENCODER_TYPES,
    "deberta-v2": ["q", "k", "v", "pos_k", "pos_q", "attn_out", "ffn_in", "ffn_out"],  # own position projections
    "deberta-v3": ENCODER_TYPES,                       # share_att_key: q/k projections reused for positions
    "modernbert": ["qkv", "attn_out", "ffn_in", "ffn_out"],   # fused Wqkv, gated Wi (out = 2 x intermediate)
    "gpt2": ["qkv", "attn_out", "ffn_in", "ffn_out"],         # transformers Conv1D, weight stored [in, out]
    "llama": ["q", "k", "v", "attn_out", "ffn_gate", "ffn_in", "ffn_out"],
    "qwen2": ["q", "k", "v", "attn_out", "ffn_gate", "ffn_in", "ffn_out"],
}
FAMILIES = list(FAMILY_TYPES)
DECODERS = ("gpt2", "llama", "qwen2")


def family_config(family: str, vocab_size: int = 100, num_labels: int = 3, pad_token_id: int = 0):
    """A 2-block config of `family` (hidden 32, 4 heads, FFN 64)."""
    import transformers as T
    c = dict(vocab_size=vocab_size, num_labels=num_labels, pad_token_id=pad_token_id)
    enc = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=160, **c)
    dec = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, max_position_embeddings=160, bos_token_id=None, eos_token_id=None, **c)
    return {
        "bert": lambda: T.BertConfig(**enc),
        "roberta": lambda: T.RobertaConfig(**{**enc, "max_position_embeddings": 162}),
        "distilbert": lambda: T.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                 max_position_embeddings=160, **c),
        "electra": lambda: T.ElectraConfig(embedding_size=16, **enc),
        "mpnet": lambda: T.MPNetConfig(**enc),
        "deberta-v2": lambda: T.DebertaV2Config(relative_attention=True, pos_att_type=["p2c", "c2p"],
                                                share_att_key=False, max_relative_positions=-1, position_biased_input=False,
                                                position_buckets=-1, **enc),
        "deberta-v3": lambda: T.DebertaV2Config(relative_attention=True, pos_att_type=["p2c", "c2p"],
                                                share_att_key=True, position_buckets=16,
                                                norm_rel_ebd="layer_norm", max_relative_positions=-1,
                                                position_biased_input=False, **enc),
        "modernbert": lambda: T.ModernBertConfig(global_attn_every_n_layers=2, local_attention=16,
                                                 bos_token_id=None, eos_token_id=None, cls_token_id=None,
                                                 sep_token_id=None, **enc),
        "gpt2": lambda: T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=160, bos_token_id=None,
                                     eos_token_id=None, **c),
        "llama": lambda: T.LlamaConfig(**dec),
        "qwen2": lambda: T.Qwen2Config(**dec),
    }[family]()


def tiny_family(family: str, vocab_size: int = 100, num_labels: int = 3, seed: int = 0, pad_token_id: int = 0):
    """A tiny random `family` classifier (eval mode)."""
    from transformers import AutoModelForSequenceClassification
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(
        family_config(family, vocab_size, num_labels, pad_token_id)).eval()


def bpe_tokenizer(words: list[str]):
    """A byte-level BPE tokenizer trained on `words`, GPT-2 style: EOS `<|endoftext|>`, no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(words, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


MRPC_WORDS = "the a cat dog runs sleeps quickly big small red blue house car tree sees eats".split()


def family_model_dir(dir_: Path, family: str, minilm_tokenizer) -> Path:
    """`family`'s tiny random 2-label classifier saved with a tokenizer (encoders: MiniLM's WordPiece;
    decoders: a byte-level BPE without a pad token): a valid `model.name`."""
    tok = bpe_tokenizer(MRPC_WORDS * 20) if family in DECODERS else minilm_tokenizer
    pad = None if family in DECODERS else tok.pad_token_id
    model = tiny_family(family, vocab_size=len(tok), num_labels=2, pad_token_id=pad)
    model.config.pad_token_id = pad       # decoders: none, fisvd must set it from the tokenizer
    model.save_pretrained(dir_)
    tok.save_pretrained(dir_)
    return dir_
