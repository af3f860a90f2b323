"""Latency table of one device: dense vs two-GEMM low-rank time of every distinct Linear shape of a
model over a rank grid, on the evaluate stage's workload (batch 32 × length 128 tokens by default).

What is measured and how: fisvd.speed (module docstring). The table is what `allocate.speed_table`
reads: allocators then choose only ranks faster than dense (or dense), and with
`allocate.budget_kind: latency` the budget is a share of this measured time. The JSON goes to
benchmarks/results/latency_table_<device>.json (the allocate stage's DVC dep, fisvd.paths.LATENCY_TABLE,
is the CPU one) and this report, naming the machine, to the .md beside it.

    python benchmarks/latency_table.py [--model minilm-l6] [--rounds 7] [--reps 3] [--step 16]
                                       [--batch 32 --length 128] [--threads N] [--device cuda --dtype bfloat16]
    python benchmarks/latency_table.py --model bert-base-uncased --merge   # add a model's shapes to the table

`--merge` keeps the shapes already in the output table and adds (or re-measures) the model's, so one
table serves several models; it refuses, before timing anything, a table measured on another machine,
workload or timing setting (their times would not compare). Replacing a table that times another model
needs `--replace`. Any change to the CPU table re-runs the stages that read it (allocate, the grid's cells).

Times are fp32 on CPU with the process's default torch threads (the pipeline's) and, unless set
otherwise, OMP_WAIT_POLICY=PASSIVE (on a CPU shared with other jobs spin-waiting OpenMP threads turn
wall times to noise; fisvd.speed). The spread columns show what noise is left; cpu_ratio is the same
ratio in process CPU time.
"""
import argparse
import os
import statistics

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch starts OpenMP: see fisvd.speed (shared CPUs)

import torch  # noqa: E402

from fisvd.models import compressible_linears, meta_model, resolve_model  # noqa: E402
from fisvd.results import machine, recorded  # noqa: E402
from fisvd.speed import (default_grid, faster_ranks, load_table, measure_table, save_table, shape_key,  # noqa: E402
                         time_of)

SAME = ("format", "device", "device_name", "dtype", "torch", "threads", "omp_wait_policy", "batch", "length", "tokens",
        "rounds", "warmup", "reps", "seed")   # --merge: the machine, the workload and how it was timed must match


def merge_tables(base: dict, new: dict) -> dict:
    """`base` with `new`'s shapes added (a shape in both: `new`'s timings); both must come from the same
    machine and workload (SAME), else ValueError naming the first difference. `model` lists both."""
    for k in SAME:
        if base.get(k) != new.get(k):
            raise ValueError(f"--merge: the table's {k} is {base.get(k)!r}, this run's {new.get(k)!r}; times from "
                             "another machine or workload do not compare: re-measure every shape (no --merge)")
    models = [m for m in str(base.get("model", "")).split("+") if m]
    models += [m for m in str(new.get("model", "")).split("+") if m and m not in models]
    return {**base, "model": "+".join(models), "shapes": {**base["shapes"], **new["shapes"]}}



def spans(ranks: list[int]) -> str:
    """1,2,3,5,6 → "1–3, 5–6"."""
    out, start, prev = [], None, None
    for r in sorted(ranks):
        if start is None:
            start = prev = r
        elif r == prev + 1:
            prev = r
        else:
            out.append(f"{start}–{prev}" if prev > start else f"{start}")
            start = prev = r
    if start is not None:
        out.append(f"{start}–{prev}" if prev > start else f"{start}")
    return ", ".join(out) or "none"


