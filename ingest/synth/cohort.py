"""The cohort plan: patients, their CMR exams, echo studies, clips, and the deliberate problems.

Planning is cheap and serial; rendering (``generate.py``) is expensive and parallel. Every patient's
plan is a pure function of ``(seed, patient index)`` through its own ``numpy`` generator, so a
patient looks the same whatever the cohort size or worker count. Only the placement of the problem
files (a handful per cohort) and making sure every machine appears look at the whole cohort, and
they too are seeded.

What a patient gets:
- 1 CMR (90 %) or 2 on dates 150-700 days apart, each with field strength and raw T1/T2/ECV.
- 1-3 echo studies, each anchored on one CMR: the echo date is the CMR date plus a gap that is
  mostly small (Laplace around +1 day, within +-28 days); 7 % of studies fall 35-300 days away
  from every CMR of the patient, which ingest must reject as ``no_cmr_within_window``.
- 2-4 clips per study (A4C, A2C, PLAX; a fourth repeats a view), all on the study's machine,
  and in 70 % of studies one more clip in a view that is not a target (a parasternal short axis,
  ``PSAX``), so about a fifth of clips are not targets at every site and on every machine. That
  clip's draws come from a generator of its own, so the target clips are the same as before.
- One hospital (``sites.py``): every study of the patient is done there, on a machine drawn
  from that hospital's own mix, and the DICOM tree is ``dicom/<site>/<vendor>/...``.
- Problem files added to in-window studies: a single-frame image, a colour-Doppler clip, a Basic
  Text SR and a 5-frame clip (``PROBLEM_REASONS``), at least one each, ~1 per 100 patients.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import numpy as np

from echocmr.ingest.synth.anatomy import (
    NON_TARGET_VIEWS,
    VIEWS,
    HeartParams,
    draw_heart,
    wma_visible,
)
from echocmr.ingest.synth.labels import (
    LabelModel,
    LatentState,
    binarise,
    draw_cmr_values,
    draw_latent,
)
from echocmr.ingest.synth.sites import SITE_BY_KEY, draw_site, site_vendor_shares
from echocmr.ingest.synth.vendors import VENDOR_BY_KEY, vendor_shares

# problem file kind -> the reason ingest must give when it rejects it
PROBLEM_REASONS = {
    "single_frame": "single_frame",
    "colour_doppler": "colour_doppler",
    "text_sr": "not_image",
    "too_few_frames": "too_few_frames",
}
OUT_OF_WINDOW = "no_cmr_within_window"
WINDOW_DAYS = 30  # ingest's pairing window; planned gaps stay <= 28 or >= 35 days
# Chance that a study has a clip in a non-target view: 0.7 against 2.8 target clips per study
# on average puts 0.7 / 3.5 = 20 % of clips outside the targets.
P_NON_TARGET = 0.7

_LAST = ("SMITH", "JONES", "GARCIA", "MILLER", "DAVIS", "LOPEZ", "WILSON", "MOORE", "TAYLOR",
         "ANDERSON", "THOMAS", "JACKSON", "WHITE", "HARRIS", "MARTIN", "THOMPSON", "YOUNG",
         "KING", "WRIGHT", "SCOTT", "GREEN", "BAKER", "ADAMS", "NELSON", "HILL", "CAMPBELL",
         "MITCHELL", "ROBERTS", "CARTER", "PHILLIPS", "EVANS", "TURNER", "DOE", "MORRIS")
_FIRST = {"F": ("JANE", "MARY", "ANNA", "LINDA", "SARAH", "EMMA", "OLIVIA", "GRACE", "ALICE",
                "CLARA", "NORA", "RUTH", "HELEN", "IRIS", "LUCY", "MAYA"),
          "M": ("JOHN", "JAMES", "DAVID", "PETER", "MARK", "PAUL", "OMAR", "LIAM", "NOAH",
                "HENRY", "OSCAR", "VICTOR", "HUGO", "IVAN", "LEO", "SAMUEL")}


@dataclass(kw_only=True)
class CohortConfig:
    """What to generate. ``patients`` and ``seed`` decide everything else."""

    patients: int
    seed: int = 0
    labels: LabelModel = field(default_factory=LabelModel)
    p_out_of_window: float = 0.07
    problems_per_100_patients: float = 1.0
    problem_files: bool = True

    def __post_init__(self) -> None:
        if self.patients < 1:
            raise ValueError(f"patients must be >= 1, got {self.patients}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be a non-negative 64-bit integer, got {self.seed}")


@dataclass(kw_only=True)
class CmrPlan:
    cmr_id: str
    date: dt.date
    field_strength_t: float
    t1_native_ms: float
    t2_ms: float
    ecv_pct: float

    def flags(self) -> dict[str, float]:
        """T1/T2/ECV abnormal flags (NaN when not measured) by the fixed cut-offs."""
        f = self.field_strength_t
        return {"t1": binarise("t1", self.t1_native_ms, f), "t2": binarise("t2", self.t2_ms, f),
                "ecv": binarise("ecv", self.ecv_pct, f)}


@dataclass(kw_only=True)
class FilePlan:
    kind: str  # "clip" or a key of PROBLEM_REASONS
    view: str | None
    sop_uid: str
    series_uid: str
    series_number: int
    instance_number: int
    heart_rate: float
    fps: float
    n_frames: int
    seed: tuple[int, ...]

    @property
    def problem_reason(self) -> str | None:
        return PROBLEM_REASONS.get(self.kind)


@dataclass(kw_only=True)
class StudyPlan:
    index: int
    study_uid: str
    accession: str
    date: dt.date
    time: str  # HHMMSS
    vendor: str
    institution: str
    cmr_index: int  # the CMR this study pairs with (the nearest)
    gap_days: int  # echo date minus that CMR's date
    in_window: bool
    heart_rate: float
    files: list[FilePlan] = field(default_factory=list)


@dataclass(kw_only=True)
class PatientPlan:
    index: int
    patient_id: str
    site: str  # the hospital (sites.py): ingest's --site for this patient's files
    last_name: str
    first_name: str
    sex: str
    birth_date: dt.date
    latent: LatentState
    heart: HeartParams
    cmrs: list[CmrPlan]
    studies: list[StudyPlan]

    @property
    def folder(self) -> str:
        """Named like real exports, after the patient (ingest must never let it leak)."""
        return f"{self.last_name}_{self.first_name}_{self.patient_id}"

    def study_folder(self, study: StudyPlan) -> str:
        """Path of a study below DIR/dicom/: its site, machine, patient, and the study in the
        machine's naming style."""
        vendor = VENDOR_BY_KEY[study.vendor]
        name = (f"{study.date:%Y%m%d}_{study.accession}" if vendor.file_style == "numbered"
                else study.study_uid)
        return f"{self.site}/{vendor.key}/{self.folder}/{name}"

    def file_name(self, study: StudyPlan, f: FilePlan) -> str:
        vendor = VENDOR_BY_KEY[study.vendor]
        if vendor.file_style == "numbered":
            return f"IMG{f.instance_number:05d}.dcm"
        return f"{f.sop_uid}.dcm"


