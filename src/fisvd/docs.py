"""The generated tables of the docs, so they cannot fall out of step with the code or the results:
docs/params.md and docs/methods.md from params.yaml (keys, defaults and their `# why` comments) and
the method registries (`fisvd.params.registries()`); docs/results.md's grid overview copied from the
committed grid report (`metrics/report/tables.md`, written by `dvc repro grid/dvc.yaml`) with its
table of the default per task (`metrics/report/standing.md`), and the README's headline table and MPNet
table copied whole from the grid report's `metrics/report/headline.md` and the MPNet grid's
`metrics/report-mpnet/headline.md` (copied files: a line naming the command that writes one while it
does not exist), so every number there is the report's. Each table sits between its HTML comment markers in its one file;
everything outside the markers is hand-written and left alone.

    python -m fisvd.docs          # rewrite the tables between the markers
    python -m fisvd.docs --check  # exit 1, naming the stale files, if a table is stale (tests/test_docs.py)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from .params import flat_keys, registries

# table -> (the file that holds it, relative to the repo root; start marker; end marker)
TABLES = {"params": ("docs/params.md", "<!-- params-table -->", "<!-- /params-table -->"),
          "methods": ("docs/methods.md", "<!-- methods-table -->", "<!-- /methods-table -->"),
          "grid-overview": ("docs/results.md", "<!-- grid-overview -->", "<!-- /grid-overview -->"),
          "headline": ("README.md", "<!-- headline -->", "<!-- /headline -->"),
          "mpnet-headline": ("README.md", "<!-- mpnet-headline -->", "<!-- /mpnet-headline -->"),
          "default-standing": ("docs/results.md", "<!-- default-standing -->", "<!-- /default-standing -->")}
REPORT = "metrics/report/tables.md"     # the grid report the results tables are copied from
# table -> (a report file copied whole, the command that writes it)
COPIED = {"headline": ("metrics/report/headline.md", "make grid"),
          "mpnet-headline": ("metrics/report-mpnet/headline.md", "make grid GRID=grid-mpnet"),
          "default-standing": ("metrics/report/standing.md", "make grid")}


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


def cell(text: str) -> str:
    """`text` as one Markdown table cell: its pipes escaped (`\\|` renders as |), so a `|g|` stays one cell."""
    return text.replace("|", "\\|")


def params_table(text: str) -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{k}` | `{v}` | {cell(c)} |" for k, v, c in params_rows(text)]
    return "\n".join(lines)


def methods_table() -> str:
    lines = ["| `method` of | name | what it does | its own keys |", "|---|---|---|---|"]
    for section, registry in registries().items():
        for name in registry.names():
            e = registry[name]
            keys = ", ".join(f"`{k}`" for k in e.keys(section)) or "—"
            lines.append(f"| `{section}` | `{name}` | {cell(e.help)} | {keys} |")
    return "\n".join(lines)


def report_section(text: str, heading: str = "## Overview") -> str:
    """The body of a grid report's `heading` section from its first sub-heading (the tables, without
    the section's own introduction) up to the next section, stripped."""
    lines = text.splitlines()
    if heading not in lines:
        raise ValueError(f"the grid report has no section {heading!r}")
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    first = next((i for i in range(start, end) if lines[i].startswith("### ")), start)
    return "\n".join(lines[first:end]).strip()


def copied(root: Path, name: str) -> str:
    """COPIED table `name`: its report file under `root` as it is, or, while that file does not exist
    (the grid has not run), one line naming the command that writes it."""
    rel, command = COPIED[name]
    path = root / rel
    if not path.exists():
        return f"Not run yet: `{command}` writes `{rel}`, which `python -m fisvd.docs` copies here."
    return path.read_text().strip()


def tables(root: Path) -> dict[str, str]:
    """{table name: its Markdown} for every entry of TABLES, from the files under `root`."""
    return {"params": params_table((root / "params.yaml").read_text()), "methods": methods_table(),
            "grid-overview": report_section((root / REPORT).read_text()),
            **{name: copied(root, name) for name in COPIED}}


def render(text: str, name: str, table: str) -> str:
    """`text` with the body between table `name`'s markers replaced by `table`. The markers must
    occur exactly once each, in this order."""
    _, start, end = TABLES[name]
    pat = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    found = pat.findall(text)
    if len(found) != 1 or text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"{TABLES[name][0]} must hold the markers {start} … {end} exactly once "
                         f"(found {len(found)})")
    return pat.sub(lambda _: f"{start}\n{table}\n{end}", text)


def rendered(root: Path) -> dict[Path, tuple[str, str]]:
    """{file: (its text now, its text with every table it holds regenerated)} under `root`."""
    new_tables = tables(root)
    out: dict[Path, tuple[str, str]] = {}
    for name, (rel, _, _) in TABLES.items():
        path = root / rel
        old, new = out.get(path, (None, None))
        if old is None:
            old = new = path.read_text()
        out[path] = (old, render(new, name, new_tables[name]))
    return out


def main(argv: list[str], root: Path = Path(".")) -> int:
    files = rendered(root)
    stale = [path for path, (old, new) in files.items() if old != new]
    if "--check" in argv:
        for path in stale:
            print(f"{path}: generated tables are stale: run `python -m fisvd.docs`", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(files[path][1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
