"""The synthetic cohort generator: its files, its labels, and the signal it plants.

One 12-patient cohort (seed 7, two workers) is generated per module and checked with the real
readers (pydicom and its pixel plugins, pyarrow, pandas); a second run through the command line
with one worker must give the same bytes. Label relationships are checked on a large labels-only
sample, the wall-motion signal on phantom frames rendered by the same code the writer uses.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from echocmr.ingest.synth.anatomy import ALL_VIEWS, TERRITORY_WINDOWS, draw_heart, wma_visible
from echocmr.ingest.synth.cohort import PROBLEM_REASONS, WINDOW_DAYS, CohortConfig, plan_cohort
from echocmr.ingest.synth.cycle import Cycle
from echocmr.ingest.synth.generate import (
    LABEL_COLUMNS,
    TRUTH_COLUMNS,
    _render_patient,
    generate_cohort,
    generate_labels,
)
from echocmr.ingest.synth.labels import CUTOFFS, label_model
from echocmr.ingest.synth.phantom import EchoPhantom
from echocmr.ingest.synth.sector import draw_geometry
from echocmr.ingest.synth.sites import SITE_BY_KEY, SITES
from echocmr.ingest.synth.vendors import VENDOR_BY_KEY, vendor_shares

PATIENTS, SEED = 12, 7
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "A"
    summary = generate_cohort(out, patients=PATIENTS, seed=SEED, workers=2, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def truth(cohort) -> pd.DataFrame:
    return pd.read_parquet(cohort[0] / "synth_truth.parquet")


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_whatever_the_worker_count(cohort, tmp_path):
    out_b = tmp_path / "B"
    subprocess.run([sys.executable, "-m", "echocmr", "synth", "--out", str(out_b),
                    "--patients", str(PATIENTS), "--seed", str(SEED), "--workers", "1"],
                   check=True, capture_output=True)
    a, b = _digests(cohort[0]), _digests(out_b)
    assert len(a) > 50 and a == b


def test_refuses_to_write_over_a_cohort(cohort):
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_cohort(cohort[0], patients=1, seed=SEED, workers=1, progress=False)


def test_every_dicom_reads_and_decodes_as_the_truth_says(cohort, truth):
    root = cohort[0] / "dicom"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.dcm"))
    assert files == sorted(truth["source"])
    for row in truth.itertuples():
        ds = pydicom.dcmread(root / row.source)
        assert ds.SOPInstanceUID == row.sop_uid and ds.StudyInstanceUID == row.study_uid
        assert ds.PatientID == row.patient_id and ds.file_meta.TransferSyntaxUID == \
            row.transfer_syntax
        for keyword in ("PatientName", "PatientBirthDate", "AccessionNumber", "InstitutionName",
                        "StudyDate"):
            assert str(ds.get(keyword, "")), f"{row.source} lacks {keyword}"
        if row.expected_reason == "not_image":
            assert ds.SOPClassUID == BASIC_TEXT_SR and "PixelData" not in ds
            continue
        assert ds.Modality == "US" and ds.PhotometricInterpretation == row.photometric
        ds.pixel_array_options(as_rgb=False)  # luma stays luma; the colour path is tested below
        arr = ds.pixel_array
        shape = (ds.Rows, ds.Columns) + ((3,) if ds.SamplesPerPixel == 3 else ())
        if row.n_frames > 1:
            assert ds.SOPClassUID == US_MULTIFRAME and int(ds.NumberOfFrames) == row.n_frames
            assert arr.shape == (row.n_frames, *shape)
            fps = 1000.0 / float(ds.FrameTime) if "FrameTime" in ds else float(ds.CineRate)
            assert fps == pytest.approx(row.fps, rel=1e-9)
        else:
            assert ds.SOPClassUID == US_IMAGE and arr.shape == shape
        assert arr.dtype == np.uint8 and arr.max() > 100


def test_at_least_three_transfer_syntaxes_and_every_vendor(truth, cohort):
    images = truth[truth["photometric"].notna()]
    assert images["transfer_syntax"].nunique() >= 3
    assert set(images["photometric"]) == {"YBR_FULL_422", "RGB", "MONOCHROME2"}
    assert len(cohort[1]["vendors"]) == 6


def test_every_patient_has_one_site_its_files_and_labels_name(cohort, truth):
    out, summary = cohort
    labels = pd.read_parquet(out / "cmr_labels.parquet")
    site_of = labels.groupby("patient_id")["site"].agg(lambda s: set(s))
    assert all(len(v) == 1 for v in site_of)  # one site per patient, on every exam
    assert (truth["site"] == truth["patient_id"].map(lambda p: next(iter(site_of[p])))).all()
    assert (truth["source"].str.split("/").str[0] == truth["site"]).all()
    assert (truth["source"].str.split("/").str[1] == truth["vendor"]).all()
    assert set(summary["sites"]) <= set(SITE_BY_KEY) and sum(summary["sites"].values()) == PATIENTS
    for row in truth.drop_duplicates("study_uid").itertuples():
        ds = pydicom.dcmread(out / "dicom" / row.source, stop_before_pixels=True)
        assert ds.InstitutionName in SITE_BY_KEY[row.site].institutions, row.source


def test_sites_at_scale_keep_the_machine_shares_and_leave_labels_alone():
    """2,000 planned patients (no pixels): site shares as the table says, each site on its own
    machines, the cohort's machine shares those of vendors.py, and no label depends on the site.
    Tolerances are about 4 binomial standard deviations (plus the mixes' 1-point design slack)."""
    plans = plan_cohort(CohortConfig(patients=2000, seed=3, problem_files=False))
    n = len(plans)
    for site in SITES:
        mine = [p for p in plans if p.site == site.key]
        assert len(mine) / n == pytest.approx(site.share, abs=0.045), site.key
        studies = [s for p in mine for s in p.studies]
        used = {s.vendor for s in studies}
        assert used <= set(site.vendors), (site.key, used)
        for vendor, share in site.vendors.items():
            got = sum(s.vendor == vendor for s in studies) / len(studies)
            assert got == pytest.approx(share, abs=0.07), (site.key, vendor)
        wma = np.mean([p.latent.wma for p in mine])
        t1 = np.mean([p.latent.t1 for p in mine])
        assert wma == pytest.approx(0.35, abs=0.09) and t1 == pytest.approx(0.30, abs=0.09)
    studies = [s for p in plans for s in p.studies]
    # About a fifth of clips are in a view that is not a target, at every site and on every
    # machine; a study has at most one, after its target clips.
    clips = [(p.site, s.vendor, f.view) for p in plans for s in p.studies for f in s.files
             if f.kind == "clip"]
    psax = np.array([v == "PSAX" for _, _, v in clips])
    assert psax.mean() == pytest.approx(0.2, abs=0.02)
    for site in SITES:
        mine = np.array([c[0] == site.key for c in clips])
        assert psax[mine].mean() == pytest.approx(0.2, abs=0.06), site.key
    for key in VENDOR_BY_KEY:
        mine = np.array([c[1] == key for c in clips])
        assert psax[mine].mean() == pytest.approx(0.2, abs=0.08), key
    for s in studies:
        views = [f.view for f in s.files if f.kind == "clip"]
        assert views.count("PSAX") <= 1 and "PSAX" not in views[:-1]
        assert set(views) - {"PSAX"} and set(views) <= set(ALL_VIEWS)
    for key, share in zip(*vendor_shares(), strict=True):
        got = sum(s.vendor == key for s in studies) / len(studies)
        assert got == pytest.approx(share, abs=0.03), key
    assert set(VENDOR_BY_KEY) == {s.vendor for s in studies}


def _sector_and_pixels(path: Path, frame: int = 0):
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array  # default path: YBR is converted to RGB, as most readers do
    img = arr[frame] if int(ds.get("NumberOfFrames", 1)) > 1 else arr
    return ds, img


def test_picture_is_grey_and_overlays_are_burned_in(cohort, truth):
    kept = truth[(truth["expected_status"] == "kept")]
    for photometric in ("YBR_FULL_422", "RGB"):
        row = kept[kept["photometric"] == photometric].iloc[0]
        ds, img = _sector_and_pixels(cohort[0] / "dicom" / row.source)
        reg = ds.SequenceOfUltrasoundRegions[0]
        assert reg.RegionDataType == 1 and reg.PhysicalUnitsXDirection == 3
        assert 0.01 < reg.PhysicalDeltaX == reg.PhysicalDeltaY < 0.1  # cm per pixel
        box = img[reg.RegionLocationMinY0 + 40 : reg.RegionLocationMaxY1 - 10,
                  reg.RegionLocationMinX0 + 60 : reg.RegionLocationMaxX1 - 60].astype(int)
        bright = box[..., 0] > 40
        chroma = np.abs(box[..., 0] - box[..., 2])[bright].mean()
        assert chroma < 4, f"{photometric}: the B-mode picture should be grey, |R-B|={chroma}"
        header = img[: reg.RegionLocationMinY0].astype(int)
        assert (header.max(axis=-1) > 150).mean() > 0.01, "no burned-in header text"
        coloured = np.abs(img[..., 0].astype(int) - img[..., 2]) > 80
        assert coloured.sum() > 100, "colour machines draw a coloured logo/ECG"
    mono = kept[kept["photometric"] == "MONOCHROME2"].iloc[0]
    ds, img = _sector_and_pixels(cohort[0] / "dicom" / mono.source)
    assert img.ndim == 2 and (img[-40:] > 150).any()  # the ECG trace at the bottom


def test_one_vendor_omits_the_region_sequence(cohort, truth):
    with_regions = {}
    for vendor, group in truth[truth["photometric"].notna()].groupby("vendor"):
        ds = pydicom.dcmread(cohort[0] / "dicom" / group["source"].iloc[0],
                             stop_before_pixels=True)
        with_regions[vendor] = "SequenceOfUltrasoundRegions" in ds
    assert not all(with_regions.values()) and sum(with_regions.values()) >= 3


def test_problem_files_are_what_they_claim(cohort, truth):
    root = cohort[0] / "dicom"
    reasons = set(truth["expected_reason"].dropna())
    assert set(PROBLEM_REASONS.values()) <= reasons
    for reason, group in truth.groupby("expected_reason"):
        row = group.iloc[0]
        ds = pydicom.dcmread(root / row.source, stop_before_pixels=reason == "not_image")
        if reason == "single_frame":
            assert "NumberOfFrames" not in ds and ds.pixel_array.ndim in (2, 3)
        elif reason == "too_few_frames":
            assert int(ds.NumberOfFrames) == 5
        elif reason == "not_image":
            assert ds.Modality == "SR" and ds.ContentSequence[0].ValueType == "TEXT"
        elif reason == "colour_doppler":
            img = ds.pixel_array.astype(int)
            reg = ds.SequenceOfUltrasoundRegions[0]
            box = img[:, reg.RegionLocationMinY0 : reg.RegionLocationMaxY1,
                      reg.RegionLocationMinX0 : reg.RegionLocationMaxX1]
            strong = np.abs(box[..., 0] - box[..., 2]) > 60
            assert strong.any(axis=(1, 2)).mean() > 0.5, "most frames show colour flow"
            assert strong.mean() > 0.002
            assert [r.RegionDataType for r in ds.SequenceOfUltrasoundRegions] == [1, 2]


def test_truth_views_and_expected_outcomes(cohort, truth):
    out, summary = cohort
    assert list(truth.columns) == TRUTH_COLUMNS
    assert summary["expected_kept"] == int((truth["expected_status"] == "kept").sum()) > 30
    assert truth.loc[truth["expected_status"] == "kept", "expected_reason"].isna().all()
    views = pd.read_csv(out / "views.csv")
    assert list(views.columns) == ["sop_instance_uid", "view"]
    images = truth[truth["view"].notna()]
    assert dict(zip(views["sop_instance_uid"], views["view"], strict=True)) == dict(
        zip(images["sop_uid"], images["view"], strict=True))
    assert set(views["view"]) <= set(ALL_VIEWS) == {"A4C", "A2C", "PLAX", "PSAX"}
    assert "PSAX" in set(views["view"])  # a view that is not a target, named as a site names it
    # Out-of-window studies are exactly those with no CMR of the patient within 30 days,
    # recomputed from the DICOM StudyDate and the label table as ingest would.
    labels = pd.read_csv(out / "cmr_labels.csv", parse_dates=["cmr_date"])
    for row in truth.itertuples():
        ds = pydicom.dcmread(out / "dicom" / row.source, stop_before_pixels=True)
        echo = pd.Timestamp(ds.StudyDate)
        gaps = (labels.loc[labels["patient_id"] == row.patient_id, "cmr_date"] - echo).abs()
        outside = gaps.dt.days.min() > WINDOW_DAYS
        assert outside == (row.expected_reason == "no_cmr_within_window"), row.source
    assert (truth["expected_reason"] == "no_cmr_within_window").any()


def test_label_table_columns_types_and_missingness(cohort):
    out = cohort[0]
    pq_df = pd.read_parquet(out / "cmr_labels.parquet")
    csv_df = pd.read_csv(out / "cmr_labels.csv", parse_dates=["cmr_date"])
    assert list(pq_df.columns) == LABEL_COLUMNS == list(csv_df.columns)
    assert len(pq_df) >= PATIENTS and pq_df["cmr_id"].is_unique
    assert set(pq_df["wma"]) <= {0, 1} and set(pq_df["lge"]) <= {0, 1}
    assert pq_df["wma"].dtype.kind == "i" and set(pq_df["field_strength_t"]) <= {1.5, 3.0}
    for col in ("t1_native_ms", "t2_ms", "ecv_pct"):
        assert pq_df[col].isna().any() and pq_df[col].notna().any()
        np.testing.assert_allclose(pq_df[col], csv_df[col])
    assert (pd.to_datetime(pq_df["cmr_date"]) == csv_df["cmr_date"]).all()
    # The labels-only generator gives the same rows as the cohort on disk.
    pd.testing.assert_frame_equal(generate_labels(PATIENTS, seed=SEED), pq_df,
                                  check_dtype=False)


def test_label_model_at_scale():
    df = generate_labels(4000, seed=1)
    per_patient = df.groupby("patient_id").agg(wma=("wma", "max"), lge=("lge", "max"),
                                               n=("cmr_id", "size"),
                                               dates=("cmr_date", "nunique"))
    assert 0.30 <= per_patient["wma"].mean() <= 0.40
    lge_given = per_patient.groupby("wma")["lge"].mean()
    assert abs(lge_given[1] - 0.7) < 0.05 and abs(lge_given[0] - 0.2) < 0.04
    two = per_patient["n"] == 2
    assert 0.07 < two.mean() < 0.13 and (per_patient.loc[two, "dates"] == 2).all()
    for col, name in (("t1_native_ms", "t1"), ("t2_ms", "t2"), ("ecv_pct", "ecv")):
        assert 0.28 <= df[col].isna().mean() <= 0.42, col
        cut = df["field_strength_t"].map(CUTOFFS[name])
        known = df[col].notna()
        assert ((df.loc[known, col] - cut[known]).abs() >= 0.5).all()  # never on the cut-off
        flag = (df.loc[known, col] > cut[known]).astype(int)
        wma = df.loc[known, "wma"]
        # independent of WMA: the abnormal rate is the same with and without WMA
        assert abs(flag[wma == 1].mean() - flag[wma == 0].mean()) < 0.05, col
    # The same latent truth on both exams of a patient, whatever the field strength.
    for name, col in (("t1", "t1_native_ms"), ("ecv", "ecv_pct")):
        flags = (df[col] > df["field_strength_t"].map(CUTOFFS[name])).where(df[col].notna())
        both = flags.groupby(df["patient_id"]).agg(["min", "max", "count"])
        both = both[both["count"] == 2]
        assert (both["min"] == both["max"]).all()


def test_demo_label_model_keeps_every_dependency_and_changes_only_rates():
    """The demo's label model (`echocmr synth --label-model demo`): LGE still follows WMA only
    (now 0.9 vs 0.1), T1/T2/ECV stay independent of WMA and of LGE, ECV still leans on T1, and the
    tissue labels are common and mostly measured — so a 45-patient held-out site can judge them."""
    df = generate_labels(4000, seed=1, labels=label_model("demo"))
    first = df.drop_duplicates("patient_id")  # one exam per patient: latent flags, no repeats
    lge_given = first.groupby("wma")["lge"].mean()
    assert abs(lge_given[1] - 0.9) < 0.03 and abs(lge_given[0] - 0.1) < 0.03
    flags = {}
    for col, name in (("t1_native_ms", "t1"), ("t2_ms", "t2"), ("ecv_pct", "ecv")):
        assert df[col].isna().mean() <= 0.2, col  # "study": 0.28-0.42 missing
        cut = df["field_strength_t"].map(CUTOFFS[name])
        flags[name] = (df[col] > cut).astype(float).where(df[col].notna())
        known = df[col].notna()
        flag, wma, lge = flags[name][known], df.loc[known, "wma"], df.loc[known, "lge"]
        assert 0.25 <= flag.mean() <= 0.5, name
        assert abs(flag[wma == 1].mean() - flag[wma == 0].mean()) < 0.05, name
        for w in (0, 1):  # nor LGE within a WMA class (LGE carries nothing of its own)
            a, b = flag[(wma == w) & (lge == 1)], flag[(wma == w) & (lge == 0)]
            se = np.sqrt(flag.mean() * (1 - flag.mean()) * (1 / len(a) + 1 / len(b)))
            assert abs(a.mean() - b.mean()) < 4 * se, (name, w)  # 134 exams in the smallest
    both = flags["t1"].notna() & flags["ecv"].notna()
    ecv_given_t1 = flags["ecv"][both].groupby(flags["t1"][both]).mean()
    assert abs(ecv_given_t1[1.0] - 0.6) < 0.05 and abs(ecv_given_t1[0.0] - 0.25) < 0.05
    # same patients, same pictures' draws up to the labels: WMA and its pattern do not move
    study = generate_labels(4000, seed=1)
    assert (study.drop_duplicates("patient_id")["wma"].to_numpy()
            == first["wma"].to_numpy()).all()


def test_synth_refuses_an_unknown_label_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "echocmr", "synth", "--out", str(tmp_path / "c"),
                           "--patients", "2", "--label-model", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "unknown label model 'nope'" in proc.stderr and "demo" in proc.stderr
    assert not (tmp_path / "c").exists()


def _wall_motion(view: str, territory: str, severity: float, seed: int,
                 wall: str = "LAD") -> float:
    """Motion of ``wall``'s territory relative to the whole LV wall, from rendered pixels."""
    territory = territory and wall
    rng = np.random.default_rng(seed)
    heart = draw_heart(rng, territory=territory, severity=severity, extent=1.0)
    normal = dataclasses.replace(heart, territory="", severity=0.0)
    geom = draw_geometry(rng, rows=240, columns=320, depth_range=(13.0, 15.0))
    phantom = EchoPhantom(view=view, geometry=geom, heart=heart if territory else normal,
                          cycle=Cycle(heart_rate=60.0), rng=rng)
    frames = np.stack([phantom.frame(t).astype(float).ravel() for t in np.arange(0, 1.0, 0.05)])
    change = np.abs(frames - frames.mean(axis=0)).mean(axis=0)
    window = TERRITORY_WINDOWS[view][wall]
    segment = phantom.wall_mask(*window)
    whole = phantom.wall_mask(0.0, np.pi)
    return float(change[segment].mean() / change[whole].mean())


def test_wma_visible_segment_moves_less_than_the_same_wall_of_normal_hearts():
    wma = [_wall_motion(view, "LAD", 1.0, s) for view in ("A4C", "A2C", "PLAX")
           for s in range(4)]
    normal = [_wall_motion(view, "", 0.0, s) for view in ("A4C", "A2C", "PLAX")
              for s in range(4)]
    assert np.mean(wma) < 0.85 * np.mean(normal), (wma, normal)
    assert np.median(wma) < np.median(normal)


@pytest.mark.parametrize("territory", ["LAD", "RCA", "LCX"])
def test_short_axis_shows_every_territory_s_wma(territory):
    """The mid short-axis plane cuts all three territories: an akinetic wall moves less there
    than the same wall of a normal heart (the truth's ``wma_visible`` says so too)."""
    wma = [_wall_motion("PSAX", territory, 1.0, s, wall=territory) for s in range(4)]
    normal = [_wall_motion("PSAX", "", 0.0, s, wall=territory) for s in range(4)]
    assert np.mean(wma) < 0.85 * np.mean(normal), (wma, normal)
    assert wma_visible(territory, "PSAX")


@pytest.mark.parametrize("view", ["A4C", "PSAX"])
def test_lge_and_mapping_labels_leave_no_trace_in_the_pixels(tmp_path, view):
    plan = plan_cohort(CohortConfig(patients=1, seed=SEED, problem_files=False))[0]
    study = copy.deepcopy(plan.studies[0])
    study.files = [dataclasses.replace(study.files[0], view=view)]
    study.files[0].n_frames = 3
    a = dataclasses.replace(plan, studies=[study])
    flipped = dataclasses.replace(plan.latent, lge=1 - plan.latent.lge, t1=1 - plan.latent.t1,
                                  t2=1 - plan.latent.t2, ecv=1 - plan.latent.ecv)
    b = dataclasses.replace(a, latent=flipped)
    rows_a = _render_patient((a, str(tmp_path / "a"), None))
    rows_b = _render_patient((b, str(tmp_path / "b"), None))
    src = rows_a[0]["source"]
    assert rows_a[0]["lge"] != rows_b[0]["lge"]
    assert (tmp_path / "a" / src).read_bytes() == (tmp_path / "b" / src).read_bytes()
