"""Typed, validated pipeline parameters (params.yaml → frozen dataclasses).

`load_params(path)` parses params.yaml into `Params` and fails fast with `ParamError` (one line
naming the key and the allowed values) on an unknown or missing key, a wrong type or an
out-of-range value. Stages go through `fisvd.cli.run_stage`, which turns a `ParamError` into exit
code 2 before any model, data or output is touched.

Defaults live in params.yaml alone: no field here has a default, so a key missing from the file is
an error, never a silent second default. Method choices and each method's own keys come from the
method specs (`fisvd.methods`: ALLOCATORS, FACTORISATIONS; no torch): every method has an
`allocate.<method>` / `compress.<method>` section, validated by the method's options dataclass (`{}`
for a method without options), so a stage's DVC params can name the chosen method's section alone.

Run `python -m fisvd.params [params.yaml]` to validate a file by hand.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import ParamError
from .methods import ALLOCATORS, FACTORISATIONS
from .validate import at_least, choice, names as _names, percents, positive, seeds, unit

TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
FISHER_MODES = ("per_batch", "per_sample")


def registries() -> dict:
    """{section: Registry} of the sections whose `method` is chosen from a registry (fisvd.methods)."""
    return {"allocate": ALLOCATORS, "compress": FACTORISATIONS}


METRICS = ("accuracy", "f1", "f1_macro", "mcc", "pearson", "spearman")   # fisvd.metrics.METRICS (tested equal)
REGRESSION_METRICS = ("pearson", "spearman")
FORMATS = ("csv", "tsv", "jsonl", "parquet")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".pq": "parquet"}
PROBLEMS = ("classification", "regression")
GRID_FOLDER = r"grid(-[a-z0-9][a-z0-9_]*)?"     # grid.folder: grid, or grid-<name> for grids.<name>


@dataclass(frozen=True)
class CustomTask:
    """Your own task (`data.custom.<name>`; docs/data.md). Local files (paths relative to the project
    root; put them under data/custom/, which prepare depends on) or, with `hub`, a hub dataset whose
    split names `train` / `dev` / `test` are."""
    OPTIONAL_KEYS = ("test", "hub", "config", "format", "labels")
    train: str
    dev: str
    test: Optional[str]
    hub: Optional[str]
    config: Optional[str]
    format: Optional[str]
    text: list[str]
    label: str
    problem: str
    metric: list[str]
    labels: Optional[list[typing.Union[str, int]]]

    def file_format(self, path: str) -> Optional[str]:
        """csv / tsv / jsonl / parquet: `format` if set, else from the file's extension (None: unknown)."""
        return self.format or EXTENSIONS.get(Path(path).suffix.lower())

    def validate(self, key: str) -> None:
        if not 1 <= len(self.text) <= 2 or not all(t.strip() for t in self.text):
            raise ParamError(f"{key}.text: {self.text!r}; give one or two text column names, e.g. [review] or "
                             f"[question, answer]")
        choice(f"{key}.problem", self.problem, PROBLEMS)
        if not 1 <= len(self.metric) <= 2 or len(set(self.metric)) != len(self.metric):
            raise ParamError(f"{key}.metric: {self.metric!r}; give one metric or two to average, e.g. [f1_macro] "
                             f"or [f1, accuracy]")
        allowed = REGRESSION_METRICS if self.problem == "regression" else \
            tuple(m for m in METRICS if m not in REGRESSION_METRICS)
        _names(f"{key}.metric", self.metric, allowed)
        if self.format is not None:
            choice(f"{key}.format", self.format, FORMATS)
        if self.hub is None:
            for split in ("train", "dev", "test"):
                path = getattr(self, split)
                if path is not None and self.file_format(path) is None:
                    raise ParamError(f"{key}.{split}: {path!r} has no known extension "
                                     f"({', '.join(EXTENSIONS)}); set {key}.format")
        if self.labels is not None:
            if self.problem == "regression":
                raise ParamError(f"{key}.labels: a regression task has no label set; remove it")
            if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
                raise ParamError(f"{key}.labels: {self.labels!r}; give two or more distinct labels (their order "
                                 f"is the class ids)")
        if "f1" in self.metric and self.labels is not None and len(self.labels) != 2:
            raise ParamError(f"{key}.metric: f1 is binary F1 (of the second label); {len(self.labels)} labels "
                             f"need f1_macro")


