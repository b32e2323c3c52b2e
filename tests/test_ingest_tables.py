"""Config loading, CMR labels and cut-offs, echo-CMR pairing, keyed hashes and splits."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pandas as pd
import pytest

from echocmr.config import ConfigError
from echocmr.ingest.config import (
    IngestConfig,
    LabelConfig,
    PairingConfig,
    SplitConfig,
    load_config,
    to_dict,
)
from echocmr.ingest.labels import normalise_table, read_table
from echocmr.ingest.pairing import CmrIndex
from echocmr.ingest.splits import (
    DEMO_SPLIT_KEY,
    ENV_VAR,
    KeyedHasher,
    key_fingerprint,
    resolve_split_key,
)

# -- config -----------------------------------------------------------------------------------


def test_defaults_are_the_documented_ones():
    c = IngestConfig()
    assert (c.preprocess.size, c.preprocess.target_fps, c.preprocess.max_frames) == (144, 30.0, 128)
    assert c.preprocess.read.min_frames == 16 and c.pairing.window_days == 30
    assert c.splits.fractions == {"train": 0.7, "val": 0.1, "test": 0.2}
    assert c.encoder.crf == 20 and c.preprocess.read.doppler_chroma_threshold == 40.0
    assert c.labels.t1_cutoff_ms == {1.5: 1050.0, 3.0: 1250.0}


def test_yaml_overrides_nested_values_and_cli_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "site: hosp_a\n"
        "preprocess:\n  size: 64\n  read: {min_frames: 8}\n"
        "labels:\n  t1_cutoff_ms: {1.5: 1000, 3: 1200}\n"
        "encoder: {crf: 30}\n"
        "splits: {fractions: {train: 0.8, val: 0.1, test: 0.1}}\n"
    )
    c = load_config(path, site="hosp_b", workers=None)
    assert c.site == "hosp_b" and c.preprocess.size == 64 and c.preprocess.read.min_frames == 8
    assert c.labels.t1_cutoff_ms == {1.5: 1000.0, 3.0: 1200.0} and c.encoder.crf == 30
    assert c.preprocess.target_fps == 30.0  # untouched defaults stay
    assert c.fingerprint() != IngestConfig().fingerprint()


def test_a_dumped_config_loads_back(tmp_path):
    import yaml

    config = IngestConfig(site="x1")
    config.labels.t2_cutoff_ms[1.5] = 57.0
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    assert load_config(path) == config


@pytest.mark.parametrize("text, message", [
    ("preprocess:\n  sise: 64\n", "unknown key 'preprocess.sise'; did you mean 'preprocess.size'"),
    ("bogus: 1\n", "unknown key"),
    ("preprocess:\n  size: large\n", "preprocess.size must be an integer"),
    ("preprocess:\n  size: 63\n", "even"),
    ("splits: {fractions: {train: 0.5, val: 0.1, test: 0.1}}\n", "sum to 1"),
    ("- a list\n", "mapping"),
])
def test_bad_config_files_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and f"config file {path}" in str(err.value)


def test_flags_merge_into_the_file_section_by_section(tmp_path):
    """Deep merge: a section given by the caller changes only its own keys of the file's."""
    path = tmp_path / "c.yaml"
    path.write_text("site: hosp_a\npreprocess:\n  size: 64\n  read: {min_frames: 8}\n")
    c = load_config(path, preprocess={"read": {"doppler_min_fraction": 0.5}}, workers=3)
    assert c.site == "hosp_a" and c.workers == 3
    assert c.preprocess.size == 64 and c.preprocess.read.min_frames == 8  # kept from the file
    assert c.preprocess.read.doppler_min_fraction == 0.5
    assert c.preprocess.read.doppler_chroma_threshold == 40.0  # default
    with pytest.raises(ConfigError, match="command-line flags: unknown key 'preprocess.sise'"):
        load_config(path, preprocess={"sise": 3})


# -- labels -----------------------------------------------------------------------------------


