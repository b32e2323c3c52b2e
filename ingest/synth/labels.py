"""Latent cardiac state of a synthetic patient and the CMR reports that measure it.

The generative model mirrors the study the project serves:

- WMA (wall motion abnormality) is the positive control: it is drawn first, with a coronary
  territory and a severity, and the echo phantom makes that wall segment move less.
- LGE (late gadolinium enhancement, scar) depends on WMA only: P(LGE | WMA) = 0.7,
  P(LGE | no WMA) = 0.2. It has no pixel signal of its own, so a model can see it only through WMA.
- T1, T2 and ECV abnormalities are independent of WMA, LGE and the pixels (ECV leans on T1, as
  tissue mapping does). A model should stay at chance on them.

A CMR report gives raw mapping values, not flags. They are drawn so that the fixed cut-offs in
``CUTOFFS`` (which ingest applies) binarise them back to the latent truth exactly, with a margin of
at least 0.5 so rounding to one decimal never crosses a cut-off. Field strength changes the T1 and
T2 scales, as it does on real scanners. Mapping is missing on ~30-40 % of exams.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

# Abnormal when the value is strictly above the cut-off (ms for T1/T2 by field strength, % for ECV).
CUTOFFS: dict[str, dict[float, float]] = {
    "t1": {1.5: 1050.0, 3.0: 1250.0},
    "t2": {1.5: 55.0, 3.0: 50.0},
    "ecv": {1.5: 30.0, 3.0: 30.0},
}
# Normal (mean, sd) and abnormal excess scale of each raw value, by field strength.
_NORMAL = {
    "t1": {1.5: (990.0, 24.0), 3.0: (1185.0, 28.0)},
    "t2": {1.5: (49.5, 2.4), 3.0: (45.0, 2.2)},
    "ecv": {1.5: (26.0, 2.0), 3.0: (26.0, 2.0)},
}
_EXCESS = {"t1": 30.0, "t2": 2.5, "ecv": 3.0}
_MARGIN = 0.5

TERRITORIES = ("LAD", "RCA", "LCX")  # coronary territory of the abnormal wall


@dataclass(kw_only=True)
class LabelModel:
    """Prevalences, dependencies and missingness of the labels."""

    wma_prevalence: float = 0.35
    p_lge_given_wma: float = 0.7
    p_lge_given_no_wma: float = 0.2
    p_t1: float = 0.30
    p_t2: float = 0.15
    p_ecv_given_t1: float = 0.55
    p_ecv_given_normal_t1: float = 0.15
    territory_probs: tuple[float, float, float] = (0.5, 0.3, 0.2)  # LAD, RCA, LCX
    p_dyskinetic: float = 0.12  # of WMA patients: the segment bulges outward in systole
    severity_range: tuple[float, float] = (0.7, 1.0)  # 1 - residual motion: hypo- to akinetic
    p_second_cmr: float = 0.10
    p_3t: float = 0.35
    p_no_mapping: float = 0.28  # no T1/T2/ECV at all on this exam
    p_t2_missing: float = 0.08  # extra, when mapping was done
    p_ecv_missing: float = 0.15  # extra (no haematocrit or no contrast)

    def __post_init__(self) -> None:
        probs = [
            self.wma_prevalence, self.p_lge_given_wma, self.p_lge_given_no_wma, self.p_t1,
            self.p_t2, self.p_ecv_given_t1, self.p_ecv_given_normal_t1, self.p_dyskinetic,
            self.p_second_cmr, self.p_3t, self.p_no_mapping, self.p_t2_missing, self.p_ecv_missing,
        ]
        if not all(0.0 <= p <= 1.0 for p in probs):
            raise ValueError(f"LabelModel probabilities must lie in [0, 1], got {probs}")
        if not math.isclose(sum(self.territory_probs), 1.0):
            raise ValueError("territory_probs must sum to 1")


# Named label models (`echocmr synth --label-model NAME`). "study", the default, is the one above:
# prevalences and missingness like the published cohort's. "demo" keeps every dependency of
# "study" (LGE through WMA only, T1/T2/ECV independent of WMA, LGE and the pixels, ECV leaning on
# T1) and changes only how common and how often measured the labels are, and how closely LGE
# follows WMA: with "study" a 200-patient cohort's held-out site (~45 patients) holds ~5 patients
# with a measured abnormal T2 (never the 10 a verdict needs), and its LGE-WMA link (a WMA label
# scoring LGE at AUC ~0.74) is too weak for a small model's LGE head to pass the audit there, so
# the demo could not show "only through WMA" (docs/synthetic-cohort.md, "Label models").
LABEL_MODELS: dict[str, LabelModel] = {
    "study": LabelModel(),
    "demo": LabelModel(p_lge_given_wma=0.9, p_lge_given_no_wma=0.1, p_t1=0.45, p_t2=0.4,
                       p_ecv_given_t1=0.6, p_ecv_given_normal_t1=0.25, p_no_mapping=0.1,
                       p_t2_missing=0.03, p_ecv_missing=0.05),
}


def label_model(name: str) -> LabelModel:
    """``LABEL_MODELS[name]`` (a fresh copy); an unknown name is a ValueError listing them."""
    if name not in LABEL_MODELS:
        raise ValueError(f"unknown label model {name!r}; label models are {sorted(LABEL_MODELS)}")
    return dataclasses.replace(LABEL_MODELS[name])


@dataclass(kw_only=True)
class LatentState:
    """What is true about one patient's heart (constant over the follow-up)."""

    wma: int
    territory: str  # "" when wma == 0
    severity: float  # 0 when wma == 0; > 1 means dyskinetic
    extent: float  # relative width of the abnormal segment
    lge: int
    t1: int
    t2: int
    ecv: int