@dataclass(frozen=True)
class DataParams:
    task: str
    max_train_samples: Optional[int]
    max_eval_samples: Optional[int]
    seed: int
    calibration_rows: int
    custom: dict[str, CustomTask]

    def validate(self, key: str) -> None:
        for name in self.custom:
            if name in TASKS or not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
                raise ParamError(f"{key}.custom.{name}: a custom task name must be lower-case letters, digits, - "
                                 f"or _ and not a GLUE task name ({', '.join(TASKS)})")
        choice(f"{key}.task", self.task, all_tasks(self))
        positive(f"{key}.max_train_samples", self.max_train_samples, allow_none=True)
        positive(f"{key}.max_eval_samples", self.max_eval_samples, allow_none=True)
        at_least(f"{key}.calibration_rows", self.calibration_rows, 0)


def all_tasks(data: DataParams) -> tuple[str, ...]:
    """The GLUE task names and the custom ones."""
    return TASKS + tuple(data.custom)


@dataclass(frozen=True)
class ModelParams:
    name: str

    def validate(self, key: str) -> None:
        if not self.name.strip():
            raise ParamError(f"{key}.name: empty; use minilm-l6, an HF model id or a local directory")


@dataclass(frozen=True)
class FinetuneParams:
    epochs: int
    learning_rate: float
    batch_size: int
    weight_decay: float
    warmup_ratio: float
    seed: int
    max_length: int

    def validate(self, key: str) -> None:
        at_least(f"{key}.epochs", self.epochs, 1)
        positive(f"{key}.learning_rate", self.learning_rate)
        positive(f"{key}.batch_size", self.batch_size)
        at_least(f"{key}.weight_decay", self.weight_decay, 0)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ParamError(f"{key}.warmup_ratio: {self.warmup_ratio!r} is out of range; allowed values are in [0, 1)")
        if not 8 <= self.max_length <= 4096:
            raise ParamError(f"{key}.max_length: {self.max_length!r} is out of range; allowed values are in [8, 4096]")


@dataclass(frozen=True)
class FisherParams:
    mode: str
    batch_size: int
    max_samples: Optional[int]
    weighted: bool

    def validate(self, key: str) -> None:
        choice(f"{key}.mode", self.mode, FISHER_MODES)
        positive(f"{key}.batch_size", self.batch_size)
        positive(f"{key}.max_samples", self.max_samples, allow_none=True)


@dataclass(frozen=True)
class MethodSection:
    """A section whose `method` names a registry entry; `options` holds every registered method's
    own params (`<section>.<name>` in params.yaml; None for a method without options), so a sweep
    can switch methods by name alone."""
    method: str
    options: dict

    def opts(self, name: Optional[str] = None):
        """The params dataclass of `name` (default: the chosen method), or None if it has none."""
        return self.options.get(name or self.method)


BUDGET_KINDS = ("params", "latency")


@dataclass(frozen=True)
class AllocateParams(MethodSection):
    budget: float
    rank_multiple: int
    budget_kind: str              # params | latency (p = kept share of the speed table's time)
    speed_table: Optional[str]    # latency table JSON (fisvd.speed): only ranks faster than dense; null = off

    def validate(self, key: str) -> None:
        unit(f"{key}.budget", self.budget)
        at_least(f"{key}.rank_multiple", self.rank_multiple, 1)
        choice(f"{key}.budget_kind", self.budget_kind, BUDGET_KINDS)
        if self.speed_table is not None and not self.speed_table.strip():
            raise ParamError(f"{key}.speed_table: empty; give a latency table JSON path or null (off)")
        if self.budget_kind == "latency" and self.speed_table is None:
            raise ParamError(f"{key}.speed_table: null, but {key}.budget_kind latency spends the measured time "
                             f"of a speed table; set {key}.speed_table (benchmarks/latency_table.py writes "
                             f"one) or {key}.budget_kind: params")