_UID_NAMESPACE = uuid.UUID("5f0c3b6e-9d1a-4c1e-8a53-6c2f0e1d7a94")  # fixed: the cohort's own


def _uid(seed: int, *parts: object) -> str:
    """A UID that is a pure function of the seed and ``parts``: "2.25." + a name-based UUID (v5).

    (pydicom's ``generate_uid(prefix=None)`` ignores its entropy sources and returns a random
    UUID, so it cannot be used for reproducible files.)
    """
    name = "|".join(["echocmr-synth", str(seed), *map(str, parts)])
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def _frames_and_fps(rng: np.random.Generator, vendor_key: str, heart_rate: float
                    ) -> tuple[float, int]:
    """Frame rate exactly as the header will state it, and a frame count of 1-3 beats."""
    vendor = VENDOR_BY_KEY[vendor_key]
    fps = float(rng.uniform(*vendor.fps_range))
    if vendor.timing == "frame_time":
        fps = 1000.0 / round(1000.0 / fps, 1)  # FrameTime is written with one decimal
    else:
        fps = float(round(fps))  # CineRate is an integer
    per_beat = fps * 60.0 / heart_rate
    beats = np.array([1, 2, 3])
    weights = np.array([0.5, 0.38, 0.12]) * (beats * per_beat <= 150)
    n_beats = int(rng.choice(beats, p=weights / weights.sum()))
    n = int(np.clip(round(n_beats * per_beat * rng.uniform(1.0, 1.15)), 40, 150))
    return fps, n