def draw_latent(rng: np.random.Generator, model: LabelModel) -> LatentState:
    """One patient's latent labels and WMA pattern."""
    wma = int(rng.random() < model.wma_prevalence)
    territory, severity, extent = "", 0.0, 0.0
    if wma:
        territory = TERRITORIES[int(rng.choice(3, p=list(model.territory_probs)))]
        if rng.random() < model.p_dyskinetic:
            severity = float(rng.uniform(1.05, 1.3))
        else:
            severity = float(rng.uniform(*model.severity_range))
        extent = float(rng.uniform(0.9, 1.3))
    p_lge = model.p_lge_given_wma if wma else model.p_lge_given_no_wma
    lge = int(rng.random() < p_lge)
    t1 = int(rng.random() < model.p_t1)
    t2 = int(rng.random() < model.p_t2)
    p_ecv = model.p_ecv_given_t1 if t1 else model.p_ecv_given_normal_t1
    ecv = int(rng.random() < p_ecv)
    return LatentState(
        wma=wma, territory=territory, severity=severity, extent=extent,
        lge=lge, t1=t1, t2=t2, ecv=ecv,
    )


def draw_raw_value(rng: np.random.Generator, name: str, abnormal: int, field_t: float) -> float:
    """A raw T1/T2/ECV value on the side of the cut-off that ``abnormal`` says, rounded to 0.1."""
    cut = CUTOFFS[name][field_t]
    if abnormal:
        value = cut + _MARGIN + 0.05 + rng.gamma(2.0, _EXCESS[name] / 2.0)
    else:
        mean, sd = _NORMAL[name][field_t]
        limit = cut - _MARGIN - 0.05
        value = rng.normal(mean, sd)
        if value > limit:  # reflect the tail back below the cut-off: a smooth density, no pile-up
            value = limit - (value - limit)
    return round(float(value), 1)


def binarise(name: str, value: float, field_t: float) -> float:
    """The flag ingest derives from a raw value: 1.0, 0.0, or NaN when the value is missing."""
    if value is None or not np.isfinite(value):
        return float("nan")
    return float(value > CUTOFFS[name][field_t])


def draw_cmr_values(
    rng: np.random.Generator, latent: LatentState, model: LabelModel
) -> dict[str, float]:
    """Field strength and raw mapping values (NaN when not measured) of one CMR exam."""
    field_t = 3.0 if rng.random() < model.p_3t else 1.5
    values = {"field_strength_t": field_t, "t1_native_ms": math.nan, "t2_ms": math.nan,
              "ecv_pct": math.nan}
    # Draw every random number whether or not it is used, so missingness never shifts the stream.
    mapping = rng.random() >= model.p_no_mapping
    t2_present = rng.random() >= model.p_t2_missing
    ecv_present = rng.random() >= model.p_ecv_missing
    t1 = draw_raw_value(rng, "t1", latent.t1, field_t)
    t2 = draw_raw_value(rng, "t2", latent.t2, field_t)
    ecv = draw_raw_value(rng, "ecv", latent.ecv, field_t)
    if mapping:
        values["t1_native_ms"] = t1
        if t2_present:
            values["t2_ms"] = t2
        if ecv_present:
            values["ecv_pct"] = ecv
    return values