def report(table: dict) -> None:
    print(f"device {table['device']} ({table['device_name']}), {table['dtype']}, {table['threads']} threads, "
          f"torch {table['torch']}; workload {table['batch']} x {table['length']} = {table['tokens']} tokens; "
          f"{table['rounds']} rounds of {table['reps']} alternating calls (min) after {table['warmup']} warm-up; "
          f"OMP_WAIT_POLICY={table['omp_wait_policy']}")
    for key, row in table["shapes"].items():
        m, n = row["m"], row["n"]
        print(f"\n{key} (out x in; break-even rank {row['rbar']}): dense {row['dense_ms']:.2f} ms "
              f"[{row['dense_ms_q25']:.2f}, {row['dense_ms_q75']:.2f}]")
        print(f"{'rank':>5} {'FLOPs':>6} {'ratio':>6} {'q25':>6} {'q75':>6} {'ms':>8} {'cpu_ratio':>9}  faster")
        for r, ratio, a, b, ms, c in zip(row["ranks"], row["ratio"], row["ratio_q25"], row["ratio_q75"], row["ms"],
                                         row["cpu_ratio"]):
            print(f"{r:5d} {r * (m + n) / (m * n):6.3f} {ratio:6.3f} {a:6.3f} {b:6.3f} {ms:8.2f} {c:9.3f}  "
                  f"{'yes' if ms < row['dense_ms'] else 'no'}")
        print("probes off the grid (ratio vs the max of the measured neighbours): " + ", ".join(
            f"{r}: {x:.3f} vs {b:.3f}" for r, x, b in zip(row["probe_ranks"], row["probe_ratio"], row["probe_bound"]))
            + f"; margin added to unmeasured ranks: {row['margin']:.3f} x dense")
    print("\nranks faster than dense (fisvd.speed.faster_ranks: measured faster, or the larger measured neighbour "
          "plus the margin below dense)")
    for key, row in table["shapes"].items():
        shape = (row["m"], row["n"])
        fast = faster_ranks(table, shape)
        ratios = [time_of(table, shape, r) / row["dense_ms"] for r in range(1, row["rbar"])]
        print(f"{key:>9}: {spans(sorted(fast))} of 1–{row['rbar'] - 1} ({len(fast)} ranks); time ratio at the "
              f"largest faster rank {max(fast, default=0)}: "
              f"{time_of(table, shape, max(fast)) / row['dense_ms'] if fast else float('nan'):.3f}; "
              f"median ratio over all ranks {statistics.median(ratios):.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6", help="model whose Linear shapes are timed")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3, help="alternating calls of each side per rank and round")
    ap.add_argument("--step", type=int, default=16, help="grid: multiples of this below break-even and each + 1")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default, the pipeline's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/latency_table_<device>.json)")
    ap.add_argument("--merge", action="store_true", help="keep the shapes already in the output table, add this model's")
    ap.add_argument("--replace", action="store_true", help="overwrite an output table that times another model")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or f"benchmarks/results/latency_table_{args.device}.json"
    old = load_table(out) if os.path.exists(out) else None
    if old is not None and args.merge:      # refuse before hours of timing, not after
        device = torch.device(args.device)
        merge_tables(old, {"format": old.get("format"), "device": device.type, "device_name": machine(),
                           "dtype": args.dtype, "torch": torch.__version__,
                           "threads": torch.get_num_threads() if device.type == "cpu" else None,
                           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "batch": args.batch,
                           "length": args.length, "tokens": args.batch * args.length, "rounds": args.rounds,
                           "warmup": args.warmup, "reps": args.reps, "seed": 0, "shapes": {}})
    elif old is not None and old.get("model") != args.model and not args.replace:
        raise SystemExit(f"{out} times {old.get('model')}; --merge adds {args.model}'s shapes to it, --replace "
                         f"overwrites it (a dep of allocate and of the grid's cells: they re-run)")
    shapes = sorted({m.shape for m in compressible_linears(meta_model(resolve_model(args.model)))})
    print(f"model {args.model}: Linear shapes {', '.join(shape_key(*s) for s in shapes)}; grid (fisvd.speed."
          f"default_grid): 1, every multiple k*{args.step} below break-even and k*{args.step} + 1, break-even - 1",
          flush=True)
    table = measure_table(shapes, batch=args.batch, length=args.length, rounds=args.rounds, warmup=args.warmup,
                          reps=args.reps, grid=lambda m, n: default_grid(m, n, args.step), device=args.device,
                          dtype=getattr(torch, args.dtype), device_name=machine(),
                          progress=lambda s: print(s, flush=True))
    table["model"] = args.model
    if old is not None and args.merge:
        table = merge_tables(old, table)
    save_table(table, out)
    report(table)


if __name__ == "__main__":
    import sys  # noqa: E402
    dev = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--device"), "cpu")
    out = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--out"),
               f"benchmarks/results/latency_table_{dev}.json")
    with recorded(out[: -len(".json")] + ".md" if out.endswith(".json") else out + ".md"):
        main()