def plan_patient(seed: int, index: int, cfg: CohortConfig) -> PatientPlan:
    """One patient's labels, CMRs, studies and clips (no problem files yet)."""
    rng = np.random.default_rng([seed, index, 1])
    sex = "F" if rng.random() < 0.45 else "M"
    last = str(rng.choice(_LAST))
    first = str(rng.choice(_FIRST[sex]))
    latent = draw_latent(rng, cfg.labels)
    heart = draw_heart(rng, territory=latent.territory, severity=latent.severity,
                       extent=latent.extent)
    first_cmr = dt.date(2016, 1, 1) + dt.timedelta(days=int(rng.integers(0, 8 * 365)))
    cmr_dates = [first_cmr]
    if rng.random() < cfg.labels.p_second_cmr:
        cmr_dates.append(first_cmr + dt.timedelta(days=int(rng.integers(150, 700))))
    pid = f"P{index:06d}"
    cmrs = [CmrPlan(cmr_id=f"CMR{index:06d}-{j + 1}", date=d,
                    **draw_cmr_values(rng, latent, cfg.labels))
            for j, d in enumerate(cmr_dates)]
    age_days = int(rng.uniform(25, 85) * 365.25)
    birth = first_cmr - dt.timedelta(days=age_days)
    base_hr = rng.uniform(55, 100)
    site = draw_site(seed, index)
    keys, _ = vendor_shares()
    shares = site_vendor_shares(site, keys)
    studies: list[StudyPlan] = []
    used_dates: set[dt.date] = set()
    n_studies = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
    for k in range(n_studies):
        anchor = int(rng.integers(len(cmrs)))
        outside = rng.random() < cfg.p_out_of_window
        for _ in range(50):
            if outside:
                gap = int(rng.integers(35, 301)) * (1 if rng.random() < 0.5 else -1)
            else:
                gap = int(np.clip(round(rng.laplace(1.0, 3.0)), -28, 28))
            date = cmr_dates[anchor] + dt.timedelta(days=gap)
            nearest = min(abs((date - d).days) for d in cmr_dates)
            ok_window = nearest <= 28 if not outside else nearest >= 35
            if date not in used_dates and ok_window:
                break
        else:  # pragma: no cover - 50 redraws never all collide in practice
            raise RuntimeError(f"could not place study {k} of patient {index}")
        used_dates.add(date)
        anchor = int(np.argmin([abs((date - d).days) for d in cmr_dates]))
        hr = float(np.clip(base_hr + rng.normal(0, 6), 50, 110))
        study = StudyPlan(
            index=k,
            study_uid=_uid(seed, "study", index, k),
            accession=f"A{int(rng.integers(10**7, 10**8))}",
            date=date,
            time=f"{int(rng.integers(8, 18)):02d}{int(rng.integers(60)):02d}"
                 f"{int(rng.integers(60)):02d}",
            vendor=str(rng.choice(keys, p=shares)),
            institution=str(rng.choice(site.institutions)),
            cmr_index=anchor,
            gap_days=(date - cmr_dates[anchor]).days,
            in_window=not outside,
            heart_rate=hr,
        )
        n_clips = int(rng.choice([2, 3, 4], p=[0.4, 0.4, 0.2]))
        views = [str(v) for v in rng.permutation(VIEWS)][: min(n_clips, 3)]
        if n_clips == 4:
            views.append(str(rng.choice(VIEWS)))
        series_uid = _uid(seed, "series", index, k, 1)
        extra = np.random.default_rng([seed, index, k, 7])  # the non-target clip's own draws
        n_target = len(views)
        if extra.random() < P_NON_TARGET:
            views.append(str(extra.choice(NON_TARGET_VIEWS)))
        for j, view in enumerate(views):
            draw = rng if j < n_target else extra
            clip_hr = float(np.round(np.clip(hr + draw.normal(0, 2), 50, 110), 1))
            fps, n_frames = _frames_and_fps(draw, study.vendor, clip_hr)
            study.files.append(FilePlan(
                kind="clip", view=view, sop_uid=_uid(seed, "sop", index, k, j),
                series_uid=series_uid, series_number=1, instance_number=j + 1,
                heart_rate=clip_hr, fps=fps, n_frames=n_frames, seed=(seed, index, k, j, 2),
            ))
        studies.append(study)
    return PatientPlan(index=index, patient_id=pid, site=site.key, last_name=last, first_name=first, sex=sex,
                       birth_date=birth, latent=latent, heart=heart, cmrs=cmrs, studies=studies)


