"""The README's parameter and method tables, generated from params.yaml (keys, defaults and their
`# why` comments) and the method registries, so docs cannot fall out of step with the code.

    python -m fisvd.docs          # rewrite the tables between the README's markers
    python -m fisvd.docs --check  # exit 1 if the README is stale (tests/test_docs.py does this)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from .params import registries

MARKERS = {"params": ("<!-- params-table -->", "<!-- /params-table -->"),
           "methods": ("<!-- methods-table -->", "<!-- /methods-table -->")}


def params_rows(text: str) -> list[tuple[str, str, str]]:
    """(dotted key, default, comment) for every leaf of params.yaml, in file order; comment lines that
    continue a key's comment (deeper `#` lines right after it) are joined to it."""
    rows, stack = [], []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            if rows and line.strip().startswith("#") and len(line) - len(line.lstrip()) > 2:
                key, default, comment = rows[-1]
                rows[-1] = (key, default, f"{comment} {line.strip()[1:].strip()}".strip())
            continue
        m = re.match(r"^(\s*)([A-Za-z_][\w]*):\s*([^#]*?)\s*(?:#\s*(.*))?$", line)
        if not m:
            continue
        indent, key, value, comment = len(m.group(1)) // 2, m.group(2), m.group(3), m.group(4) or ""
        stack = stack[:indent] + [key]
        if value:
            rows.append((".".join(stack), value, comment))
    return rows


def params_table(text: str) -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{k}` | `{v}` | {c.replace('|', '/')} |" for k, v, c in params_rows(text)]
    return "\n".join(lines)


def methods_table() -> str:
    lines = ["| `method` of | name | what it does | its own keys |", "|---|---|---|---|"]
    for section, registry in registries().items():
        for name in registry.names():
            e = registry[name]
            keys = ", ".join(f"`{k}`" for k in e.keys(section)) or "—"
            lines.append(f"| `{section}` | `{name}` | {e.help} | {keys} |")
    return "\n".join(lines)


def render(readme: str, params_text: str) -> str:
    tables = {"params": params_table(params_text), "methods": methods_table()}
    for name, (start, end) in MARKERS.items():
        pat = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
        if not pat.search(readme):
            raise ValueError(f"README lacks the markers {start} … {end}")
        readme = pat.sub(lambda _: f"{start}\n{tables[name]}\n{end}", readme)
    return readme


def main(argv: list[str]) -> int:
    root = Path(".")
    readme, params_text = (root / "README.md").read_text(), (root / "params.yaml").read_text()
    new = render(readme, params_text)
    if "--check" in argv:
        if new != readme:
            print("README.md tables are stale: run `python -m fisvd.docs`", file=sys.stderr)
            return 1
        return 0
    (root / "README.md").write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
