"""Method registries: one home per method.

A method (an allocation method, a factorisation) is one decorated function in its own module plus,
when it has options, a frozen params dataclass read from `params.yaml` at `<section>.<name>`:

    @METHODS.register("max_fi", params=MaxFiParams, help="maximise retained FI under the budget")
    def max_fi(mats, budget_params, p, opts): ...

Params validation (the allowed `<section>.method` values and each method's own keys), the DVC param
deps of a stage, `--help` and the README's params table all read the registry; tests fail when one
of them falls out of step. Defaults live in params.yaml alone: params dataclasses have none.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Callable
    params: Optional[type]      # frozen dataclass of the method's own keys, or None
    help: str
    needs: tuple[str, ...]      # statistics the method reads (e.g. "fisher")

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

    def register(self, name: str, *, help: str, params: Optional[type] = None, needs: tuple[str, ...] = ()):
        if name in self._entries:
            raise ValueError(f"{self.section}: method {name!r} registered twice")
        if params is not None and not dataclasses.is_dataclass(params):
            raise TypeError(f"{self.section}.{name}: params must be a dataclass")

        def deco(fn: Callable) -> Callable:
            self._entries[name] = Entry(name, fn, params, help, tuple(needs))
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
        """Names of the methods that have their own params section."""
        return tuple(n for n, e in self._entries.items() if e.params is not None)

    def help_text(self) -> str:
        """One line per method: name, what it does, its own keys (for `--help` and docs)."""
        lines = []
        for e in self._entries.values():
            keys = e.keys(self.section)
            lines.append(f"  {e.name:15} {e.help}" + (f" [{', '.join(keys)}]" if keys else ""))
        return "\n".join(lines)
