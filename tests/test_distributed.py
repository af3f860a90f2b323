"""Two processes, one result: the Fisher and two-sided statistics passes under `accelerate launch`
with 2 gloo processes on CPU equal the single-process pass (fisvd.dist).

The worker runs under `accelerate launch --multi_gpu --num_processes 2` (as `python -m
accelerate.commands.launch`, this interpreter's accelerate) with CUDA hidden. `--multi_gpu`
is accelerate's torchrun-based launcher: it starts N processes whatever the device, and with no
GPU visible each one joins a gloo group on CPU. (`accelerate launch --cpu --num_processes 2` starts
a single process: accelerate's multi-CPU mode needs mpirun and a hostfile.) HF_HOME points at the
test's tmp dir, so no accelerate config of the user's applies.

per_batch: the ranks take whole batches round-robin, so the batches (and each batch's gradient) are
those of one process; per_sample: the ranks take the length-sorted vmap chunks round-robin. The raw
sums equal the single-process sums up to float summation order, the counts exactly, and only rank 0
writes the files.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import ROOT, tiny_bert
from fisvd.fisher import fisher_per_sample
from fisvd.models import compressible_linears
from fisvd.stats import collect_stats

CPU = torch.device("cpu")
RTOL = 1e-5      # relative to each tensor's largest entry

WORKER = textwrap.dedent('''
    """One rank of the 2-process run: the library's passes on its shard, rank 0 saves."""
    import json
    import sys
    from pathlib import Path

    import torch
    from transformers import BertForSequenceClassification

    from fisvd.dist import close_group, init_group, is_main, rank, world_size
    from fisvd.fisher import fisher_per_sample, save_fisher
    from fisvd.models import compressible_linears
    from fisvd.stats import collect_stats, save_stats

    tmp = Path(sys.argv[1])
    assert init_group(), "not launched with several processes"
    cpu = torch.device("cpu")
    model = BertForSequenceClassification.from_pretrained(tmp / "model").eval()
    names = [m.name for m in compressible_linears(model)]
    batches = torch.load(tmp / "batches.pt")
    feats = json.loads((tmp / "features.json").read_text())
    seen = {"batches": 0, "chunks": 0}

    def counted(kind):
        def progress(it):
            for x in it:
                seen[kind] += 1
                yield x
        return progress

    def collate(fs):
        L = max(len(f["input_ids"]) for f in fs)
        out = {k: torch.tensor([f[k] + [0] * (L - len(f[k])) for f in fs])
               for k in ("input_ids", "attention_mask", "token_type_ids")}
        out["labels"] = torch.tensor([f["labels"] for f in fs])
        return out

    fisher = {}
    stats, meta = collect_stats(model, names, batches, cpu, fisher_out=fisher, progress=counted("batches"))
    model.config._attn_implementation = "eager"
    ps, count, n = fisher_per_sample(model, names, feats, collate, cpu, chunk=3, progress=counted("chunks"))
    out = tmp / "out"
    (out / f"rank{rank()}.json").write_text(json.dumps({"world": world_size(), **seen}))
    if is_main():
        save_fisher(out / "per_batch.safetensors", fisher, meta["batches"], "per_batch", meta["examples"])
        save_stats(out / "stats.safetensors", stats, meta)
        save_fisher(out / "per_sample.safetensors", ps, count, "per_sample", n)
    close_group()
''')


def features(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        L = (3, 9, 5, 7, 4, 8, 6)[i % 7]
        ids = [1] + torch.randint(5, 100, (L,), generator=g).tolist() + [2]
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": [0] * len(ids),
                    "labels": i % 2})
    return out


def collate(fs):
    L = max(len(f["input_ids"]) for f in fs)
    out = {k: torch.tensor([f[k] + [0] * (L - len(f[k])) for f in fs])
           for k in ("input_ids", "attention_mask", "token_type_ids")}
    out["labels"] = torch.tensor([f["labels"] for f in fs])
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metadata(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["fisvd"])


def max_diff(got, ref):
    """(max |got - ref|, that / max |ref|) over the tensors of two dicts with the same keys."""
    assert sorted(got) == sorted(ref)
    abs_ = max(float((got[k].double() - ref[k].double()).abs().max()) for k in ref)
    rel = max(float((got[k].double() - ref[k].double()).abs().max() / ref[k].double().abs().max()) for k in ref)
    return abs_, rel


def test_two_processes_equal_one(tmp_path):
    from transformers import BertForSequenceClassification

    tiny_bert(vocab_size=100).save_pretrained(tmp_path / "model")
    model = BertForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    names = [m.name for m in compressible_linears(model)]
    feats = features(11)
    batches = [collate(feats[i:i + 3]) for i in range(0, 11, 3)]    # 4 padded batches of 3, 3, 3, 2
    torch.save(batches, tmp_path / "batches.pt")
    (tmp_path / "features.json").write_text(json.dumps(feats))
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "out").mkdir()

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(tmp_path / "worker.py"), str(tmp_path)]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    launched_s = time.perf_counter() - t0

    # both ranks worked, on disjoint round-robin shards; only rank 0 wrote the results
    out = tmp_path / "out"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["batches"] for r in ranks] == [2, 2]
    assert all(r["chunks"] >= 1 for r in ranks)
    assert sorted(p.name for p in out.iterdir()) == ["per_batch.safetensors", "per_sample.safetensors",
                                                     "rank0.json", "rank1.json", "stats.safetensors"]

    # the single-process reference, computed here (no process group)
    fisher1 = {}
    stats1, meta1 = collect_stats(model, names, batches, CPU, fisher_out=fisher1)
    model.config._attn_implementation = "eager"
    chunks = []
    ps1, count1, n1 = fisher_per_sample(model, names, feats, collate, CPU, chunk=3,
                                        progress=lambda it: (chunks.append(x) or x for x in it))
    assert sum(r["chunks"] for r in ranks) == len(chunks) == 7    # the ranks split the one-process chunks

    assert metadata(out / "stats.safetensors") == meta1
    assert metadata(out / "per_batch.safetensors") == {"mode": "per_batch", "count": 4, "examples": 11}
    assert metadata(out / "per_sample.safetensors") == {"mode": "per_sample", "count": 11, "examples": 11}
    assert (meta1["batches"], meta1["examples"], count1, n1) == (4, 11, 11, 11)
    diffs = {"per_sample": max_diff(load_file(out / "per_sample.safetensors"), ps1),
             "per_batch": max_diff(load_file(out / "per_batch.safetensors"), fisher1),
             "stats": max_diff(load_file(out / "stats.safetensors"), stats1)}
    print(f"2 processes vs 1 (launch {launched_s:.1f} s): "
          + ", ".join(f"{k} max abs {a:.2e} rel {r:.2e}" for k, (a, r) in diffs.items()))
    for kind, (_, rel) in diffs.items():
        assert rel <= RTOL, (kind, rel)


def test_helpers_are_one_process_without_a_group(monkeypatch):
    from fisvd import dist
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist.init_group() is False and not torch.distributed.is_initialized()    # plain run: no group
    assert (dist.launched_world_size(), dist.world_size(), dist.rank(), dist.is_main()) == (1, 1, 0, True)
    items = [1, 2, 3]
    gen = iter(items)
    assert dist.shard(items) is items and dist.shard(gen) is gen        # untouched, not even copied
    t = {"a": torch.ones(2)}
    assert dist.all_reduce(t) is t and torch.equal(t["a"], torch.ones(2))
    assert dist.sum_counts({"x": 3}, CPU) == {"x": 3}
    assert dist.local_device(torch.device("cuda")) == torch.device("cuda")
    dist.close_group()      # a no-op
