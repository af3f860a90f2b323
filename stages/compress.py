"""compress: factorise every non-dense matrix of ranks.json at its rank with `compress.method`
(one registry entry of fisvd.factorize each, listed below) and replace it by a LowRankLinear
→ data/compressed/ (low-rank weights + config.json + ranks.json + tokenizer), loadable with
`fisvd.lowrank.load_compressed(dir)` only. Runs on CUDA when present.
"""
import json
import logging
import time

from tqdm.auto import tqdm

from fisvd.cli import run_stage
from fisvd.factorize import FACTORISATIONS, factorize
from fisvd.fisher import check_against, load_fisher
from fisvd.io import atomic_dir, remove
from fisvd.lowrank import apply_lowrank, save_compressed
from fisvd.models import compressible_linears, load_classifier, load_tokenizer, pick_device
from fisvd.paths import COMPRESSED, FISHER, MODEL, RANKS, STATS
from fisvd.ranks import read_ranks
from fisvd.stats import check_against as check_stats, load_stats, matrix_stats as stats_of

KEYS = ["compress.method"] + [f"compress.{m}" for m in FACTORISATIONS.with_params()]
log = logging.getLogger("fisvd")


def main(params):
    c = params.compress
    with open(f"{MODEL}/config.json") as f:
        num_labels = len(json.load(f).get("id2label", {0: 0, 1: 1}))
    model = load_classifier(MODEL, num_labels).float().eval()
    infos = {m.name: m for m in compressible_linears(model)}
    ranks = read_ranks(RANKS, {n: m.shape for n, m in infos.items()})
    needs = FACTORISATIONS[c.method].needs
    fisher = stats = None
    if "fisher" in needs:
        fisher, _ = load_fisher(FISHER)
        check_against(fisher, {n: infos[n].shape for n in ranks}, FISHER)
    if {"cov_x", "cov_g"} & set(needs):
        stats, stats_meta = load_stats(STATS)
        check_stats(stats, stats_meta, {n: infos[n].shape for n in ranks}, STATS)
    remove(COMPRESSED)
    device = pick_device()
    t0 = time.perf_counter()
    factors = {}
    for name, r in tqdm(ranks.items(), desc=c.method, unit="matrix"):
        W = model.get_submodule(name).weight.detach().to(device)
        s = {"fisher": fisher[name]} if fisher is not None else {}
        if stats is not None:
            s.update(stats_of(stats, stats_meta, name))
        A, B = factorize(c.method, W, {k: v.to(device) for k, v in s.items()}, r, opts=c.opts())
        factors[name] = (A.cpu(), B.cpu())
    apply_lowrank(model, factors)
    log.info("%s: factorised %d of %d matrices in %.1f s", c.method, len(factors), len(infos),
             time.perf_counter() - t0)
    with atomic_dir(COMPRESSED) as tmp:
        save_compressed(model, tmp, load_tokenizer(MODEL))
    log.info("wrote %s", COMPRESSED)


if __name__ == "__main__":
    run_stage("compress", __doc__, KEYS, main, FACTORISATIONS.help_text())
