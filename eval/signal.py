"""Signal audit: is a task's AUC above 0.5 by more than chance allows?

A one-sided permutation test. Under the null hypothesis the labels carry no information about the
predictions, so any reassignment of labels to patients is as likely as the observed one. Labels are
permuted **by patient within the split**: each patient's labels move together as a block (a
patient's studies are not independent, and breaking that would make the null too narrow). Blocks
are exchanged only between patients with the same number of labelled studies, so every permuted
data set has the same shape as the observed one; with one study per patient this is the ordinary
label permutation.

p-value with the +1 correction (Phipson & Smyth 2010): ``(1 + #{AUC_perm >= AUC_obs}) / (1 + B)``,
never 0. The verdict at ``alpha`` is "signal" or "no detectable signal at this sample size" — the
latter is deliberately not "no signal": a small test split cannot prove an effect is absent.

Five tasks are five tests: with every task truly null, a 5 % test still calls one of them
"signal" about a fifth of the time. So the verdicts of the tasks evaluated together are made on
Holm-adjusted p-values (``correction="holm"``, the default; Holm 1979), which keep the chance of
any false "signal" among them at ``alpha`` and, unlike Bonferroni, lose little power. The raw
p-value is kept beside the adjusted one; ``correction="none"`` judges each task alone.

**Sites.** When prevalence differs between sites, a model that only recognises the site has a
pooled AUC above 0.5, and permuting labels across sites calls that "signal" (40 % of the time at a
pooled AUC of 0.563 in the audit's simulation, within-site AUC 0.504). With ``strata`` (the
study's site) the test is stratified: label blocks are exchanged only between patients whose
studies lie at the same sites (and who have as many of them), so every site keeps its number of
positives, and the statistic is the **pooled within-site AUC** — the share of positive-negative
pairs *from the same site* that the scores order correctly (ties half), i.e. the per-site AUCs
weighted by their number of pairs. A site-recogniser scores 0.5 on it whatever the prevalences.
With one site it is the ordinary test.

**Frozen strata.** Blocks of different sizes cannot be exchanged, so when study count (or the
site sequence) separates the classes — disease brings patients back for more echoes — a group can
hold patients of one label block only, and those patients never move: with 12 positive patients of
3 studies and 30 negative of 1, every permutation is the observed labelling and p = 1 whatever the
scores. The test counts the patients it would freeze (``n_frozen``: members of an exchange group
whose label blocks are all alike) and, when there are any, falls back to the **patient-level**
test: each (patient, stratum, label) becomes one unit scored by the mean of its studies, and unit
labels are permuted freely within the stratum, so labels move between patients of unequal study
counts (``level: "patient"``). A permutation distribution with a single value (nothing can move)
is reported as ``degenerate`` and judged "insufficient data", never "no detectable signal".

Each permuted AUC is a rank sum: the scores' midranks are fixed, so a permutation's AUC is the sum
of the ranks its labels make positive. The B permutations are drawn group by group and, within a
group, in blocks of rows of about ``_CELLS`` (patient, permutation) cells, and each block's rank
sums are added to the B null sums at once: memory O(N + _CELLS) whatever B·N, time O(B·N) after
one O(N log N) sort. The generator shuffles the label blocks themselves, not patient indices
(`permutation_rank_sums`): numpy's shuffle then does nearly all the work, ~14 ns per patient and
permutation, and it is the seed's stream, so it stays. Rank sums are multiples of 0.5 below 2^53, so the sums are exact and the
blocking changes no number; the generator's stream is the one a whole (B, N) draw uses (`patient_
permutations` still returns that matrix, for tests and small N). Exchange groups and within-site
ranks come from one sort each, not a pass per group or per site.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd

from echocmr.model.auc import grouped_midranks, midranks

SIGNAL = "signal"
NO_SIGNAL = "no detectable signal at this sample size"
INSUFFICIENT = "insufficient data"
# A breakdown row (per view, per site, the internal column) whose test ran: its p is printed
# unadjusted and claims nothing; verdict words belong to the primary table only.
EXPLORATORY = "exploratory"
VERDICTS = (SIGNAL, NO_SIGNAL, INSUFFICIENT)
Correction = Literal["holm", "none"]
CORRECTIONS = get_args(Correction)

# (permutation, patient) cells per block of a group's permutations: bounded memory at any N.
_CELLS = 1 << 21


@dataclass(kw_only=True)
class SignalConfig:
    n_permutations: int = 2000
    alpha: float = 0.05
    seed: int = 0
    correction: Correction = "holm"  # over the tasks evaluated together; "none": each task alone
    within_site: bool = True  # more than one site: permute within site, judge the within-site AUC

    def __post_init__(self) -> None:
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction={self.correction!r}: choose one of {CORRECTIONS}")
        if self.n_permutations < 100:
            raise ValueError(f"n_permutations={self.n_permutations}: use at least 100 (1000+)")
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"alpha={self.alpha}: give a significance level such as 0.05")


@dataclass(kw_only=True)
class SignalResult:
    auc: float
    p_value: float
    n_permutations: int
    verdict: str
    null_mean: float  # mean permuted AUC; ~0.5 for a sane test
    seed: int
    n_strata: int = 1  # sites the test was stratified over (1: pooled)
    n_frozen: int = 0  # patients whose label block no permutation of the study-level test moves
    level: str = "study"  # "study": patient blocks; "patient": the fallback on patient units
    degenerate: bool = False  # every permutation gave the same statistic: no test at all


def _exchange_groups(
    patients: np.ndarray, strata: np.ndarray | None,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """(groups of patient indices, study order grouped by patient, block sizes, block starts).

    Patients are grouped by their number of studies (and, with ``strata``, by the stratum of each
    of their studies in study order): the patients whose label blocks may be exchanged. Groups
    come in sorted order of their key (the string ``"<size>\x1f<stratum>\x1f..."`` with strata),
    members in ascending patient order: the order the permutations' random stream follows.
    """
    uniq, inverse = np.unique(patients, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # studies grouped by patient, original order within
    sizes = np.bincount(inverse, minlength=uniq.size)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    if strata is None:
        keys = sizes
    else:  # "<size>\x1f<stratum of study 1>\x1f<stratum of study 2>...", built column by column
        keys = np.char.add(sizes.astype(str), "\x1f").astype(object)
        for j in range(int(sizes.max(initial=0))):
            sel = np.flatnonzero(sizes > j)
            piece = strata[order[starts[sel] + j]].astype(object)
            keys[sel] = keys[sel] + ("\x1f" + piece if j else piece)
    _, key_of = np.unique(keys, return_inverse=True)
    by_key = np.argsort(key_of, kind="stable")
    groups = np.split(by_key, np.cumsum(np.bincount(key_of))[:-1])
    return groups, order, sizes, starts
def frozen_patients(y_true: np.ndarray, patients: np.ndarray,
                    strata: np.ndarray | None = None, *, exchange=None) -> int:
    """Patients whose label block no patient-block permutation can change: members of an
    exchange group (same study count, same site sequence) in which every label block is alike.
    ``exchange``: `_exchange_groups` of these patients and strata, when the caller has it."""
    y = np.asarray(y_true, dtype=np.float64)
    patients = np.asarray(patients)
    strata = None if strata is None else np.asarray(strata).astype(str)
    groups, order, sizes, starts = exchange or _exchange_groups(patients, strata)
    frozen = 0
    for members in groups:
        size = sizes[members[0]]
        blocks_KS = y[order[starts[members][:, None] + np.arange(size)[None, :]]]
        if (blocks_KS == blocks_KS[0]).all():
            frozen += members.size
    return frozen


def patient_units(y_true: np.ndarray, scores: np.ndarray, patients: np.ndarray,
                  strata: np.ndarray | None = None):
    """(labels, scores, unit ids, unit strata or None) with one unit per (patient, stratum, label):
    the mean score of those studies. Units are what the patient-level fallback permutes."""
    y = np.asarray(y_true, dtype=np.float64)
    frame = pd.DataFrame({"patient": np.asarray(patients).astype(str), "y": y,
                          "s": np.asarray(scores, dtype=np.float64),
                          "stratum": "" if strata is None else np.asarray(strata).astype(str)})
    units = frame.groupby(["patient", "stratum", "y"], sort=True)["s"].mean().reset_index()
    ids = (units["patient"] + "\x1f" + units["stratum"] + "\x1f"
           + units["y"].astype(int).astype(str)).to_numpy()
    unit_strata = None if strata is None else units["stratum"].to_numpy()
    return units["y"].to_numpy(), units["s"].to_numpy(), ids, unit_strata


def patient_permutations(
    y_true: np.ndarray, patients: np.ndarray, n_permutations: int, seed: int,
    strata: np.ndarray | None = None,
) -> np.ndarray:
    """Label vectors (n_permutations, N) with labels permuted by patient block.

    Patients are grouped by their number of studies (and, with ``strata``, by the stratum of each
    of their studies in study order); within a group, each permutation assigns every patient the
    label block (in study order) of another patient of the group.
    """
    y = np.asarray(y_true, dtype=np.float64)
    patients = np.asarray(patients)
    if y.shape != patients.shape:
        raise ValueError("patients must give one patient id per study")
    if strata is not None:
        strata = np.asarray(strata).astype(str)
        if strata.shape != y.shape:
            raise ValueError("strata must give one stratum per study")
    out = np.empty((n_permutations, y.size))
    for studies_KS, lo, perm_bK in _permutation_blocks(patients, n_permutations, seed, strata):
        out[lo : lo + perm_bK.shape[0], studies_KS.ravel()] = (
            y[studies_KS[perm_bK]].reshape(perm_bK.shape[0], -1))
    return out


def _permutation_blocks(patients: np.ndarray, n_permutations: int, seed: int,
                        strata: np.ndarray | None):
    """Yield (studies (K, S) of a group, first permutation row, (rows, K) patient permutation)
    for each exchange group in turn and each block of its permutations: row r of a block says
    which member's label block member k receives in permutation ``lo + r``."""
    rng = np.random.default_rng(seed)
    groups, order, sizes, starts = _exchange_groups(patients, strata)
    for members in groups:  # patients of one group, sorted by hash
        size = sizes[members[0]]
        studies_KS = order[starts[members][:, None] + np.arange(size)[None, :]]
        rows = int(max(1, min(n_permutations, _CELLS // (members.size * size))))
        base = np.arange(members.size)
        for lo in range(0, n_permutations, rows):
            b = min(rows, n_permutations - lo)
            yield studies_KS, lo, rng.permuted(np.tile(base, (b, 1)), axis=1)


def permutation_rank_sums(y: np.ndarray, ranks: np.ndarray, patients: np.ndarray,
                          n_permutations: int, seed: int,
                          strata: np.ndarray | None = None, *, exchange=None) -> np.ndarray:
    """The rank sum ``ranks @ labels`` of each permutation of `patient_permutations` (same seed,
    same permutations), without the (B, N) label matrix: O(N + _CELLS) memory.

    The generator shuffles the patients' label blocks themselves (their labels, or a code per
    distinct block of the group), instead of their indices: a shuffle's swaps depend
    only on the length of the row, so the shuffled codes are the codes of the shuffled indices
    and the stream is the same (a test checks it against `patient_permutations`), without the
    random gather through a (rows, K) index matrix. (8-byte items, not bytes: numpy shuffles
    those on its fast path, ~14 ns per item against ~23 ns for 1-byte items.) ``exchange``:
    `_exchange_groups` of these patients and strata, when the caller has it.
    """
    rng = np.random.default_rng(seed)
    groups, order, sizes, starts = exchange or _exchange_groups(patients, strata)
    sums = np.zeros(n_permutations)
    for members in groups:  # the order and blocking of `_permutation_blocks`: the same stream
        size = int(sizes[members[0]])
        studies_KS = order[starts[members][:, None] + np.arange(size)[None, :]]
        y_KS, r_KS = y[studies_KS], ranks[studies_KS]
        rows = int(max(1, min(n_permutations, _CELLS // (members.size * size))))
        if (y_KS == y_KS[0]).all():  # one label block: every permutation gives the same sum;
            sums += float((y_KS * r_KS).sum())  # the shuffles are still drawn, for the stream
            for lo in range(0, n_permutations, rows):
                _shuffled(rng, np.zeros(members.size, np.int64), min(rows, n_permutations - lo))
            continue
        if size == 1:  # the labels themselves, shuffled as float64 straight into the product
            for lo in range(0, n_permutations, rows):
                sums[lo : lo + rows] += _shuffled(rng, y_KS[:, 0], min(rows, n_permutations - lo)) \
                    @ r_KS[:, 0]
            continue
        # Several studies: each distinct label block of the group gets a code c; member k holding
        # block c adds table[k, c] = its ranks at block c's positive studies. Codes are shuffled,
        # and a permutation's sum is one gather from the table per member.
        blocks_CS, codes = np.unique(y_KS, axis=0, return_inverse=True)
        codes = codes.reshape(-1).astype(np.int64)
        table = (r_KS @ blocks_CS.T).ravel()  # (K, C): rank sums, exact (halves below 2^53)
        offsets = np.arange(members.size, dtype=np.int64) * blocks_CS.shape[0]
        for lo in range(0, n_permutations, rows):
            codes_bK = _shuffled(rng, codes, min(rows, n_permutations - lo))
            codes_bK += offsets
            sums[lo : lo + codes_bK.shape[0]] += table[codes_bK].sum(axis=1)
    return sums


def _shuffled(rng: np.random.Generator, codes_K: np.ndarray, rows: int) -> np.ndarray:
    """``rows`` independent shuffles of ``codes_K``: what ``rng.permuted`` of a (rows, K) tile
    gives, drawing what `_permutation_blocks` draws for a block of that many rows."""
    out = np.tile(codes_K, (rows, 1))
    rng.permuted(out, axis=1, out=out)
    return out


def holm_adjust(p_values: dict[str, float]) -> dict[str, float]:
    """Holm step-down adjusted p-values: the i-th smallest of m becomes the running maximum of
    ``(m - j) * p_(j)`` over j <= i (0-based), capped at 1. Reject where adjusted < alpha."""
    order = sorted(p_values, key=lambda k: (p_values[k], k))
    m, running, out = len(order), 0.0, {}
    for j, key in enumerate(order):
        running = max(running, min(1.0, (m - j) * p_values[key]))
        out[key] = running
    return out


def verdict(p_adjusted: float, alpha: float) -> str:
    return SIGNAL if p_adjusted < alpha else NO_SIGNAL


def permutation_test(
    y_true: np.ndarray,
    scores: np.ndarray,
    patients: np.ndarray,
    *,
    config: SignalConfig | None = None,
    strata: np.ndarray | None = None,
    fallback: bool = True,
) -> SignalResult:
    """One-sided test of AUC > 0.5 with labels permuted by patient; see the module docstring.

    ``strata`` (one site per study): permute within site and test the pooled within-site AUC
    (``auc`` is then that statistic). ``fallback``: when patient blocks would freeze patients,
    test on patient units instead (``level="patient"``); False keeps the block test regardless.
    """
    config = config or SignalConfig()
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(y).any():
        raise ValueError("labels contain NaN: drop unknown labels before the permutation test")
    if y.shape != s.shape:
        raise ValueError("labels and scores must have the same shape")
    m = int((y == 1).sum())
    n = y.size - m
    if m == 0 or n == 0:
        raise ValueError("the permutation test needs positives and negatives")
    n_strata = 1
    if strata is None:
        ranks = midranks(s)
        offset, pairs = m * (m + 1) / 2.0, m * n
    else:
        strata = np.asarray(strata).astype(str)
        if strata.shape != y.shape:
            raise ValueError("strata must give one stratum per study")
        levels, codes = np.unique(strata, return_inverse=True)
        n_strata = levels.size
        # ranks within the stratum: a rank sum there is its Mann-Whitney U
        ranks = grouped_midranks(s, codes)
        ms = np.bincount(codes, weights=y, minlength=n_strata)
        offset = float((ms * (ms + 1) / 2.0).sum())
        pairs = float((ms * (np.bincount(codes, minlength=n_strata) - ms)).sum())
        if pairs == 0:
            raise ValueError("no site has both positives and negatives: no within-site AUC")
    # One grouping for the frozen count and the permutations (1.2 s at 10^6 studies in 4 sites)
    exchange = _exchange_groups(patients, strata)
    n_frozen = frozen_patients(y, patients, strata, exchange=exchange) if fallback else 0
    if n_frozen:
        uy, us, ids, ustrata = patient_units(y, s, patients, strata)
        res = permutation_test(uy, us, ids, config=config, strata=ustrata, fallback=False)
        res.n_frozen, res.level = n_frozen, "patient"
        return res
    observed = float(ranks @ y)
    null_sums = permutation_rank_sums(y, ranks, patients, config.n_permutations, config.seed,
                                      strata=strata, exchange=exchange)
    # Rank sums are multiples of 0.5, so a small tolerance makes ">=" exact in floating point.
    exceed = int((null_sums >= observed - 1e-9).sum())
    p_value = (1 + exceed) / (1 + config.n_permutations)
    degenerate = bool(np.ptp(null_sums) < 1e-9)
    return SignalResult(
        auc=(observed - offset) / pairs,
        p_value=p_value,
        n_permutations=config.n_permutations,
        # this task alone; see `holm_adjust`. A null of one value tests nothing.
        verdict=INSUFFICIENT if degenerate else verdict(p_value, config.alpha),
        degenerate=degenerate,
        null_mean=float(((null_sums - offset) / pairs).mean()),
        seed=config.seed,
        n_strata=n_strata,
    )


def within_site_auc(y_true: np.ndarray, scores: np.ndarray, sites: np.ndarray) -> float:
    """Pooled within-site (stratified) AUC: correctly ordered same-site positive-negative pairs
    over all same-site pairs (ties half); NaN when no site has both classes."""
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    sites = np.asarray(sites).astype(str)
    levels, codes = np.unique(sites, return_inverse=True)
    ms = np.bincount(codes, weights=y, minlength=levels.size)
    ns = np.bincount(codes, minlength=levels.size) - ms
    rank_sums = np.bincount(codes, weights=grouped_midranks(s, codes) * y, minlength=levels.size)
    both = (ms > 0) & (ns > 0)
    num = float((rank_sums - ms * (ms + 1) / 2.0)[both].sum())
    den = float((ms * ns)[both].sum())
    return num / den if den else float("nan")