def _table(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {"patient_id": [f"P{i}" for i in range(n)], "cmr_date": ["2023-01-01"] * n}
    base.update(columns)
    return pd.DataFrame(base)


def test_raw_values_use_field_strength_cut_offs_and_unknown_stays_nan():
    raw = _table(
        field_strength_t=[1.5, 1.5, 3.0, 3.0, np.nan, 2.0],
        t1_native_ms=[1050.0, 1050.1, 1250.0, 1251.0, 1400.0, 1300.0],
        t2_ms=[55.0, 56.0, 50.0, 50.5, 70.0, np.nan],
        ecv_pct=[30.0, 30.1, np.nan, 45.0, 31.0, 20.0],
        wma=[0, 1, np.nan, 1, 0, 0],
    )
    out = normalise_table(raw, LabelConfig())
    t1, t2, ecv = out["t1"].tolist(), out["t2"].tolist(), out["ecv"].tolist()
    assert t1[:4] == [0.0, 1.0, 0.0, 1.0]
    assert math.isnan(t1[4]) and math.isnan(t1[5])  # unknown / unmatched field strength
    assert t2[:4] == [0.0, 1.0, 0.0, 1.0] and math.isnan(t2[4]) and math.isnan(t2[5])
    assert ecv[0] == 0.0 and ecv[1] == 1.0 and math.isnan(ecv[2]) and ecv[4] == 1.0
    assert math.isnan(out["wma"][2]) and out["wma"][3] == 1.0
    assert out["lge"].isna().all()  # no column at all: unknown, never 0


def test_binary_columns_win_and_bad_values_are_errors():
    raw = _table(field_strength_t=[1.5, 1.5], t1=["yes", np.nan], t1_native_ms=[900.0, 1100.0])
    out = normalise_table(raw, LabelConfig())
    assert out["t1"].tolist() == [1.0, 1.0]  # binary where known, else the raw value
    with pytest.raises(ValueError, match="binary label"):
        normalise_table(_table(wma=[2, 0]), LabelConfig())
    with pytest.raises(ValueError, match="missing column 'cmr_date'"):
        normalise_table(pd.DataFrame({"patient_id": ["a"]}), LabelConfig())


def test_csv_keeps_leading_zeros_and_parquet_reads_too(tmp_path):
    raw = pd.DataFrame({"patient_id": ["00123", " 7 "], "cmr_date": ["2023-02-01", ""],
                        "wma": [1, 0]})
    raw.to_csv(tmp_path / "t.csv", index=False)
    out = read_table(tmp_path / "t.csv")
    assert out["patient_id"].tolist() == ["00123"]  # the row without a date is dropped...
    assert out.attrs["label_warnings"]["rows without a CMR date (ignored)"] == 1  # ...counted
    raw.to_parquet(tmp_path / "t.parquet")
    assert read_table(tmp_path / "t.parquet")["cmr_date"].tolist() == [date(2023, 2, 1)]
    with pytest.raises(ValueError, match="parquet or .csv"):
        (tmp_path / "t.xlsx").write_text("x")
        read_table(tmp_path / "t.xlsx")


# -- pairing ----------------------------------------------------------------------------------


def test_nearest_cmr_within_window():
    raw = pd.DataFrame({
        "patient_id": ["A", "A", "A", "B"],
        "cmr_date": ["2023-01-01", "2023-01-21", "2023-03-01", "2023-01-01"],
        "wma": [0, 1, 0, 1],
    })
    index = CmrIndex(normalise_table(raw, LabelConfig()), PairingConfig(window_days=30))
    p = index.pair("A", date(2023, 1, 15))
    assert p.gap_days == -6 and p.labels[0] == 1.0  # Jan 21 is nearer than Jan 1
    assert index.pair("A", date(2023, 1, 10)).gap_days == 9  # 9 vs -11: nearest wins
    tie = index.pair("A", date(2023, 1, 11))  # 10 days from both: the earlier CMR
    assert tie.gap_days == 10 and tie.labels[0] == 0.0
    assert index.pair("A", date(2023, 3, 31)).gap_days == 30
    assert index.pair("A", date(2023, 4, 1)) is None  # 31 days after the last CMR
    assert index.pair("B", date(2023, 1, 31)).gap_days == 30  # the window is inclusive
    assert index.pair("C", date(2023, 1, 1)) is None and index.pair("A", None) is None


# -- keyed hashes and splits ------------------------------------------------------------------


def test_split_key_sources(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_split_key(None, warn=False) == (DEMO_SPLIT_KEY.encode(), "demo")
    monkeypatch.setenv(ENV_VAR, "from-env")
    assert resolve_split_key(None) == (b"from-env", "env")
    assert resolve_split_key("from-config") == (b"from-config", "config")
    fp = key_fingerprint(b"from-env")
    assert len(fp) == 16 and fp != key_fingerprint(b"other") and "from-env" not in fp


def test_hashes_are_keyed_stable_and_split_by_patient():
    a = KeyedHasher(b"k1", site="s1")
    assert a.patient_hash("P1") == KeyedHasher(b"k1", site="s1").patient_hash("P1")
    assert a.patient_hash("P1") != KeyedHasher(b"k2", site="s1").patient_hash("P1")
    assert a.patient_hash("P1") != KeyedHasher(b"k1", site="s2").patient_hash("P1")
    assert a.study_hash("P1") != a.patient_hash("P1")  # separate domains
    assert len(a.clip_hash("1.2.3")) == 16 and int(a.clip_hash("1.2.3"), 16) >= 0
    splits = [a.split(f"patient-{i}") for i in range(4000)]
    counts = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(counts["train"] - 0.7) < 0.03 and abs(counts["val"] - 0.1) < 0.02
    assert abs(counts["test"] - 0.2) < 0.025
    assert splits == [a.split(f"patient-{i}") for i in range(4000)]  # deterministic
    only_test = KeyedHasher(b"k1", site="s1", config=SplitConfig(
        fractions={"train": 0.0, "val": 0.0, "test": 1.0}))
    assert {only_test.split(f"p{i}") for i in range(50)} == {"test"}


# -- strict reading ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("t1_native_ms", ["1100", "high"], r"'t1_native_ms': row 2 .*shaped 'aaaa'"),
        ("ecv_pct", ["31,5", "30"], r"decimal comma"),
        ("field_strength_t", ["1.5T", "3 T"], r"rows 1, 2 .*shaped '9.9A'.*no units"),
        ("cmr_date", ["08/05/2023", "2023-01-01"], r"day-first.*labels.date_format"),
        ("cmr_date", ["2999-01-01", "2023-01-01"], r"row 1 hold dates in the future"),
    ],
)
def test_bad_cells_are_errors_that_name_file_column_and_rows(tmp_path, column, values, message):
    raw = _table(**{column: values})
    raw.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match=message) as info:
        read_table(tmp_path / "t.csv")
    assert str(tmp_path / "t.csv") in str(info.value)