@dataclass(frozen=True)
class CompressParams(MethodSection):
    def validate(self, key: str) -> None:
        pass


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    latency_batches: int

    def validate(self, key: str) -> None:
        positive(f"{key}.batch_size", self.batch_size)
        positive(f"{key}.latency_batches", self.latency_batches)


@dataclass(frozen=True)
class TaskFinetune:
    learning_rate: float
    epochs: int
    batch_size: int

    def validate(self, key: str) -> None:
        positive(f"{key}.learning_rate", self.learning_rate)
        at_least(f"{key}.epochs", self.epochs, 1)
        positive(f"{key}.batch_size", self.batch_size)


@dataclass(frozen=True)
class Limit:
    """Where a method runs in the grid: each list (when given) restricts its cells to those values;
    an omitted key means no restriction."""
    OPTIONAL_KEYS = True
    tasks: Optional[list[str]]
    factorisations: Optional[list[str]]
    allocations: Optional[list[str]]
    budgets: Optional[list[int]]
    seeds: Optional[list[int]]


@dataclass(frozen=True)
class GridParams:
    folder: str                  # where its run folders (<folder>/<task>/s<seed>) and report stage go
    tasks: list[str]
    seeds: list[int]
    budgets: list[int]
    headline: list[int]          # percents the report's overview and headline table show (recovered ones too)
    allocations: list[str]
    factorisations: list[str]
    limit: dict[str, Limit]
    max_train_samples: dict[str, int]
    finetune: dict[str, TaskFinetune]

    def validate(self, key: str) -> None:
        reg = registries()
        if not re.fullmatch(GRID_FOLDER, self.folder):
            raise ParamError(f"{key}.folder: {self.folder!r}; `grid` or `grid-<name>` (lower case, digits, _)")
        _names(f"{key}.tasks", self.tasks, sorted(set(self.tasks)))   # known names: Params.validate
        _names(f"{key}.allocations", self.allocations, reg["allocate"].names())
        _names(f"{key}.factorisations", self.factorisations, reg["compress"].names())
        seeds(f"{key}.seeds", self.seeds)
        percents(f"{key}.budgets", self.budgets)
        percents(f"{key}.headline", self.headline, " (those the grid does not run are skipped)")
        methods = set(reg["allocate"].names()) | set(reg["compress"].names())
        for name, lim in self.limit.items():
            choice(f"{key}.limit.{name}", name, tuple(sorted(methods)))
            if lim.tasks is not None:
                _names(f"{key}.limit.{name}.tasks", lim.tasks, sorted(set(lim.tasks)))   # names: Params.validate
            if lim.factorisations is not None:
                _names(f"{key}.limit.{name}.factorisations", lim.factorisations, reg["compress"].names())
            if lim.allocations is not None:
                _names(f"{key}.limit.{name}.allocations", lim.allocations, reg["allocate"].names())
            if lim.budgets is not None:
                percents(f"{key}.limit.{name}.budgets", lim.budgets)
            if lim.seeds is not None:
                seeds(f"{key}.limit.{name}.seeds", lim.seeds)


@dataclass(frozen=True)
class RecoverCell:
    """Cells to recover: allocation × factorisation at `budgets`; `teacher: true` distils from the
    dense model (recover.teacher); `seeds`: recovery seeds (default: the cell's fine-tune seed)."""
    OPTIONAL_KEYS = ("teacher", "seeds")
    allocation: str
    factorisation: str
    budgets: list[int]
    teacher: Optional[bool]
    seeds: Optional[list[int]]


@dataclass(frozen=True)
class TeacherParams:
    weight: float           # w in (1 − w) · task loss + w · KD (fisvd.distill)
    temperature: float      # τ of the KD term

    def validate(self, key: str) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ParamError(f"{key}.weight: {self.weight!r} is out of range; allowed values are in [0, 1]")
        positive(f"{key}.temperature", self.temperature)


@dataclass(frozen=True)
class RecoverParams:
    epochs: int
    teacher: TeacherParams
    cells: list[RecoverCell]

    def validate(self, key: str) -> None:
        at_least(f"{key}.epochs", self.epochs, 1)
        reg = registries()
        for i, c in enumerate(self.cells):
            choice(f"{key}.cells[{i}].allocation", c.allocation, reg["allocate"].names())
            choice(f"{key}.cells[{i}].factorisation", c.factorisation, reg["compress"].names())
            percents(f"{key}.cells[{i}].budgets", c.budgets)
            if c.seeds is not None:
                seeds(f"{key}.cells[{i}].seeds", c.seeds)


