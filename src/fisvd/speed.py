"""Latency tables: is a factored Linear faster than the dense one, on this device, at this rank?

What is measured: for each Linear shape (out m × in n) and each rank r of a grid below the
break-even rank r̄ = ⌊mn/(m+n)⌋, the wall time of one call of the project's `LowRankLinear`
(`fisvd.lowrank`: y = (x Bᵀ) Aᵀ + b, two GEMMs) against the dense `nn.Linear` (y = x Wᵀ + b, one
GEMM with the bias fused) on an input of `tokens` = batch × length rows (the evaluate stage times
batch 32 × length 128 = 4096 tokens), in `dtype`, with the torch threads the process has (the
pipeline's default). Weights are random: time does not depend on their values.

How: `warmup` untimed rounds, then `rounds` timed ones. In each round, per shape, the grid's ranks
run in a seeded random order; per rank the dense and the low-rank Linear are called alternately
`reps` times each (dense, low-rank, dense, …) and the round's ratio is min low-rank / min dense. A
change in machine load (a background job) so hits both sides of a ratio alike, and the minimum of a
few back-to-back calls drops most preemptions of a call by other processes. Per rank the table keeps
the median ratio over the rounds and its 25–75 % spread; `dense_ms` is the median of the per-pair
dense minima and `ms` = median ratio × dense_ms. `faster_ranks` and `time_of` read `ms`. The same
ratio in process CPU time (all threads; `cpu_ratio`) is kept for reference: it hardly moves with load.
On a CPU shared with other jobs, set OMP_WAIT_POLICY=PASSIVE (benchmarks/latency_table.py does, before
torch starts): with the default spin-waiting, an OpenMP thread that waits for a preempted sibling
burns the core that sibling needs, and wall times turn to noise (on 2 cores at load 5, rank 8 of a
384×384 Linear timed 1.3× dense; passive: 0.14× dense, with the ratios rising steadily with rank).
The table records the policy it was measured with.

Between grid points (a coarse grid, `default_grid`: 1, 16, 17, 32, 33, …, r̄ − 1) `time_of` is
conservative: a rank between two measured ranks a < r < b costs max(t(a), t(b)) + margin · dense;
below the first measured rank t(first) + margin · dense; above the last measured rank (and below r̄)
max(t(last), dense) + margin · dense, i.e. never faster than dense. A rank ≥ r̄ is dense. The larger
neighbour alone would bound a rank if time were flat or rising inside a SIMD block, but it is not
quite: on the AVX-512 CPU here, ranks 16k + 12 ran up to ~5 % of dense slower than both 16k + 1
and 16k + 16. So the table also times a few such ranks off the grid (`default_probes`, in the same
rounds) and keeps per shape `margin` = the largest excess of a probe over its neighbour bound (in
units of the dense time, ≥ 0). `faster_ranks` = the ranks whose `time_of` is below the dense time:
an unmeasured rank is faster only if both measured neighbours are, by more than the margin. With
rank_multiple equal to the grid step every allowed rank is measured and no margin applies.

Tables are JSON (`save_table` / `load_table`), one per device and workload; the allocate stage
reads one through `allocate.speed_table` (`speed_aware`: restrict every matrix to its faster ranks,
and with `allocate.budget_kind: latency` cost each rank its time). Build the CPU table with

    python benchmarks/latency_table.py [--rounds 7] [--reps 3] [--step 16] [--batch 32 --length 128]

which writes benchmarks/results/latency_table_<device>.json and a .md summary.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
import random
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from .errors import AllocationError
from .factorize import break_even
from .lowrank import LowRankLinear

FORMAT = 1


def shape_key(m: int, n: int) -> str:
    """Table key of a Linear with weight [out m, in n]: "mxn" (e.g. "1536x384" is MiniLM's FFN in)."""
    return f"{m}x{n}"


def default_grid(m: int, n: int, step: int = 16) -> list[int]:
    """Ranks 1, r̄ − 1 (the largest factored one) and, below r̄, every multiple k·step and the rank
    just past it, k·step + 1. A GEMM pads a rank to its SIMD / blocking width, so the ranks of
    (k·step, (k+1)·step] cost about the same, and the first of them can cost more than the last
    (measured on AVX-512: 129 slower than 144 for 384×384 and 384×1536): `time_of` bounds a rank in
    between by the larger end plus the table's measured `margin` (`default_probes`)."""
    rbar = break_even(m, n)
    ranks = {1, rbar - 1, *range(step, rbar, step), *range(step + 1, rbar, step)}
    return sorted(r for r in ranks if 1 <= r < rbar)


def default_probes(m: int, n: int, step: int = 16, offsets: tuple[int, ...] = (4, 8, 12)) -> list[int]:
    """Ranks inside two SIMD blocks (k·step + offsets, blocks near ½ and ⅘ of r̄, where a rank decides
    between faster and not): timed with the grid but kept out of it, they measure how far an unmeasured
    rank can exceed the larger of its measured neighbours (the table's `margin`)."""
    rbar = break_even(m, n)
    grid = set(default_grid(m, n, step))
    out = set()
    for f in (0.5, 0.8):
        k = int(f * rbar) // step
        out |= {k * step + o for o in offsets if 1 <= k * step + o < rbar}
    return sorted(out - grid)


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


@torch.inference_mode()
def measure_table(shapes: Iterable[tuple[int, int]], *, batch: int, length: int, rounds: int = 7,
                  warmup: int = 1, reps: int = 3, grid: Callable[[int, int], list[int]] = default_grid,
                  probes: Callable[[int, int], list[int]] = default_probes, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, seed: int = 0, device_name: str = "",
                  progress: Callable[[str], None] | None = None) -> dict:
    """Measure the latency table (module docstring) for the distinct `shapes` (m, n)."""
    device = torch.device(device)
    if rounds < 1 or warmup < 0 or reps < 1:
        raise ValueError("rounds >= 1, warmup >= 0, reps >= 1")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tokens = batch * length
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    shapes = sorted(set((int(m), int(n)) for m, n in shapes))
    setup = {}
    for m, n in shapes:
        ranks = sorted(set(grid(m, n)) | set(probes(m, n)))
        if not ranks or ranks[0] < 1 or ranks[-1] >= break_even(m, n):
            raise ValueError(f"{shape_key(m, n)}: grid ranks must lie in [1, {break_even(m, n) - 1}]")
        dense = nn.Linear(n, m).to(device, dtype).eval()
        low = {r: LowRankLinear(n, m, r).to(device, dtype).eval() for r in ranks}
        x = torch.randn(tokens, n, generator=g).to(device, dtype)
        setup[(m, n)] = (dense, low, x)

    def timed(fn, x) -> tuple[float, float]:
        """(wall ms, process CPU ms) of one call."""
        sync()
        c0, t0 = time.process_time(), time.perf_counter()
        fn(x)            # output freed at once, as in a forward pass
        sync()
        return (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000

    dense_ms = {s: [] for s in shapes}
    ratios = {s: {r: [] for r in setup[s][1]} for s in shapes}
    cpu_ratios = {s: {r: [] for r in setup[s][1]} for s in shapes}
    t_start = time.perf_counter()
    for i in range(warmup + rounds):
        for s in shapes:
            dense, low, x = setup[s]
            order = list(low)
            rng.shuffle(order)
            for r in order:
                d, lr = [], []
                for _ in range(reps):          # dense, low-rank, dense, low-rank, …: min of each
                    d.append(timed(dense, x))
                    lr.append(timed(low[r], x))
                if i >= warmup:
                    dense_ms[s].append(min(d)[0])
                    ratios[s][r].append(min(lr)[0] / min(d)[0])
                    cpu_ratios[s][r].append(min(t[1] for t in lr) / max(min(t[1] for t in d), 1e-9))
        if progress:
            progress(f"round {i + 1}/{warmup + rounds}{' (warm-up)' if i < warmup else ''} "
                     f"{time.perf_counter() - t_start:.0f} s")
    table = {"format": FORMAT, "device": device.type, "device_name": device_name, "dtype": str(dtype)[6:],
             "torch": torch.__version__, "threads": torch.get_num_threads() if device.type == "cpu" else None,
             "batch": batch, "length": length, "tokens": tokens, "rounds": rounds, "warmup": warmup,
             "reps": reps, "seed": seed, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
             "what": "wall ms of one call on [tokens, in] inputs: dense nn.Linear (x W^T + b) vs LowRankLinear "
                     "((x B^T) A^T + b). Per rank and round: reps alternating calls of each, ratio = min "
                     "low-rank / min dense; ratio = median over rounds (ratio_q25, ratio_q75: spread); "
                     "dense_ms = median of the per-pair dense minima; ms = ratio x dense_ms; cpu_ratio: the "
                     "same with process CPU time (all threads), for reference",
             "shapes": {}}
    for (m, n) in shapes:
        dq = _quartiles(dense_ms[(m, n)])
        rows = {"ranks": [], "ms": [], "ratio": [], "ratio_q25": [], "ratio_q75": [], "cpu_ratio": []}
        on_grid = set(grid(m, n))
        for r in sorted(on_grid):
            q25, med, q75 = _quartiles(ratios[(m, n)][r])
            rows["ranks"].append(r)
            rows["ratio"].append(round(med, 4))
            rows["ratio_q25"].append(round(q25, 4))
            rows["ratio_q75"].append(round(q75, 4))
            rows["ms"].append(round(med * dq[1], 4))
            rows["cpu_ratio"].append(round(statistics.median(cpu_ratios[(m, n)][r]), 4))
        row = {"m": m, "n": n, "rbar": break_even(m, n), "dense_ms": round(dq[1], 4),
               "dense_ms_q25": round(dq[0], 4), "dense_ms_q75": round(dq[2], 4), **rows, "margin": 0.0,
               "probe_ranks": [], "probe_ratio": [], "probe_bound": []}
        for r in sorted(set(ratios[(m, n)]) - on_grid):   # probes: how far off is the interpolation?
            row["probe_ranks"].append(r)
            row["probe_ratio"].append(round(statistics.median(ratios[(m, n)][r]), 4))
            row["probe_bound"].append(round(_between(row, r) / row["dense_ms"], 4))
        row["margin"] = round(max([0.0] + [a - b for a, b in zip(row["probe_ratio"], row["probe_bound"])]), 4)
        table["shapes"][shape_key(m, n)] = row
    return table


def check_table(table: dict, where: str = "speed table") -> dict:
    """Raise AllocationError unless `table` is a well-formed latency table; return it."""
    def bad(msg):
        raise AllocationError(f"{where}: {msg}; rebuild it with benchmarks/latency_table.py")
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        bad(f"not a latency table of format {FORMAT}")
    for k in ("device", "tokens", "shapes"):
        if k not in table:
            bad(f"no {k!r}")
    if not isinstance(table["shapes"], dict) or not table["shapes"]:
        bad("no shapes")
    for key, row in table["shapes"].items():
        try:
            m, n = (int(v) for v in key.split("x"))
            ranks, ms = row["ranks"], row["ms"]
            dense = float(row["dense_ms"])
            ok = (row["m"], row["n"]) == (m, n) and len(ranks) == len(ms) == len(row["ratio"]) > 0
            ok = ok and all(isinstance(r, int) for r in ranks) and ranks == sorted(set(ranks))
            ok = ok and 1 <= ranks[0] and ranks[-1] < break_even(m, n)
            ok = ok and dense > 0 and all(math.isfinite(t) and t > 0 for t in ms)
            ok = ok and math.isfinite(float(row.get("margin", 0.0))) and float(row.get("margin", 0.0)) >= 0
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            bad(f"shape {key!r} is malformed (need m, n, dense_ms > 0, sorted distinct ranks in [1, r̄) "
                f"with ms > 0 and ratio each)")
    return table


def save_table(table: dict, path: str | Path) -> None:
    """Write the table as JSON, one line per list."""
    check_table(table)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(table, indent=1)
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda mt: "[" + " ".join(mt.group(1).split()) + "]", text)
    path.write_text(text + "\n")


def load_table(path: str | Path) -> dict:
    """Read and check a latency table; AllocationError naming the path if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise AllocationError(f"{path}: latency table not found; build it with benchmarks/latency_table.py")
    try:
        table = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AllocationError(f"{path}: not valid JSON ({exc})") from None
    return check_table(table, str(path))


def _row(table: dict, shape: tuple[int, int]) -> dict:
    key = shape_key(*shape)
    try:
        return table["shapes"][key]
    except KeyError:
        raise AllocationError(f"speed table ({table.get('device')}, {table.get('device_name') or '?'}): no "
                              f"timings for shape {key}; measure it (benchmarks/latency_table.py --model …) "
                              f"or set allocate.speed_table: null") from None


def dense_time(table: dict, shape: tuple[int, int]) -> float:
    return float(_row(table, shape)["dense_ms"])


def time_of(table: dict, shape: tuple[int, int], rank: int) -> float:
    """Time (ms) of the Linear of `shape` (m, n) at `rank` on the table's workload; dense if rank ≥ r̄.
    Conservative between and beyond measured ranks (module docstring)."""
    row = _row(table, shape)
    m, n = shape
    dense = float(row["dense_ms"])
    if rank >= break_even(m, n):
        return dense
    if rank < 1:
        raise ValueError(f"rank {rank} < 1")
    ranks, ms = row["ranks"], row["ms"]
    i = bisect.bisect_left(ranks, rank)
    if i < len(ranks) and ranks[i] == rank:
        return float(ms[i])
    return _between(row, rank) + float(row.get("margin", 0.0)) * dense


def _between(row: dict, rank: int) -> float:
    """The bound of an unmeasured rank from its measured neighbours (module docstring), before the margin."""
    ranks, ms, dense = row["ranks"], row["ms"], float(row["dense_ms"])
    i = bisect.bisect_left(ranks, rank)
    if i == 0:
        return float(ms[0])
    if i == len(ranks):
        return max(float(ms[-1]), dense)
    return max(float(ms[i - 1]), float(ms[i]))


def times(table: dict, shape: tuple[int, int]) -> list[float]:
    """time_of(shape, r) for r = 1..r̄ (index r − 1; the last is dense)."""
    return [time_of(table, shape, r) for r in range(1, break_even(*shape) + 1)]


def faster_ranks(table: dict, shape: tuple[int, int], by: float = 0.0) -> set[int]:
    """Ranks r < r̄ whose factored form is faster than dense (by a share `by` of it):
    time_of(r) < (1 − by)·dense."""
    dense = dense_time(table, shape)
    return {r for r, t in enumerate(times(table, shape)[:-1], start=1) if t < (1 - by) * dense}


def speed_aware(mats: list, table: dict, budget_kind: str = "params") -> list:
    """Copies of `fisvd.allocate.Matrix`es restricted to their faster ranks (`Matrix.fast`: every
    allocator then picks from multiples of rank_multiple that are faster than dense, or dense), and
    with budget_kind "latency" costing each rank its time (`Matrix.cost`, ms per call on the
    table's workload): the budget p is then the kept share of the Linears' time."""
    if budget_kind not in ("params", "latency"):
        raise ValueError(f"budget_kind {budget_kind!r}: params | latency")
    missing = missing_shapes(table, [(M.m, M.n) for M in mats])
    if missing and budget_kind == "latency":
        raise AllocationError(f"allocate.budget_kind: latency spends measured time, but the speed table "
                              f"({table.get('device')}, {table.get('device_name') or '?'}) has no timings for shape "
                              f"{', '.join(missing)}; measure them (benchmarks/latency_table.py --model …) or set "
                              f"allocate.budget_kind: params")
    out = []
    for M in mats:
        shape = (M.m, M.n)
        if shape_key(*shape) in missing:     # no timings: any rank, as without a table (the caller says so)
            out.append(M)
            continue
        fast = frozenset(faster_ranks(table, shape))
        cost = times(table, shape) if budget_kind == "latency" else None
        out.append(dataclasses.replace(M, fast=fast, cost=cost))
    return out


def missing_shapes(table: dict, shapes: Iterable[tuple[int, int]]) -> list[str]:
    """Keys ("mxn") of the shapes the table has no timings for, sorted (another model than the table's:
    its matrices then take any rank, as with `allocate.speed_table: null`, and ranks.json says which)."""
    return sorted({shape_key(*s) for s in shapes} - set(table["shapes"]))


def predicted(table: dict, shapes_ranks: Iterable[tuple[tuple[int, int], int]]) -> dict:
    """Dense and compressed time (ms) of the given (shape, rank) Linears by the table, and the ratio;
    Linears of shapes the table lacks are left out (`missing_shapes`)."""
    dense = low = 0.0
    for shape, r in shapes_ranks:
        if shape_key(*shape) not in table["shapes"]:
            continue
        dense += dense_time(table, shape)
        low += time_of(table, shape, r)
    return {"dense_ms": round(dense, 3), "ms": round(low, 3), "time_ratio": round(low / dense, 6),
            "speedup": round(dense / low, 4)}