def test_switches_for_legitimate_variants():
    out = normalise_table(_table(ecv_pct=["31,5", "29,5"]), LabelConfig(decimal_comma=True))
    assert out["ecv"].tolist() == [1.0, 0.0]
    out = normalise_table(_table(cmr_date=["08/05/2023", "13/05/2023"]),
                          LabelConfig(date_format="%d/%m/%Y"))
    assert out["cmr_date"].tolist() == [date(2023, 5, 8), date(2023, 5, 13)]  # day-first
    with pytest.raises(ValueError, match="no column for task 'lge'"):
        normalise_table(_table(wma=[0, 1]), LabelConfig(missing_task_columns="error"))
    warned = normalise_table(_table(wma=[0, 1]), LabelConfig())
    assert warned.attrs["label_warnings"]["task lge: no column ['lge'] (unknown for every row)"] == 2


def test_duplicate_rows_identical_merge_conflicting_fail_or_drop():
    same = pd.DataFrame({"patient_id": ["A", "A", "B"], "cmr_date": ["2023-01-01"] * 3,
                         "wma": [1, 1, 0]})
    out = normalise_table(same, LabelConfig())
    assert len(out) == 2 and out.attrs["label_warnings"]["identical duplicate rows (merged)"] == 1
    conflict = same.assign(wma=[1, 0, 0])
    with pytest.raises(ValueError, match="rows 1, 2 give one patient and CMR date different"):
        normalise_table(conflict, LabelConfig())
    dropped = normalise_table(conflict, LabelConfig(conflicting_duplicates="drop"))
    assert dropped["patient_id"].tolist() == ["B"]
    assert dropped.attrs["label_warnings"]["conflicting duplicate rows (dropped)"] == 2


def test_numeric_patient_ids_are_an_error_or_compared_without_leading_zeros(tmp_path):
    raw = pd.DataFrame({"patient_id": [123, 7], "cmr_date": ["2023-01-01"] * 2, "wma": [1, 0]})
    raw.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="leading zeros.*numeric_patient_ids"):
        read_table(tmp_path / "t.parquet")
    table = read_table(tmp_path / "t.parquet",
                       LabelConfig(numeric_patient_ids="strip_leading_zeros"))
    index = CmrIndex(table, PairingConfig())
    assert index.pair("00123", date(2023, 1, 2)).labels[0] == 1.0  # DICOM "00123" pairs


def test_a_table_that_pairs_with_no_study_is_an_error(tmp_path, split_key):
    from echocmr.ingest.job import run_ingest
    from echocmr.ingest.synth.small import small_clip

    from _ingest_fixtures import Identity, write_us_dicom

    (tmp_path / "dicom").mkdir()
    write_us_dicom(tmp_path / "dicom" / "a.dcm", small_clip(16, 48, 64, seed=1).frames,
                   ident=Identity(patient_id="00123"))
    pd.DataFrame({"patient_id": ["123"], "cmr_date": ["2023-05-08"], "wma": [1]}).to_csv(
        tmp_path / "cmr.csv", index=False)
    with pytest.raises(ValueError, match="pairs with no echo study"):
        run_ingest(tmp_path / "dicom", tmp_path / "cmr.csv", tmp_path / "out", progress=False,
                   in_process=True)
    assert (tmp_path / "out" / "ingest_report.parquet").exists()
    assert not (tmp_path / "out" / "manifest.parquet").exists()