@dataclass(frozen=True)
class Params:
    data: DataParams
    model: ModelParams
    finetune: FinetuneParams
    fisher: FisherParams
    allocate: AllocateParams
    compress: CompressParams
    evaluate: EvaluateParams
    grid: GridParams
    recover: RecoverParams
    grids: dict[str, Any]   # further grids: name → overrides of these sections (grid_variant)

    def validate(self, key: str) -> None:
        """Task names across sections: the grid's are GLUE or `data.custom` tasks."""
        known = all_tasks(self.data)
        _names("grid.tasks", self.grid.tasks, known)
        for t in list(self.grid.max_train_samples) + list(self.grid.finetune):
            choice(f"grid.max_train_samples/finetune: task {t}", t, known)
        for name, lim in self.grid.limit.items():
            if lim.tasks is not None:
                _names(f"grid.limit.{name}.tasks", lim.tasks, known)
        for t in self.grid.tasks:
            if t not in self.grid.finetune:
                raise ParamError(f"grid.finetune.{t}: missing; every grid task needs its fine-tune settings "
                                 f"({{learning_rate: …, epochs: …, batch_size: …}}; for a GLUE task `python "
                                 f"benchmarks/finetune_select.py --tasks {t} --apply` chooses them on held-out train)")
        if registries()["compress"][self.compress.method].sequential and \
                "measurements" in registries()["allocate"][self.allocate.method].needs:
            raise ParamError(f"allocate.method: {self.allocate.method} measures each matrix's factors alone, but "
                             f"compress.method {self.compress.method} fits the whole model at once; choose another pair")
        seq = [f for f in self.grid.factorisations if registries()["compress"][f].sequential]
        lim = {f: self.grid.limit.get(f) for f in seq}
        for f in seq:
            allocs = lim[f].allocations if lim[f] and lim[f].allocations is not None else self.grid.allocations
            bad = [a for a in allocs if a in self.grid.allocations and "measurements" in registries()["allocate"][a].needs
                   and not (self.grid.limit.get(a) and self.grid.limit[a].factorisations is not None
                            and f not in self.grid.limit[a].factorisations)]
            if bad:
                raise ParamError(f"grid.limit.{f}.allocations: {f} fits the whole model at once and cannot run with "
                                 f"{bad[0]} (it measures each matrix's factors alone); limit one of them")
        reg = registries()["compress"]
        weighted = [m for m in (self.compress.method, *self.grid.factorisations) if {"cov_xg", "cov_gn"} & set(reg[m].needs)]
        if weighted and not self.fisher.weighted:
            raise ParamError(f"fisher.weighted: false, but {weighted[0]} (compress.method or grid.factorisations) reads "
                             f"the gradient-weighted statistics; set fisher.weighted: true")


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")   # 2e-5, 1.E3, .5e1: numbers in YAML 1.2


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotated type `tp` (int, float, str, bool, Optional[...], dataclass)."""
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ParamError(f"{key}: {value!r} has the wrong type; expected a list")
        return [_coerce(f"{key}[{i}]", v, typing.get_args(tp)[0]) for i, v in enumerate(value)]
    if tp is Any:                   # kept as written (grids.<name>: validated as a whole, grid_variant)
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamError(f"{key}: {value!r} has the wrong type; expected a mapping")
        return {str(k): _coerce(f"{key}.{k}", v, typing.get_args(tp)[1]) for k, v in value.items()}
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        for a in args[:-1]:         # str | int: the first that fits
            try:
                return _coerce(key, value, a)
            except ParamError:
                pass
        return _coerce(key, value, args[-1])
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is float and isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        value = float(value)        # YAML 1.1 (PyYAML) reads 2e-5 as a string; YAML 1.2 (DVC) as a number
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


def build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from mapping `raw`: every field required, no unknown keys; then the
    class's `validate(prefix)` if it has one. Sections that are `MethodSection`s also take one
    sub-mapping per registered method with params."""
    if not isinstance(raw, dict):
        raise ParamError(f"{prefix}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "options"]
    registry = registries()[prefix] if issubclass(cls, MethodSection) else None
    sub = list(registry.names()) if registry else []
    where = (lambda k: f"{prefix}.{k}" if prefix else str(k))
    for key in raw:
        if key not in names and key not in sub:
            raise ParamError(f"{where(key)}: unknown key; allowed keys{' under ' + prefix if prefix else ''}: "
                             f"{', '.join(names + sub)}")
    optional = getattr(cls, "OPTIONAL_KEYS", False)   # True: every key may be left out; a tuple: those
    if optional is True:
        raw = {k: raw.get(k) for k in names}
    elif optional:
        raw = {**{k: None for k in optional}, **raw}
    for key in names + sub:
        if key not in raw:
            raise ParamError(f"{where(key)}: missing key (every key is set in params.yaml; see docs/params.md)")
    kwargs = {n: _coerce(where(n), raw[n], hints[n]) for n in names}
    if registry is not None:
        choice(where("method"), kwargs["method"], registry.names())
        kwargs["options"] = {n: _options(registry[n], raw[n], where(n)) for n in sub}
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(prefix)
    return obj


def _options(entry, raw: Any, key: str):
    """A method's options dataclass from its section; `{}` (None) for a method without options."""
    if entry.params is not None:
        return build(entry.params, raw, key)
    if raw not in ({}, None):
        raise ParamError(f"{key}: {entry.name} has no options; write `{entry.name}: {{}}`")
    return None


def parse_params(raw: Any) -> Params:
    """Build and validate `Params` from an already-parsed YAML mapping, each of its `grids` too."""
    if raw is None:
        raw = {}
    p = build(Params, raw, "")
    for name in p.grids:
        grid_variant(raw, name)
    return p


def _merge(base: Any, over: Any) -> Any:
    """A new `over` on top of `base` (neither changed): mappings merge key by key (recursively),
    anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**copy.deepcopy(base), **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return copy.deepcopy(over)


def grid_variant(raw: dict, name: str) -> tuple[dict, Params]:
    """A further grid `grids.<name>`: the root params with its overrides merged in (mappings key by
    key, lists and values replaced), `grid.folder` = grid-<name> and no `grids` of its own.
    Returns (raw, parsed); any error names the key under grids.<name>."""
    key = f"grids.{name}"
    if not re.fullmatch(GRID_FOLDER, f"grid-{name}"):
        raise ParamError(f"{key}: name {name!r}; lower case letters, digits and _")
    over = raw["grids"][name]
    if not isinstance(over, dict) or not over:
        raise ParamError(f"{key}: expected a mapping of the sections it overrides, got {over!r}")
    for section, value in over.items():
        if section not in [f.name for f in dataclasses.fields(Params)] or section == "grids":
            raise ParamError(f"{key}.{section}: unknown section; a grid overrides "
                             + ", ".join(f.name for f in dataclasses.fields(Params) if f.name != "grids"))
        if section == "grid" and not isinstance(value, dict):
            raise ParamError(f"{key}.grid: expected a mapping of the grid keys it overrides, got {value!r}")
        if section == "grid" and "folder" in value:
            raise ParamError(f"{key}.grid.folder: set by fisvd.grid (grid-{name}); leave it out")
    if isinstance(raw.get("grid"), dict) and raw["grid"].get("folder") == f"grid-{name}":
        raise ParamError(f"{key}: its folder grid-{name} is grid.folder, the main grid's; rename one")
    merged = _merge({k: v for k, v in raw.items() if k != "grids"}, over)
    merged["grid"]["folder"], merged["grids"] = f"grid-{name}", {}
    try:
        return merged, build(Params, merged, "")
    except ParamError as exc:
        raise ParamError(f"{key} → {exc}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_params(raw)


def flat_keys(raw: dict, prefix: str = "") -> list[str]:
    """Every leaf key of a params mapping as `a.b.c` (for docs and consistency tests)."""
    out = []
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else k
        out.extend(flat_keys(v, key) if isinstance(v, dict) else [key])
    return out


if __name__ == "__main__":
    print(load_params(sys.argv[1] if len(sys.argv) > 1 else "params.yaml"))
