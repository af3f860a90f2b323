"""compress: factorise every non-dense matrix of ranks.json at its rank with `compress.method`
(one spec each in fisvd.methods, listed below; fisvd.sequential.build_factors: matrix by matrix
through fisvd.factorize.Factors, or the whole model group by group for kfac_seq on a seeded slice of
the training split) and replace it by a LowRankLinear → data/compressed/ (low-rank weights +
config.json + ranks.json + tokenizer), loadable with `fisvd.lowrank.load_compressed(dir)`. Runs on
CUDA when present.
"""
import logging
import time

from fisvd.cli import run_stage
from fisvd.data import calibration_rows, load_prepared, training_slice
from fisvd.io import atomic_dir, remove
from fisvd.lowrank import apply_lowrank, save_compressed
from fisvd.methods import FACTORISATIONS
from fisvd.models import compressible_linears, load_classifier, load_tokenizer, num_labels_of, pick_device
from fisvd.paths import COMPRESSED, FISHER, MODEL, PREPARED, RANKS, STATS
from fisvd.ranks import read_ranks
from fisvd.sequential import build_factors
from fisvd.stats import load_statistics

KEYS = ["compress.method", "compress.${compress.method}", "finetune.max_length"]
log = logging.getLogger("fisvd")


def main(params):
    c = params.compress
    model = load_classifier(MODEL, num_labels_of(MODEL)).float().eval()
    infos = {m.name: m for m in compressible_linears(model)}
    ranks = read_ranks(RANKS, {n: m.shape for n, m in infos.items()})
    stats = load_statistics(FACTORISATIONS[c.method].needs, {n: infos[n].shape for n in ranks}, FISHER, STATS)
    remove(COMPRESSED)
    tok = load_tokenizer(MODEL)
    t0 = time.perf_counter()

    def calibration():          # kfac_seq only: a seeded slice of the training rows
        _, splits = load_prepared(PREPARED)
        return training_slice(calibration_rows(splits), c.opts().examples, tok, params.finetune.max_length)
    low = build_factors(c.method, model, stats, ranks, c.opts(), calibration, pick_device())
    apply_lowrank(model.cpu(), low)
    log.info("%s: factorised %d of %d matrices in %.1f s", c.method, len(low), len(infos), time.perf_counter() - t0)
    with atomic_dir(COMPRESSED) as tmp:
        save_compressed(model, tmp, tok)
    log.info("wrote %s", COMPRESSED)


if __name__ == "__main__":
    run_stage("compress", __doc__, KEYS, main, FACTORISATIONS.help_text())
