"""The README's parameter and method tables, generated from params.yaml (keys, defaults and their
`# why` comments) and the method registries, so docs cannot fall out of step with the code.

    python -m fisvd.docs          # rewrite the tables between the README's markers
    python -m fisvd.docs --check  # exit 1 if the README is stale (tests/test_docs.py does this)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from .params import flat_keys, registries

MARKERS = {"params": ("<!-- params-table -->", "<!-- /params-table -->"),
           "methods": ("<!-- methods-table -->", "<!-- /methods-table -->")}


def _flow(value) -> str:
    """A value as one line of YAML (flow style) that loads back to the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-3].strip() if text.endswith("...") else text


def params_rows(text: str) -> list[tuple[str, str, str]]:
    """(dotted key, default, comment) for every leaf of params.yaml (`fisvd.params.flat_keys`), in
    file order. A leaf's comment is its own line's `# …` (joined with deeper `#` lines right after it)
    or, for leaves inside a flow mapping or a list, that of the nearest key line above it."""
    comments, stack, last = {}, [], None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("#", "-")):
            if last and line.strip().startswith("#") and len(line) - len(line.lstrip()) > 2:
                comments[last] = f"{comments[last]} {line.strip()[1:].strip()}".strip()
            continue
        m = re.match(r"^(\s*)([A-Za-z_][\w]*):\s*([^#]*?)\s*(?:#\s*(.*))?$", line)
        if not m:
            continue
        indent, key, comment = len(m.group(1)) // 2, m.group(2), m.group(4) or ""
        stack = stack[:indent] + [key]
        last = ".".join(stack)
        comments[last] = comment
    data = yaml.safe_load(text)
    rows = []
    for key in flat_keys(data):
        node = data
        for part in key.split("."):
            node = node[part]
        parts = key.split(".")
        while parts and not comments.get(".".join(parts)):
            parts.pop()
        rows.append((key, _flow(node), comments.get(".".join(parts), "")))
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
