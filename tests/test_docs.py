"""The docs: the params and methods tables in docs/ are generated from params.yaml and the registries
(`python -m fisvd.docs`) and these tests fail when either falls out of step; the README stays short
and every relative link in the README, docs/ and benchmarks/README.md points at a file that exists."""
import re
import shutil

import pytest
import yaml

from conftest import ROOT
from fisvd.docs import COPIED, REPORT, TABLES, copied, main, methods_table, params_rows, params_table, render, rendered, report_section
from fisvd.params import flat_keys, registries

DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_docs_tables_are_current():
    files = rendered(ROOT)
    assert {p.relative_to(ROOT).as_posix() for p in files} == {rel for rel, _, _ in TABLES.values()}
    stale = [str(p.relative_to(ROOT)) for p, (old, new) in files.items() if old != new]
    assert not stale, f"{stale}: run `python -m fisvd.docs`"


def test_each_table_lives_in_its_file_only():
    """No second, unmaintained copy of a generated table (e.g. left in the README)."""
    for name, (rel, start, end) in TABLES.items():
        holders = [p.relative_to(ROOT).as_posix() for p in DOCS if start in p.read_text() or end in p.read_text()]
        assert holders == [rel], (name, holders)


def copy_docs(tmp_path):
    """params.yaml, every file holding a generated table, the grid report and the copied report files
    that exist, copied under tmp_path."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    for rel in [*(rel for rel, _, _ in TABLES.values()), REPORT,
                *(rel for rel, _ in COPIED.values() if (ROOT / rel).exists())]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)


def test_check_fails_on_a_stale_table_and_the_rewrite_fixes_it(tmp_path, capsys):
    copy_docs(tmp_path)
    assert main(["--check"], root=tmp_path) == 0
    report = tmp_path / REPORT                     # a re-run grid report: docs/results.md follows it
    committed = report.read_text()
    report.write_text(committed.replace("| dense |", "| dense (re-run) |"))
    assert main(["--check"], root=tmp_path) == 1 and "docs/results.md" in capsys.readouterr().err
    assert main([], root=tmp_path) == 0 and "| dense (re-run) |" in (tmp_path / "docs/results.md").read_text()
    report.write_text(committed)
    assert main([], root=tmp_path) == 0
    doc = tmp_path / TABLES["params"][0]
    good = doc.read_text()
    doc.write_text(good.replace("| `data.task` |", "| `data.task_stale` |", 1))
    assert main(["--check"], root=tmp_path) == 1
    assert TABLES["params"][0] in capsys.readouterr().err
    assert main([], root=tmp_path) == 0
    assert main(["--check"], root=tmp_path) == 0
    assert doc.read_text() == good


def test_a_copied_report_names_its_command_until_it_exists_then_is_copied_whole(tmp_path, capsys):
    """The README's MPNet table: metrics/report-mpnet/headline.md as it is, once the MPNet grid wrote it."""
    copy_docs(tmp_path)
    rel, command = COPIED["mpnet-headline"]
    (tmp_path / rel).unlink(missing_ok=True)
    missing = copied(tmp_path, "mpnet-headline")
    assert command in missing and rel in missing and "|" not in missing
    assert main([], root=tmp_path) == 0 and missing in (tmp_path / "README.md").read_text()
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text("Dense average 80.0.\n\n| method | p = 0.48 |\n|---|---|\n| max_fi + kfac (default) | 99 % |\n")
    assert main(["--check"], root=tmp_path) == 1 and "README.md" in capsys.readouterr().err
    assert main([], root=tmp_path) == 0
    readme = (tmp_path / "README.md").read_text()
    start, end = TABLES["mpnet-headline"][1:]
    assert f"{start}\nDense average 80.0.\n\n| method | p = 0.48 |" in readme and f"99 % |\n{end}" in readme
    assert missing not in readme and main(["--check"], root=tmp_path) == 0


