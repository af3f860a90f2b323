"""Typed, validated pipeline parameters (params.yaml → dataclasses).

`load_params(path)` parses params.yaml into `Params` and fails fast with `ParamError`
(one line naming the key and the allowed values) on an unknown key, a wrong type or an
out-of-range value. Stages go through `fisvd.cli.run_stage`, which turns a `ParamError` into exit code 2
before any model, data or output is touched.

Run `python -m fisvd.params [params.yaml]` to validate a file by hand.
"""
from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import ParamError

TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
FISHER_MODES = ("per_batch", "per_sample")
ALLOC_METHODS = ("uniform_rank", "uniform_ratio", "energy", "random", "inter_layer_fi",
                 "fi_retention", "max_fi")
ALLOC_SCORES = ("total", "density", "energy")
ALLOC_OBJECTIVES = ("total", "layerwise")
COMPRESS_METHODS = ("svd", "fwsvd", "tfwsvd")




def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ParamError(f"{key}: {value!r} is not allowed; choose one of {', '.join(allowed)}")


def _unit(key: str, value: float) -> None:
    if not (0.0 < value <= 1.0):
        raise ParamError(f"{key}: {value!r} is out of range; allowed values are in (0, 1]")


def _positive(key: str, value: Optional[float], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ParamError(f"{key}: {value!r} is out of range; allowed values are > 0"
                         + (" or null" if allow_none else ""))


@dataclass(frozen=True)
class DataParams:
    task: str = "mrpc"
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    seed: int = 0

    def validate(self) -> None:
        _choice("data.task", self.task, TASKS)
        _positive("data.max_train_samples", self.max_train_samples, allow_none=True)
        _positive("data.max_eval_samples", self.max_eval_samples, allow_none=True)


@dataclass(frozen=True)
class ModelParams:
    name: str = "minilm-l6"

    def validate(self) -> None:
        if not self.name.strip():
            raise ParamError("model.name: empty; use minilm-l6, an HF model id or a local directory")


@dataclass(frozen=True)
class FinetuneParams:
    epochs: int = 3
    learning_rate: float = 5e-5
    batch_size: int = 16
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 42
    max_length: int = 128

    def validate(self) -> None:
        if self.epochs < 1:
            raise ParamError(f"finetune.epochs: {self.epochs!r} is out of range; allowed values are >= 1")
        _positive("finetune.learning_rate", self.learning_rate)
        _positive("finetune.batch_size", self.batch_size)
        if self.weight_decay < 0:
            raise ParamError(f"finetune.weight_decay: {self.weight_decay!r} is out of range; allowed values are >= 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ParamError(f"finetune.warmup_ratio: {self.warmup_ratio!r} is out of range; allowed values are in [0, 1)")
        if not 8 <= self.max_length <= 4096:
            raise ParamError(f"finetune.max_length: {self.max_length!r} is out of range; allowed values are in [8, 4096]")


@dataclass(frozen=True)
class FisherParams:
    mode: str = "per_batch"
    batch_size: int = 32
    max_samples: Optional[int] = None

    def validate(self) -> None:
        _choice("fisher.mode", self.mode, FISHER_MODES)
        _positive("fisher.batch_size", self.batch_size)
        _positive("fisher.max_samples", self.max_samples, allow_none=True)


@dataclass(frozen=True)
class AllocateParams:
    method: str = "fi_retention"
    budget: float = 0.5
    fi_retention: float = 0.95
    calibrate: bool = False
    score: str = "total"
    alpha: float = 1.0
    r_min: int = 1
    objective: str = "total"
    seed: int = 0
    rank_multiple: int = 1

    def validate(self) -> None:
        _choice("allocate.method", self.method, ALLOC_METHODS)
        _unit("allocate.budget", self.budget)
        _unit("allocate.fi_retention", self.fi_retention)
        _choice("allocate.score", self.score, ALLOC_SCORES)
        _positive("allocate.alpha", self.alpha)
        if self.r_min < 1:
            raise ParamError(f"allocate.r_min: {self.r_min!r} is out of range; allowed values are >= 1")
        _choice("allocate.objective", self.objective, ALLOC_OBJECTIVES)
        if self.rank_multiple < 1:
            raise ParamError(f"allocate.rank_multiple: {self.rank_multiple!r} is out of range; allowed values "
                             f"are >= 1")


@dataclass(frozen=True)
class TfwsvdParams:
    max_iters: int = 3
    tol: float = 1e-4

    def validate(self) -> None:
        if self.max_iters < 0:
            raise ParamError(f"compress.tfwsvd.max_iters: {self.max_iters!r} is out of range; allowed values are >= 0")
        if not 0.0 <= self.tol < 1.0:
            raise ParamError(f"compress.tfwsvd.tol: {self.tol!r} is out of range; allowed values are in [0, 1)")


@dataclass(frozen=True)
class CompressParams:
    method: str = "fwsvd"
    tfwsvd: TfwsvdParams = field(default_factory=TfwsvdParams)

    def validate(self) -> None:
        _choice("compress.method", self.method, COMPRESS_METHODS)
        self.tfwsvd.validate()


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = 32
    latency_batches: int = 10

    def validate(self) -> None:
        _positive("evaluate.batch_size", self.batch_size)
        _positive("evaluate.latency_batches", self.latency_batches)


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    fisher: FisherParams = field(default_factory=FisherParams)
    allocate: AllocateParams = field(default_factory=AllocateParams)
    compress: CompressParams = field(default_factory=CompressParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotated type `tp` (int, float, str, bool, Optional[...])."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise ParamError(f"{key}: {value!r} has the wrong type; expected {_type_name(tp)}")
    if tp is float:
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ParamError(f"{key}: {value!r} is not a finite number")
    return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamError(f"{prefix}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ParamError(f"{where}: unknown key; allowed keys{' under ' + prefix if prefix else ''}: "
                             f"{', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _coerce(f"{prefix}.{name}" if prefix else name, raw[name], hints[name])
    return cls(**kwargs)


def parse_params(raw: Any) -> Params:
    """Build and validate `Params` from an already-parsed YAML mapping."""
    params = _build(Params, raw, "")
    params.validate()
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_params(raw)


if __name__ == "__main__":
    print(load_params(sys.argv[1] if len(sys.argv) > 1 else "params.yaml"))
