"""Low-rank Linear layers and the compressed-model directory format.

`LowRankLinear` computes `y = (x Bᵀ) Aᵀ + b` with A: [out, r], B: [r, in] as two Linears
(`first` = B without bias, `second` = A with the original bias): r·(in+out) weights instead of
in·out, and (in+out)·r instead of in·out multiply-adds per token.

Compressed directory: `lowrank.safetensors` (`WEIGHTS_FILE`: all tensors, non-persistent buffers
under `buffers::`), `config.json` (the HF config), `ranks.json` (module name → rank of each factorised
Linear) and the tokenizer files. `load_compressed(dir)` builds the model on the meta device, swaps in
the low-rank modules and assigns the stored tensors, so the dense weights are never materialised; no
pickle. The weights file deliberately is not named `model.safetensors`: HF `from_pretrained(dir)`
would otherwise "load" the directory, find no tensor for the dense `...query.weight` etc., and
silently re-initialise every factorised Linear at random. With this name it raises an OSError (no
model weights found) instead; `AutoTokenizer.from_pretrained(dir)` still works.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CompressedModelError

RANKS_FILE = "ranks.json"
WEIGHTS_FILE = "lowrank.safetensors"
LEGACY_WEIGHTS_FILE = "model.safetensors"  # layout before WEIGHTS_FILE; HF from_pretrained loaded it wrongly
BUFFER_PREFIX = "buffers::"


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


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_lowrank(model: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """Replace each named Linear by a LowRankLinear built from its (A, B) factors, in place."""
    for name, (A, B) in factors.items():
        dense = model.get_submodule(name)
        if not isinstance(dense, nn.Linear):
            raise CompressedModelError(f"{name}: expected nn.Linear, found {type(dense).__name__}")
        if (A.shape[0], B.shape[1]) != tuple(dense.weight.shape):
            raise CompressedModelError(f"{name}: factors give {A.shape[0]}x{B.shape[1]}, "
                                       f"layer is {tuple(dense.weight.shape)}")
        lr = LowRankLinear.from_factors(A.to(dense.weight.dtype), B.to(dense.weight.dtype), dense.bias)
        set_module(model, name, lr.to(dense.weight.device))
    return model


def save_compressed(model: nn.Module, out_dir: str | Path, tokenizer=None) -> None:
    """Write the compressed-model directory (see module docstring)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = {n: m.rank for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    persistent = set(tensors)
    for name, buf in model.named_buffers():
        if name not in persistent:
            tensors[BUFFER_PREFIX + name] = buf.detach().contiguous().cpu()
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})  # one key: deterministic bytes
    (out_dir / LEGACY_WEIGHTS_FILE).unlink(missing_ok=True)  # a stale one would make HF load the dir wrongly
    model.config.save_pretrained(out_dir)
    (out_dir / RANKS_FILE).write_text(json.dumps(ranks, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def load_compressed(model_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a compressed-model directory into a working HF model (eval mode)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model_dir = Path(model_dir)
    if not (model_dir / WEIGHTS_FILE).is_file() and (model_dir / LEGACY_WEIGHTS_FILE).is_file():
        raise CompressedModelError(f"{model_dir / WEIGHTS_FILE}: missing; {model_dir} has the old layout "
                                   f"({LEGACY_WEIGHTS_FILE}); re-create it with `dvc repro compress`")
    for f in ("config.json", WEIGHTS_FILE, RANKS_FILE):
        if not (model_dir / f).is_file():
            raise CompressedModelError(f"{model_dir / f}: missing; not a compressed-model directory")
    try:
        tensors = load_file(str(model_dir / WEIGHTS_FILE), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CompressedModelError(f"{model_dir / WEIGHTS_FILE}: corrupt or truncated safetensors "
                                   f"file ({exc})") from None
    ranks = json.loads((model_dir / RANKS_FILE).read_text())
    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    for name, rank in ranks.items():
        try:
            dense = model.get_submodule(name)
        except AttributeError:
            raise CompressedModelError(f"{model_dir / RANKS_FILE}: no module {name} in the model") from None
        if not isinstance(dense, nn.Linear) or not isinstance(rank, int) or rank < 1:
            raise CompressedModelError(f"{model_dir / RANKS_FILE}: bad entry {name}: {rank!r}")
        with torch.device("meta"):
            lr = LowRankLinear(dense.in_features, dense.out_features, rank, dense.bias is not None)
        set_module(model, name, lr)
    buffers = {k[len(BUFFER_PREFIX):]: tensors.pop(k) for k in list(tensors) if k.startswith(BUFFER_PREFIX)}
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:
        raise CompressedModelError(f"{model_dir}: tensors do not match config + ranks: "
                                   f"{str(exc).splitlines()[0]}") from None
    for name, buf in buffers.items():
        mod_name, _, attr = name.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        mod.register_buffer(attr, buf, persistent=False)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CompressedModelError(f"{model_dir}: tensors missing for {', '.join(left[:5])}")
    return model.eval()
