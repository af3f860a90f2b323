"""Method registries: one home per method.

A method (an allocation method, a factorisation) is one spec in `fisvd.methods` (name, options
dataclass read from `params.yaml` at `<section>.<name>`, what it needs, help; importable without
torch) plus its implementation, registered by name in the module that computes it:

    ALLOCATORS.spec("max_fi", params=MaxFiParams, help="maximise retained FI under the budget")  # methods.py
    @ALLOCATORS.implements("max_fi")                                                               # allocate.py
    def max_fi(mats, p, opts): ...

Params validation (the allowed `<section>.method` values and each method's own keys), the DVC param
deps of a stage, `--help` and the docs' method table all read the specs; tests fail when one of them
falls out of step, or when a spec has no implementation. Defaults live in params.yaml alone: options
dataclasses have none.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional


def _always(opts) -> bool:
    return True


@dataclass(frozen=True)
class Entry:
    name: str
    params: Optional[type]      # frozen dataclass of the method's own keys, or None
    help: str
    needs: tuple[str, ...]      # what the method reads (statistics, "measurements", …)
    budgeted: Callable = _always  # opts → whether the method spends the budget p (allocators)
    sliceable: bool = False     # factorisations: rank-r factors are slices of one decomposition
    sequential: bool = False    # factorisations: factors of all matrices at once, from the model and
                                # calibration batches (fisvd.sequential), not matrix by matrix
    impl: dict = field(default_factory=dict, compare=False, repr=False)   # kind → function

    @property
    def fn(self) -> Callable:
        return self.implementation("fn")

    def implementation(self, kind: str = "fn") -> Callable:
        try:
            return self.impl[kind]
        except KeyError:
            raise LookupError(f"method {self.name!r} has no {kind!r} implementation registered; import the "
                              f"module that implements it (fisvd.allocate / fisvd.factorize)") from None

    def keys(self, section: str) -> list[str]:
        """Full params.yaml keys of this method's options (`<section>.<name>.<field>`)."""
        if self.params is None:
            return []
        return [f"{section}.{self.name}.{f.name}" for f in dataclasses.fields(self.params)]


class Registry:
    """Ordered name → Entry map for the methods of one params section (`allocate`, `compress`)."""

    def __init__(self, section: str):
        self.section = section
        self._entries: dict[str, Entry] = {}

    def spec(self, name: str, *, help: str, params: Optional[type] = None, needs: tuple[str, ...] = (),
             budgeted: Callable = _always, sliceable: bool = False, sequential: bool = False) -> Entry:
        if name in self._entries:
            raise ValueError(f"{self.section}: method {name!r} registered twice")
        if params is not None and not dataclasses.is_dataclass(params):
            raise TypeError(f"{self.section}.{name}: params must be a dataclass")
        self._entries[name] = Entry(name, params, help, tuple(needs), budgeted, sliceable, sequential)
        return self._entries[name]

    def implements(self, name: str, kind: str = "fn"):
        """Decorator: register `fn` as the `kind` implementation of spec `name`."""
        entry = self[name]

        def deco(fn: Callable) -> Callable:
            if kind in entry.impl:
                raise ValueError(f"{self.section}.{name}: {kind} implemented twice")
            entry.impl[kind] = fn
            return fn
        return deco

    def __getitem__(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"{self.section}.method: unknown {name!r}; choose one of "
                           f"{', '.join(self.names())}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def with_params(self) -> tuple[str, ...]:
        """Names of the methods that have their own options."""
        return tuple(n for n, e in self._entries.items() if e.params is not None)

    def help_text(self) -> str:
        """One line per method: name, what it does, its own keys (for `--help` and docs)."""
        lines = []
        for e in self._entries.values():
            keys = e.keys(self.section)
            lines.append(f"  {e.name:15} {e.help}" + (f" [{', '.join(keys)}]" if keys else ""))
        return "\n".join(lines)