def test_render_needs_the_markers_exactly_once():
    _, start, end = TABLES["params"]
    with pytest.raises(ValueError, match="exactly once"):
        render("no markers here", "params", "| t |")
    with pytest.raises(ValueError, match="exactly once"):
        render(f"{start}\n{end}\n{start}\n{end}\n", "params", "| t |")
    assert render(f"a\n{start}\nold\n{end}\nb\n", "params", "| t |") == f"a\n{start}\n| t |\n{end}\nb\n"


def test_report_section_is_the_tables_of_one_section_only():
    text = "# Grid\n\n## Overview\n\nintro words\n\n### p = 0.5\n\n| a |\n|---|\n\n### p = 0.3\n\n| b |\n\n## Against\n\n| c |\n"
    assert report_section(text) == "### p = 0.5\n\n| a |\n|---|\n\n### p = 0.3\n\n| b |"
    assert report_section(text, "## Against") == "| c |"
    with pytest.raises(ValueError, match="no section"):
        report_section(text, "## Missing")


def test_params_table_has_every_key_with_its_default_and_a_comment():
    text = (ROOT / "params.yaml").read_text()
    rows = params_rows(text)
    assert [k for k, _, _ in rows] == flat_keys(yaml.safe_load(text))
    assert all(comment for _, _, comment in rows), [k for k, _, c in rows if not c]
    flat = yaml.safe_load(text)
    for key, default, _ in rows:
        node = flat
        for part in key.split("."):
            node = node[part]
        assert yaml.safe_load(default) == node
    assert all(f"`{k}`" in params_table(text) for k, _, _ in rows)


def cells(line: str) -> list[str]:
    """A Markdown table row's cells, split at unescaped pipes (as GitHub renders them), unescaped."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def test_methods_table_lists_every_registered_method_and_its_keys():
    rows = [cells(line) for line in methods_table().splitlines()]
    assert all(len(r) == 4 for r in rows), [r for r in rows if len(r) != 4]   # a `|` in a help text stays in its cell
    got = {(r[0], r[1]): r[2:] for r in rows[2:]}
    want = {(f"`{section}`", f"`{name}`"): [registry[name].help,
                                            ", ".join(f"`{k}`" for k in registry[name].keys(section)) or "—"]
            for section, registry in registries().items() for name in registry.names()}
    assert got == want


def test_params_rows_give_each_leaf_its_own_comment_or_its_nearest_commented_parent():
    text = ("a: 1  # top a\n"
            "b:        # the b section\n"
            "  c: x  # the c\n"
            "        # continued c\n"
            "  d: {e: 1, f: [2, 3]}  # d's flow\n"
            "  h: 4\n"
            "g: [1, 2]\n")
    assert params_rows(text) == [("a", "1", "top a"), ("b.c", "x", "the c continued c"), ("b.d.e", "1", "d's flow"),
                                 ("b.d.f", "[2, 3]", "d's flow"), ("b.h", "4", "the b section"), ("g", "[1, 2]", "")]


def test_a_pipe_in_a_params_comment_stays_in_its_cell():
    rows = [cells(line) for line in params_table("a: 1  # the norm |g| of b\nc: [1, 2]  # plain\n").splitlines()]
    assert rows[2:] == [["`a`", "`1`", "the norm |g| of b"], ["`c`", "`[1, 2]`", "plain"]]


def test_params_yaml_comments_of_method_keys_name_every_method():
    text = (ROOT / "params.yaml").read_text()
    comments = {k: c for k, _, c in params_rows(text)}
    assert "fisvd.methods.ALLOCATORS" in comments["allocate.method"]
    assert all(m in comments["compress.method"] for m in registries()["compress"].names())


def test_readme_is_short():
    """Issue 20: a README a newcomer reads in five minutes; the rest lives in docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_relative_links_resolve():
    bad = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            if path.is_relative_to(ROOT) and not path.exists():
                bad.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not bad, bad
