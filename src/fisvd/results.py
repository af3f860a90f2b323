"""Benchmark reports: each benchmark prints its report and writes the same text to a committed file
under benchmarks/results/, with the command and the machine, so every number the README and docs/ quote has a file
behind it (no stage imports this module).
    with recorded("benchmarks/results/tfwsvd_minilm_mrpc.md"):
        main()
"""
import contextlib
import io
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from .data import resolve_glue_dir


def machine() -> str:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


@contextlib.contextmanager
def recorded(path: str):
    """Copy everything printed inside the block to `path` (Markdown: command, machine, output). A run
    cut short by an error still leaves what it printed, marked as such; a SystemExit (`--help`, an
    argument error, a script's own refusal) is no run and leaves `path` as it was."""
    buf = io.StringIO()
    old = sys.stdout
    sys.stdout = _Tee(old, buf)
    t0 = time.time()
    stopped, write = "", True
    try:
        yield
    except SystemExit:
        write = False
        raise
    except BaseException as exc:
        stopped = f"; STOPPED by {type(exc).__name__}: {exc}"
        raise
    finally:
        sys.stdout = old
        if write:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            cmd = " ".join(["python", *sys.argv])
            with open(path, "w") as f:
                f.write(f"# {os.path.basename(path)}\n\nCommand: `{cmd}`  \nMachine: {machine()}  \n"
                        f"Run: {time.strftime('%Y-%m-%d', time.gmtime(t0))}, {time.time() - t0:.0f} s{stopped}\n\n"
                        f"```text\n{buf.getvalue().rstrip()}\n```\n")
            print(f"wrote {path}")


def scratch_clone(root: str | Path, dest: str | Path, drop: tuple[str, ...] = ()) -> tuple[Path, dict]:
    """A fresh `git clone` of `root`'s HEAD at `dest` (replaced) and the environment to run its
    pipeline in: its own sources first (before any PYTHONPATH already set), this interpreter's venv on
    PATH, root's GLUE copy (the clone has no ../shared beside it), DVC analytics off; the variables in
    `drop` removed."""
    import shutil

    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(root), str(dest)], check=True)
    glue = resolve_glue_dir(root)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(dest / "src"), env.get("PYTHONPATH")])),
               DVC_NO_ANALYTICS="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               **({"GLUE_DIR": str(glue)} if glue else {}))
    return dest, env


def timed_repro(dest: str | Path, env: dict, stages, *, force: bool = False, label: str = "") -> dict[str, float]:
    """Run `dvc repro [-f] -s <stage>` in `dest` for each of `stages` in order (one stage at a time,
    so each is timed alone) and return the wall seconds per stage; raises on a failing stage."""
    out = {}
    for stage in stages:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dvc", "repro", *(["-f"] if force else []), "-s", stage],
                       cwd=dest, env=env, check=True)
        out[stage] = round(time.perf_counter() - t0, 1)
        print(f"{label}{stage}: {out[stage]} s", flush=True)
    return out
