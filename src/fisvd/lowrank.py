"""Low-rank Linear layers and the compressed-model directory format.

The layer (`LowRankLinear`, y = (x Bᵀ) Aᵀ + b) and the loader live in `fisvd.modeling_fisvd`, a
self-contained file that `save_compressed` copies into the directory, so plain transformers loads
it (`from_pretrained(dir, trust_remote_code=True)`, `pipeline(...)`; see that module).

Compressed directory: `lowrank.safetensors` (`WEIGHTS_FILE`: all tensors, non-persistent buffers
under `buffers::`), `config.json` (the HF config plus `auto_map`), `ranks.json` (module name → rank
of each factorised Linear), `modeling_fisvd.py` and the tokenizer files. `load_compressed(dir)`
builds the model on the meta device, swaps in the low-rank modules and assigns the stored tensors, so
the dense weights are never materialised; no pickle. The weights file deliberately is not named
`model.safetensors`: HF `from_pretrained(dir)` without remote code would otherwise "load" the
directory, find no tensor for the dense `...query.weight` etc., and silently re-initialise every
factorised Linear at random. With this name it raises an OSError (no model weights found) instead;
`AutoTokenizer.from_pretrained(dir)` still works.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import modeling_fisvd
from .errors import CompressedModelError
from .models import linearize
from .modeling_fisvd import AUTO_MAP, BUFFER_PREFIX, RANKS_FILE, WEIGHTS_FILE, LowRankLinear, save_tokenizer, set_module

LEGACY_WEIGHTS_FILE = "model.safetensors"  # layout before WEIGHTS_FILE; HF from_pretrained loaded it wrongly
MODELING_FILE = "modeling_fisvd.py"        # fisvd.modeling_fisvd, copied beside the weights
__all__ = ["LowRankLinear", "set_module", "apply_lowrank", "save_compressed", "load_compressed", "RANKS_FILE",
           "WEIGHTS_FILE", "BUFFER_PREFIX", "MODELING_FILE"]


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
    model.config.auto_map = dict(AUTO_MAP)
    model.config.save_pretrained(out_dir)
    (out_dir / MODELING_FILE).write_bytes(Path(modeling_fisvd.__file__).read_bytes())
    (out_dir / RANKS_FILE).write_text(json.dumps(ranks, indent=2) + "\n")
    if tokenizer is not None:
        save_tokenizer(tokenizer, out_dir)


def load_compressed(model_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a compressed-model directory into a working HF model (eval mode)."""
    from transformers import AutoConfig

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
    try:
        return modeling_fisvd.build(AutoConfig.from_pretrained(model_dir), ranks, tensors, str(model_dir),
                                    prepare=linearize)
    except ValueError as exc:
        raise CompressedModelError(str(exc)) from None
