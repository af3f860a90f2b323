"""compress: factorise every non-dense matrix of ranks.json at its rank with `compress.method`
(one spec each in fisvd.methods, listed below; fisvd.factorize.Factors: slices of one decomposition)
and replace it by a LowRankLinear → data/compressed/ (low-rank weights + config.json + ranks.json +
tokenizer), loadable with `fisvd.lowrank.load_compressed(dir)`. Runs on CUDA when present.
"""
import logging
import time

from tqdm.auto import tqdm

from fisvd.cli import run_stage
from fisvd.factorize import Factors
from fisvd.io import atomic_dir, remove
from fisvd.lowrank import apply_lowrank, save_compressed
from fisvd.methods import FACTORISATIONS
from fisvd.models import compressible_linears, load_classifier, load_tokenizer, num_labels_of, pick_device
from fisvd.paths import COMPRESSED, FISHER, MODEL, RANKS, STATS
from fisvd.ranks import read_ranks
from fisvd.stats import load_statistics

KEYS = ["compress.method", "compress.${compress.method}"]
log = logging.getLogger("fisvd")


def main(params):
    c = params.compress
    model = load_classifier(MODEL, num_labels_of(MODEL)).float().eval()
    infos = {m.name: m for m in compressible_linears(model)}
    ranks = read_ranks(RANKS, {n: m.shape for n, m in infos.items()})
    stats = load_statistics(FACTORISATIONS[c.method].needs, {n: infos[n].shape for n in ranks}, FISHER, STATS)
    remove(COMPRESSED)
    t0 = time.perf_counter()
    weights = {n: model.get_submodule(n).weight.detach() for n in ranks}
    factors = Factors(c.method, weights, stats, c.opts(), device=pick_device(), keep=False)
    low = {}
    for name, r in tqdm(ranks.items(), desc=c.method, unit="matrix"):
        A, B = factors.at(name, r)
        low[name] = (A.cpu(), B.cpu())
    apply_lowrank(model, low)
    log.info("%s: factorised %d of %d matrices in %.1f s", c.method, len(low), len(infos), time.perf_counter() - t0)
    with atomic_dir(COMPRESSED) as tmp:
        save_compressed(model, tmp, load_tokenizer(MODEL))
    log.info("wrote %s", COMPRESSED)


if __name__ == "__main__":
    run_stage("compress", __doc__, KEYS, main, FACTORISATIONS.help_text())
