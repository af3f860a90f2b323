"""The README's params and methods tables are generated from params.yaml and the registries
(`python -m fisvd.docs`); these tests fail when either falls out of step."""
import yaml

from conftest import ROOT
from fisvd.docs import methods_table, params_rows, params_table, render
from fisvd.params import flat_keys, registries


def test_readme_tables_are_current():
    readme = (ROOT / "README.md").read_text()
    assert render(readme, (ROOT / "params.yaml").read_text()) == readme, "run `python -m fisvd.docs`"


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


def test_methods_table_lists_every_registered_method_and_its_keys():
    table = methods_table()
    for section, registry in registries().items():
        for name in registry.names():
            assert f"| `{section}` | `{name}` | {registry[name].help} |" in table
            assert all(f"`{k}`" in table for k in registry[name].keys(section))


def test_params_yaml_comments_of_method_keys_name_every_method():
    text = (ROOT / "params.yaml").read_text()
    comments = {k: c for k, _, c in params_rows(text)}
    assert "fisvd.allocate.METHODS" in comments["allocate.method"]
    assert all(m in comments["compress.method"] for m in registries()["compress"].names())
