"""Method specs: every allocation method (`ALLOCATORS`, params section `allocate`) and factorisation
(`FACTORISATIONS`, section `compress`), with its options dataclass (read from `<section>.<name>` in
params.yaml; every method has a section there, `{}` when it has no options), what it needs and a
one-line help. Importable without torch or numpy: params validation, `--help`, the docs and the
grid generator read these specs; the computations register against them by name
(`@ALLOCATORS.implements(name)` in fisvd.allocate, `@FACTORISATIONS.implements(name)` in
fisvd.factorize), and a test holds specs and implementations one to one.

Needs: a factorisation lists the statistics it reads ("fisher", "cov_x", "cov_g"), `sliceable`
says its rank-r factors are slices of one decomposition (one SVD serves every rank), `sequential`
that it factorises the whole model at once from calibration batches; an allocator lists "measurements"
when it needs loss measurements on a training slice (fisvd.plan builds them). `budgeted(opts)` says
whether the allocator spends the budget p with these options.

Add a method: one spec block here, its implementation beside the others, its params.yaml section,
its test; then `python -m fisvd.docs` and `python -m fisvd.grid` regenerate what reads the specs.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ParamError
from .registry import Registry
from .validate import at_least, choice, positive, unit

ALLOCATORS = Registry("allocate")
FACTORISATIONS = Registry("compress")

# ---- allocation methods (fisvd.allocate; methods.md §5–§7b) -------------------------------------

ALLOCATORS.spec("uniform_rank", help="control: one rank r for every matrix (dense where r >= break-even), "
                "the largest r meeting p; no leftover fill")

ALLOCATORS.spec("uniform_ratio", help="control: r = floor(p * break-even rank) for every matrix; no fill")

ALLOCATORS.spec("energy", help="control: smallest r with unweighted energy >= tau, tau bisected to meet p")


@dataclass(frozen=True)
class RandomParams:
    seed: int

    def validate(self, key: str) -> None:
        pass


ALLOCATORS.spec("random", params=RandomParams, help="control: seeded random shares of break-even, "
                "scaled to meet p")


@dataclass(frozen=True)
class InterLayerFiParams:
    score: str          # total | density | energy
    alpha: float        # parameters ∝ score^α
    r_min: int          # smallest rank

    def validate(self, key: str) -> None:
        choice(f"{key}.score", self.score, ("total", "density", "energy"))
        positive(f"{key}.alpha", self.alpha)
        at_least(f"{key}.r_min", self.r_min, 1)


ALLOCATORS.spec("inter_layer_fi", params=InterLayerFiParams, help="thesis M1: parameters proportional to a "
                "layer Fisher score^alpha, scaled to meet p")


@dataclass(frozen=True)
class FiRetentionParams:
    tau: float          # share of each matrix's FWSVD spectrum kept (fixed-τ mode)
    calibrate: bool     # bisect τ to meet the budget instead (= max-min retained FI)

    def validate(self, key: str) -> None:
        unit(f"{key}.tau", self.tau)


ALLOCATORS.spec("fi_retention", params=FiRetentionParams, budgeted=lambda o: o.calibrate,
                help="thesis M2: smallest r with retained FI >= tau per matrix; tau fixed, or calibrated to "
                "meet p (max-min retained FI)")


@dataclass(frozen=True)
class MaxFiParams:
    objective: str      # total | layerwise

    def validate(self, key: str) -> None:
        choice(f"{key}.objective", self.objective, ("total", "layerwise"))


ALLOCATORS.spec("max_fi", params=MaxFiParams, help="thesis M3: maximise total (or per-matrix-ratio) "
                "retained FI under p, exact knapsack")


@dataclass(frozen=True)
class MeasuredParams:
    points: int         # candidate ranks measured per matrix (fisvd.calibrate.rank_grid)
    metric: str         # kl (logit KL to the dense model; squared logit error for regression) | loss
    slice: int          # training examples the losses are measured on (never dev; the model was fine-tuned on them)
    swaps: int          # most greedy swaps tried in the joint check (0: measure the joint model only)

    def validate(self, key: str) -> None:
        at_least(f"{key}.points", self.points, 1)
        choice(f"{key}.metric", self.metric, ("kl", "loss"))
        at_least(f"{key}.slice", self.slice, 1)
        at_least(f"{key}.swaps", self.swaps, 0)


ALLOCATORS.spec("measured", params=MeasuredParams, needs=("measurements",),
                help="calibrated: minimise the sum of per-matrix loss-vs-rank curves measured on a train slice "
                "(logit KL or task loss) under p, exact knapsack; joint check with greedy swaps (fisvd.calibrate)")

# ---- factorisations (fisvd.factorize; methods.md §4, §4b) ---------------------------------------

FACTORISATIONS.spec("svd", sliceable=True, help="plain truncated SVD (Frobenius optimum)")

FACTORISATIONS.spec("fwsvd", needs=("fisher",), sliceable=True, help="Fisher-weighted SVD: columns scaled by "
                    "sqrt(mean_i F_ij) (Hsu et al. 2022; the mean, not the sum, so spectra compare across shapes)")


@dataclass(frozen=True)
class TfwsvdParams:
    max_iters: int      # weighted-ALS sweeps after the FWSVD start
    tol: float          # stop when the relative objective decrease is below this

    def validate(self, key: str) -> None:
        at_least(f"{key}.max_iters", self.max_iters, 0)
        if not 0.0 <= self.tol < 1.0:
            raise ParamError(f"{key}.tol: {self.tol!r} is out of range; allowed values are in [0, 1)")


FACTORISATIONS.spec("tfwsvd", params=TfwsvdParams, needs=("fisher",), help="element-wise Fisher-weighted "
                    "low rank by weighted ALS from FWSVD (Hua et al. 2022)")


@dataclass(frozen=True)
class WhitenParams:
    alpha_x: float      # damping of Σx: + alpha_x · mean(diag Σx) · I

    def validate(self, key: str) -> None:
        at_least(f"{key}.alpha_x", self.alpha_x, 0)


FACTORISATIONS.spec("whiten", params=WhitenParams, needs=("cov_x",), sliceable=True, help="input-whitened SVD: "
                    "SVD of W L_x, Sigma_x = L_x L_x^T (SVD-LLM, DRONE)")


@dataclass(frozen=True)
class KfacParams:
    alpha_x: float      # damping of Σx: + alpha_x · mean(diag Σx) · I
    alpha_g: float      # damping of Σg: + alpha_g · mean(diag Σg) · I

    def validate(self, key: str) -> None:
        at_least(f"{key}.alpha_x", self.alpha_x, 0)
        at_least(f"{key}.alpha_g", self.alpha_g, 0)


FACTORISATIONS.spec("kfac", params=KfacParams, needs=("cov_x", "cov_g"), sliceable=True, help="K-FAC two-sided "
                    "SVD of L_g^T W L_x, Sigma_g = L_g L_g^T (GFWSVD)")


FACTORISATIONS.spec("kfac_gw", params=KfacParams, needs=("cov_xg", "cov_gn"), sliceable=True,
                    help="K-FAC on gradient-weighted statistics: sum |g_t|^2 x_t x_t^T and the gradient "
                    "directions' covariance (tokens the loss does not feel weigh nothing; fisher.weighted: true)")


@dataclass(frozen=True)
class KfacSeqParams:
    alpha_x: float      # damping of S = Σ x̃x̃ᵀ (and of C): + alpha_x · mean(diag S) · I, a pull towards W
    alpha_g: float      # damping of Σg: + alpha_g · mean(diag Σg) · I
    examples: int       # training examples the group-by-group fit runs on (seeded subset)
    weighting: str      # token (every token counts alike) | gradient (x̃ weighted by ‖g_t‖², output side Σĝ)
    block_steps: int    # block output matching: Adam passes over the calibration batches per block (0: off)
    block_lr: float     # its learning rate

    def validate(self, key: str) -> None:
        at_least(f"{key}.alpha_x", self.alpha_x, 0)
        at_least(f"{key}.alpha_g", self.alpha_g, 0)
        at_least(f"{key}.examples", self.examples, 1)
        choice(f"{key}.weighting", self.weighting, ("token", "gradient"))
        at_least(f"{key}.block_steps", self.block_steps, 0)
        positive(f"{key}.block_lr", self.block_lr)


FACTORISATIONS.spec("kfac_seq", params=KfacSeqParams, needs=("cov_x", "cov_g"), sequential=True,
                    help="sequential K-FAC: each Linear fitted to the dense output from the already compressed "
                    "prefix's inputs (closed form with the cross-covariance; ranks on kfac's spectrum)")

STATISTICS = ("fisher", "cov_x", "cov_g", "cov_xg", "cov_gn")   # the needs that name a statistic (fisvd.fisher, fisvd.stats)
