"""The import graph of src/fisvd has no cycle (imports only point down), and the interface layer —
params validation, method specs — loads without torch or numpy."""
import subprocess
import sys

from conftest import ROOT
from fisvd.deps import imports

SRC = ROOT / "src" / "fisvd"


def graph() -> dict[str, set[str]]:
    """module → the fisvd modules it imports anywhere (module level or inside functions)."""
    mods = {p.stem for p in SRC.glob("*.py")} - {"__init__"}
    return {m: (imports(SRC / f"{m}.py") | imports(SRC / f"{m}.py", lazy=True)) & mods for m in mods}


def strongly_connected(g: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_strongly_connected_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert sorted(map(sorted, strongly_connected(g))) == [["a", "b", "c"], ["d"], ["e"]]
    assert sorted(map(sorted, strongly_connected({"x": {"x"}, "y": set()}))) == [["x"], ["y"]]


def test_no_import_cycle_in_src_fisvd():
    g = graph()
    cycles = [sorted(c) for c in strongly_connected(g) if len(c) > 1 or next(iter(c)) in g[next(iter(c))]]
    assert cycles == [], f"import cycles: {cycles}"
    assert len(g) > 20                                    # the graph really was read


def test_params_and_method_specs_load_without_torch_or_numpy():
    code = ("import sys, fisvd.params, fisvd.methods; fisvd.params.load_params('params.yaml'); "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_method_spec_has_its_implementation():
    """One home per method: a spec in fisvd.methods, its implementation registered by name."""
    import fisvd.allocate  # noqa: F401  (registers the allocators)
    import fisvd.factorize  # noqa: F401  (registers the factorisations)
    import fisvd.sequential  # noqa: F401  (registers the sequential ones)
    from fisvd.methods import ALLOCATORS, FACTORISATIONS
    for name in ALLOCATORS.names():
        assert set(ALLOCATORS[name].impl) == {"fn"}, name
    for name in FACTORISATIONS.names():
        e = FACTORISATIONS[name]
        want = {"whitened", "unwhiten"} if e.sliceable else {"model", "whitened"} if e.sequential else {"fn", "whitened"}
        assert set(e.impl) == want, name