def add_problem_file(plan: PatientPlan, study: StudyPlan, kind: str, seed: int,
                     rng: np.random.Generator) -> None:
    """Append a problem file of ``kind`` to ``study`` (switching to a colour machine if needed)."""
    if kind not in PROBLEM_REASONS:
        raise ValueError(f"unknown problem kind {kind!r}; expected one of {list(PROBLEM_REASONS)}")
    if kind == "colour_doppler" and not VENDOR_BY_KEY[study.vendor].colour:
        _switch_vendor(study, "aurelia")
    j = len(study.files)
    view = {"text_sr": None, "colour_doppler": "A4C"}.get(kind, str(rng.choice(VIEWS)))
    hr = float(np.round(study.heart_rate, 1))
    fps, n_frames = _frames_and_fps(rng, study.vendor, hr)
    n_frames = {"single_frame": 1, "too_few_frames": 5, "text_sr": 0,
                "colour_doppler": min(n_frames, 60)}[kind]
    study.files.append(FilePlan(
        kind=kind, view=view, sop_uid=_uid(seed, "sop", plan.index, study.index, j, kind),
        series_uid=_uid(seed, "series", plan.index, study.index, 2 + j),
        series_number=2 + j, instance_number=j + 1, heart_rate=hr, fps=fps,
        n_frames=n_frames, seed=(seed, plan.index, study.index, j, 3),
    ))


def _switch_vendor(study: StudyPlan, key: str) -> None:
    """Move a study to another machine (its clips' frame rates follow the machine)."""
    study.vendor = key
    for f in study.files:
        f.fps, f.n_frames = _frames_and_fps(np.random.default_rng([*f.seed, 9]), key,
                                            f.heart_rate)


def _cover_vendors(plans: list[PatientPlan], rng: np.random.Generator) -> None:
    """Make sure every machine appears: switch studies of the commonest machine to missing ones,
    at a site that has the missing machine when there is one."""
    studies = [(p.site, s) for p in plans for s in p.studies]
    if len(studies) < len(VENDOR_BY_KEY):
        return
    for key in VENDOR_BY_KEY:
        counts = {k: sum(s.vendor == k for _, s in studies) for k in VENDOR_BY_KEY}
        if counts[key]:
            continue
        commonest = max(counts, key=lambda k: (counts[k], k))
        pool = [s for _, s in studies if s.vendor == commonest]
        owns = [s for site, s in studies if s.vendor == commonest
                and key in SITE_BY_KEY[site].vendors]
        pool = owns or pool
        _switch_vendor(pool[int(rng.integers(len(pool)))], key)


def plan_cohort(cfg: CohortConfig) -> list[PatientPlan]:
    """Every patient's plan, every machine present, problem files in in-window studies."""
    plans = [plan_patient(cfg.seed, i, cfg) for i in range(cfg.patients)]
    rng = np.random.default_rng([cfg.seed, 2**32 - 1, 7])
    _cover_vendors(plans, rng)
    if not cfg.problem_files:
        return plans
    candidates = [(p, s) for p in plans for s in p.studies if s.in_window]
    if not candidates:
        return plans
    n_each = max(1, round(cfg.patients * cfg.problems_per_100_patients / 100))
    for kind in PROBLEM_REASONS:
        pool = candidates
        if kind == "colour_doppler":
            # a colour machine that records its colour box (the second region item)
            colour = [(p, s) for p, s in candidates if VENDOR_BY_KEY[s.vendor].colour
                      and VENDOR_BY_KEY[s.vendor].has_regions]
            pool = colour or candidates
        picks = rng.choice(len(pool), size=min(n_each, len(pool)), replace=False)
        for i in sorted(int(x) for x in picks):
            add_problem_file(pool[i][0], pool[i][1], kind, cfg.seed, rng)
    return plans


def latent_for_study(plan: PatientPlan, study: StudyPlan) -> dict[str, float]:
    """The labels a correct pipeline attaches to this study's clips (from its paired CMR)."""
    flags = plan.cmrs[study.cmr_index].flags()
    return {"wma": float(plan.latent.wma), "lge": float(plan.latent.lge), **flags}


def is_wma_visible(plan: PatientPlan, view: str | None) -> bool:
    return bool(plan.latent.wma) and view is not None and wma_visible(plan.latent.territory,
                                                                      view)
