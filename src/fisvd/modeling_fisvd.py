"""The low-rank layer and the compressed-model loader, self-contained: this file imports only torch,
transformers and safetensors, and is saved beside every compressed model as `modeling_fisvd.py`
(the hub's convention for custom architectures), so the model loads without fisvd installed:

    from transformers import AutoModelForSequenceClassification, pipeline
    model = AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)
    clf = pipeline("text-classification", model=dir, trust_remote_code=True)

`LowRankLinear` computes y = (x Bᵀ) Aᵀ + b with A: [out, r], B: [r, in] as two Linears (`first` = B
without bias, `second` = A with the original bias): r·(in+out) weights instead of in·out.

The directory: `lowrank.safetensors` (every tensor of the model's state_dict; non-persistent buffers
under `buffers::`), `ranks.json` (module name → rank of each factorised layer), `config.json` (the
base architecture's config plus `auto_map` naming `FisvdForSequenceClassification` below) and the
tokenizer files. `build(config, ranks, tensors)` creates the base architecture on the meta device,
swaps in LowRankLinear modules and assigns the stored tensors (the dense weights are never
allocated, nothing is unpickled). Without `trust_remote_code=True` transformers uses the base class,
finds no `model.safetensors` and raises, rather than loading random weights.

`FisvdForSequenceClassification` is a loader, not a new architecture: `from_pretrained` returns the
base model class (e.g. `BertForSequenceClassification`) holding LowRankLinear modules. Because
transformers registers a remote class for the config's class for the rest of the process, it hands
any directory without `lowrank.safetensors` (and `from_config`) to the base class unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

WEIGHTS_FILE = "lowrank.safetensors"
RANKS_FILE = "ranks.json"
BUFFER_PREFIX = "buffers::"
AUTO_MAP = {"AutoModelForSequenceClassification": "modeling_fisvd.FisvdForSequenceClassification"}


class LowRankLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_factors(cls, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None) -> "LowRankLinear":
        """A: [out, r], B: [r, in]; bias copied from the dense layer."""
        mod = cls(B.shape[1], A.shape[0], A.shape[1], bias=bias is not None, dtype=A.dtype)
        with torch.no_grad():
            mod.first.weight.copy_(B)
            mod.second.weight.copy_(A)
            if bias is not None:
                mod.second.bias.copy_(bias)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


LOADING_KEYS = ("local_files_only",)   # how a tokenizer was loaded (HF_HUB_OFFLINE), not what it is


def save_tokenizer(tokenizer, out_dir) -> None:
    """`tokenizer.save_pretrained(out_dir)` minus the loading options transformers records in
    tokenizer_config.json (`local_files_only` follows HF_HUB_OFFLINE): the same bytes in any
    environment."""
    tokenizer.save_pretrained(out_dir)
    path = Path(out_dir) / "tokenizer_config.json"
    if path.is_file():
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if any(k in cfg for k in LOADING_KEYS):
            cfg = {k: v for k, v in cfg.items() if k not in LOADING_KEYS}
            path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def in_out(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a dense Linear, or of a transformers Conv1D (weight stored [in, out]); else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return tuple(module.weight.shape)
    return None


def base_class(config):
    """The transformers *ForSequenceClassification class of the config's architecture."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    name = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type)
    if name is None:
        raise ValueError(f"model type {config.model_type!r} has no sequence-classification class in transformers")
    return getattr(transformers, name)


def build(config, ranks: dict, tensors: dict[str, torch.Tensor], where: str = "", prepare=None) -> nn.Module:
    """The compressed model (eval mode) from its config, ranks and stored tensors; `prepare(model)`
    may rewrite the meta model before the swap (fisvd linearizes Conv1D). ValueError names `where`."""
    with torch.device("meta"):
        model = base_class(config)(config)
    if prepare is not None:
        model = prepare(model)
    for name, rank in ranks.items():
        try:
            dense = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{where}/{RANKS_FILE}: no module {name} in the model") from None
        shape = in_out(dense)
        if shape is None or not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"{where}/{RANKS_FILE}: bad entry {name}: {rank!r}")
        with torch.device("meta"):
            set_module(model, name, LowRankLinear(*shape, rank, dense.bias is not None))
    tensors = dict(tensors)
    buffers = {k[len(BUFFER_PREFIX):]: tensors.pop(k) for k in list(tensors) if k.startswith(BUFFER_PREFIX)}
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{where}: tensors do not match config + ranks: {str(exc).splitlines()[0]}") from None
    for name, buf in buffers.items():
        mod_name, _, attr = name.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        mod.register_buffer(attr, buf, persistent=False)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"{where}: tensors missing for {', '.join(left[:5])}")
    return model.eval()


HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def locate(path, **hub_kwargs) -> tuple[str | None, str | None]:
    """(weights file, ranks file) of a compressed model: a local directory, or a hub repo id (the
    files downloaded into the HF cache like any model's); (None, None) when there is none."""
    folder = Path(str(path))
    if folder.is_dir():
        if (folder / WEIGHTS_FILE).is_file():
            return str(folder / WEIGHTS_FILE), str(folder / RANKS_FILE)
        return None, None
    from transformers.utils import cached_file

    weights = cached_file(str(path), WEIGHTS_FILE, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if weights is None:
        return None, None
    return weights, cached_file(str(path), RANKS_FILE, **hub_kwargs)


class FisvdForSequenceClassification:
    """`AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)` entry (see
    the module docstring)."""

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModelForSequenceClassification"):
        pass

    @classmethod
    def from_config(cls, config, **kwargs):
        return base_class(config)._from_config(config, **kwargs)

    _from_config = from_config

    @classmethod
    def from_pretrained(cls, path, *args, config=None, **kwargs):
        from transformers import AutoConfig

        weights, ranks_file = locate(path, **{k: kwargs[k] for k in HUB_KWARGS if k in kwargs})
        if weights is None:         # not a compressed model: the base class loads it
            config = config if config is not None else AutoConfig.from_pretrained(path)
            return base_class(config).from_pretrained(path, *args, config=config, **kwargs)
        from safetensors.torch import load_file

        config = config if config is not None else AutoConfig.from_pretrained(path)
        ranks = json.loads(Path(ranks_file).read_text())
        model = build(config, ranks, load_file(str(weights)), where=str(path))
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        if isinstance(dtype, torch.dtype):
            model = model.to(dtype)
        device = kwargs.get("device_map")
        if isinstance(device, (str, torch.device)) and str(device) != "auto":
            model = model.to(device)
        return model
