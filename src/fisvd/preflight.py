"""Model/params mismatches that can be known before fine-tuning, reported before it (exit 2, one line).

`fisvd.models.skeleton(path, num_labels)` builds the classifier's structure on the meta device from
its config (no weights) and raises a `ModelError` naming `model.name` when the architecture has no
sequence-classification class in transformers or no repeated block of Linear layers to compress.
`check(params, model_path, shapes)` then stops with a `ParamError` naming the key when:
- `finetune.max_length` exceeds the model's learned absolute position embeddings (BERT-style
  `max_position_embeddings`, RoBERTa/MPNet's minus their padding offset, GPT-2's `n_positions`;
  rotary / relative-only models are not limited here);
- `allocate.budget_kind: latency` with a `speed_table` that has no timings for some of the model's
  shapes (params kind falls back instead: those matrices take any rank, fisvd.plan).
A tokenizer with neither pad nor EOS token is caught by `fisvd.models.load_tokenizer`.

This is an INTERFACE module (fisvd.deps): it may stop a stage but never changes an output, so the
params it reads are not DVC deps of the stage that calls it (like the validation of params.yaml that
every stage runs) and its imports are not code deps.
"""
from __future__ import annotations

from .errors import ParamError

ROBERTA_LIKE = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "data2vec-text", "longformer")


def position_limit(config) -> int | None:
    """The longest input (tokens) the config's learned absolute position embeddings allow; None when
    positions are rotary or relative only."""
    d = config.to_dict()
    if any("rope" in k for k in d) or d.get("position_embedding_type") in ("rotary", "relative_key",
                                                                          "relative_key_query"):
        return None
    if config.model_type.startswith("deberta") and not d.get("position_biased_input", True):
        return None
    limit = d.get("max_position_embeddings", d.get("n_positions"))
    if not isinstance(limit, int):
        return None
    if config.model_type == "mpnet":             # MPNetEmbeddings numbers positions from its fixed padding_idx 1
        limit -= 2                               # + 1, whatever the config's pad_token_id
    elif config.model_type in ROBERTA_LIKE and isinstance(d.get("pad_token_id"), int):
        limit -= d["pad_token_id"] + 1           # positions from pad_token_id + 1
    return limit


def shape_key(m: int, n: int) -> str:
    """A speed table's key of a [m, n] weight (= fisvd.speed.shape_key; a test holds them equal)."""
    return f"{m}x{n}"


def check(params, model_path: str, shapes) -> None:
    """Raise on a known mismatch of params with the model at `model_path` whose compressible matrices
    have `shapes` ([out, in] each; fisvd.models.skeleton found them, or raised)."""
    import json
    from pathlib import Path

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    limit = position_limit(config)
    L = params.finetune.max_length
    if limit is not None and L > limit:
        raise ParamError(f"finetune.max_length: {L} exceeds the {limit} positions of {model_path} "
                         f"({config.model_type}); use at most {limit}")
    a = params.allocate
    if a.budget_kind == "latency" and a.speed_table:
        path = Path(a.speed_table)
        try:
            timed = set(json.loads(path.read_text())["shapes"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ParamError(f"allocate.speed_table: {path} is not a readable latency table "
                             f"({type(exc).__name__}); build it with benchmarks/latency_table.py") from None
        if missing := sorted({shape_key(*s) for s in shapes} - timed):
            raise ParamError(f"allocate.budget_kind: latency needs timings for every shape, and {a.speed_table} "
                             f"has none for {', '.join(missing)}; measure them (benchmarks/latency_table.py "
                             f"--model {params.model.name}) or use budget_kind: params")
