"""Label cut-offs by (field strength, mapping sequence) and site: `ingest.cutoffs`, through
`ingest.labels` and the real ``echocmr ingest`` (rule counts in the summary, the cut-offs'
fingerprint in ``stats.json``, reshard refusing to mix one site's two definitions)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import echocmr.cli as echocmr_cli
from echocmr.config import ConfigError
from echocmr.ingest.config import CutoffRule, LabelConfig, load_config
from echocmr.ingest.cutoffs import RuleSet, normalise_sequence
from echocmr.ingest.labels import RULES_ATTR, RULES_FINGERPRINT_ATTR, WARNINGS_ATTR, read_table
from echocmr.shards.reader import read_manifest

# Example cut-offs for the tests only: NOT reference ranges (a site uses its own).
RULES = (
    CutoffRule(task="t1", field_strength_t=1.5, sequence="shmolli", high=1000.0),
    CutoffRule(task="t1", field_strength_t=1.5, sequence="molli", low=950.0, high=1060.0),
    CutoffRule(task="t1", field_strength_t=1.5, sequence="molli", low=900.0, high=1100.0,
               site="hosp_a"),
)


def _csv(tmp_path, name="cmr.csv", **columns) -> str:
    n = len(next(iter(columns.values())))
    table = {"patient_id": [f"P{i}" for i in range(n)], "cmr_date": ["2023-05-08"] * n}
    table.update(columns)
    path = tmp_path / name
    pd.DataFrame(table).to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("text, task, name", [
    ("MOLLI", "t1", "molli"), ("molli 5(3)3", "t1", "molli"), ("MOLLI 5s(3s)3s", "t1", "molli"),
    ("MOLLI-4(1)3(1)2", "t1", "molli"), ("ShMOLLI", "t1", "shmolli"), ("Sh-MOLLI", "t1", "shmolli"),
    (" SASHA ", "t1", "sasha"), ("T2-prep bSSFP", "t2", "t2prep_bssfp"), ("", "t1", None),
    ("Molly", "t1", "molly"),  # not a known name: the caller decides (error or warn)
])
def test_sequence_cells_are_normalised(text, task, name):
    assert normalise_sequence(text, task) == name


def test_sequence_aliases_map_a_sites_spelling():
    aliases = {"T1map_SR_FLASH": "srflash", "MOLLI-like": "molli"}
    assert normalise_sequence("t1map sr flash", "t1", aliases) == "srflash"
    assert normalise_sequence("molli like", "t1", aliases) == "molli"


def test_per_sequence_cut_offs_change_the_label_and_are_counted(tmp_path):
    path = _csv(tmp_path, field_strength_t=[1.5] * 6 + [3.0],
                t1_native_ms=[1030.0, 1030.0, 1030.0, 1055.0, 1055.0, 1010.0, 1260.0],
                t1_sequence=["MOLLI", "ShMOLLI", "", "molli 5(3)3", None, "Sh-MOLLI", "shmolli"])
    default = read_table(path, LabelConfig())
    ruled = read_table(path, LabelConfig(cutoff_rules=RULES))
    # Today's single 1050 ms cut-off at 1.5 T for every row...
    assert default["t1"].tolist() == [0, 0, 0, 1, 1, 0, 1]
    # ...and per sequence: ShMOLLI's 1000 ms makes 1030 and 1010 abnormal; MOLLI's 1060 ms makes
    # 1055 normal; rows naming no sequence keep the default; 3 T has no sequence rule: default.
    assert ruled["t1"].tolist() == [0, 1, 0, 0, 1, 1, 1]
    assert ruled.attrs[RULES_ATTR] == {
        "t1 1.5 T default: abnormal > 1050 ms": 2,
        "t1 1.5 T molli (rule): abnormal < 950 or > 1060 ms": 2,
        "t1 1.5 T shmolli (rule): abnormal > 1000 ms": 2,
        "t1 3 T default: abnormal > 1250 ms": 1,
    }
    assert default.attrs[RULES_FINGERPRINT_ATTR] != ruled.attrs[RULES_FINGERPRINT_ATTR]


def test_two_sided_rule_makes_low_native_t1_abnormal(tmp_path):
    path = _csv(tmp_path, field_strength_t=[1.5] * 4,
                t1_native_ms=[949.0, 950.0, 1060.0, 1061.0], t1_sequence=["MOLLI"] * 4)
    out = read_table(path, LabelConfig(cutoff_rules=RULES))
    assert out["t1"].tolist() == [1.0, 0.0, 0.0, 1.0]  # strictly below low, strictly above high


def test_site_rules_apply_to_their_site_only_and_win(tmp_path):
    path = _csv(tmp_path, field_strength_t=[1.5] * 3, t1_native_ms=[920.0, 1080.0, 1030.0],
                t1_sequence=["molli", "molli", "shmolli"])
    config = LabelConfig(cutoff_rules=RULES)
    elsewhere = read_table(path, config, site="hosp_b")
    at_a = read_table(path, config, site="hosp_a")
    assert elsewhere["t1"].tolist() == [1.0, 1.0, 1.0]  # molli [950, 1060]; shmolli > 1000
    assert at_a["t1"].tolist() == [0.0, 0.0, 1.0]  # hosp_a's molli [900, 1100]; shmolli as all
    assert "t1 1.5 T molli (site hosp_a): abnormal < 900 or > 1100 ms" in at_a.attrs[RULES_ATTR]
    # A rule for another site changes nothing here: hosp_b's cut-offs are everyone's.
    assert (elsewhere.attrs[RULES_FINGERPRINT_ATTR]
            == RuleSet(LabelConfig(cutoff_rules=RULES[:2])).fingerprint)
    assert at_a.attrs[RULES_FINGERPRINT_ATTR] != elsewhere.attrs[RULES_FINGERPRINT_ATTR]


def test_site_rule_without_sequence_replaces_the_field_default(tmp_path):
    path = _csv(tmp_path, field_strength_t=[3.0, 3.0, 3.0], t1_native_ms=[1100.0, 1200.0, 1300.0])
    rule = CutoffRule(task="t1", field_strength_t=3.0, low=1150.0, high=1280.0, site="hosp_a")
    out = read_table(path, LabelConfig(cutoff_rules=(rule,)), site="hosp_a")
    assert out["t1"].tolist() == [1.0, 0.0, 1.0]
    assert read_table(path, LabelConfig(cutoff_rules=(rule,)))["t1"].tolist() == [0.0, 0.0, 1.0]


def test_a_sequence_without_a_cut_off_stays_unknown_and_is_counted(tmp_path):
    path = _csv(tmp_path, field_strength_t=[1.5, 1.5, 1.5, 1.5, np.nan],
                t1_native_ms=[1200.0, 900.0, np.nan, 1000.0, 1200.0],
                t1_sequence=["SASHA", "sasha", "sasha", "molli", "molli"])
    out = read_table(path, LabelConfig(cutoff_rules=RULES))
    t1 = out["t1"].tolist()
    assert math.isnan(t1[0]) and math.isnan(t1[1])  # never normal, never abnormal by guess
    assert math.isnan(t1[2]) and t1[3] == 0.0 and math.isnan(t1[4])
    warnings = out.attrs[WARNINGS_ATTR]
    assert warnings["t1: sequence 'sasha' has no cut-off at 1.5 T (unknown)"] == 2  # measured ones
    assert warnings["t1: no field strength (unknown)"] == 1


def test_unknown_sequence_names_are_an_error_or_counted(tmp_path):
    path = _csv(tmp_path, field_strength_t=[1.5] * 8, t1_native_ms=[1000.0] * 8,
                t1_sequence=["molli"] * 2 + ["Molly", "molli", "Molly", "x", "x", "x"])
    config = LabelConfig(cutoff_rules=RULES)
    with pytest.raises(ValueError) as err:
        read_table(path, config)
    message = str(err.value)
    for part in (path, "column 't1_sequence'", "rows 3, 5, 6, 7, 8", "shaped 'Aaaaa'",
                 "labels.sequence_aliases", "labels.unknown_sequences: warn"):
        assert part in message, (part, message)
    warned = read_table(path, LabelConfig(cutoff_rules=RULES, unknown_sequences="warn"))
    assert warned["t1"].isna().sum() == 5 and warned["t1"].tolist()[:2] == [0.0, 0.0]
    assert warned.attrs[WARNINGS_ATTR][
        "t1: column 't1_sequence': unknown sequence shaped 'a' (unknown)"] == 3
    assert "Molly" not in message  # a cell is never quoted: it may hold patient text
    aliased = read_table(path, LabelConfig(cutoff_rules=RULES, unknown_sequences="warn",
                                           sequence_aliases={"molly": "molli"}))
    assert aliased["t1"].isna().sum() == 3


def test_sequence_columns_change_nothing_without_sequence_rules(tmp_path):
    values = dict(field_strength_t=[1.5, 3.0, 1.5, 3.0], t1_native_ms=[1051.0, 1249.0, 990.0, 1300.0],
                  t2_ms=[56.0, 49.0, 54.0, 51.0])
    plain = read_table(_csv(tmp_path, "a.csv", **values))
    with_sequences = read_table(_csv(tmp_path, "b.csv", **values, t1_sequence=["MOLLI", "bogus",
                                                                                 "", "SASHA"],
                                     t2_sequence=["whatever"] * 4))
    pd.testing.assert_frame_equal(plain, with_sequences)
    assert plain.attrs == with_sequences.attrs
    assert plain["t1"].tolist() == [1.0, 0.0, 0.0, 1.0] and plain["t2"].tolist() == [1.0, 0.0, 0.0, 1.0]


def test_t2_rules_read_the_t2_sequence_column(tmp_path):
    path = _csv(tmp_path, field_strength_t=[1.5, 1.5], t2_ms=[52.0, 52.0],
                t2_sequence=["T2-prep bSSFP", "GraSE"])
    rules = (CutoffRule(task="t2", field_strength_t=1.5, sequence="t2prep_bssfp", high=50.0),
             CutoffRule(task="t2", field_strength_t=1.5, sequence="grase", high=58.0))
    assert read_table(path, LabelConfig(cutoff_rules=rules))["t2"].tolist() == [1.0, 0.0]


# -- config validation ------------------------------------------------------------------------

_RULE = "labels:\n  cutoff_rules:\n    - {task: t1, field_strength_t: 1.5, sequence: molli, %s}\n"


@pytest.mark.parametrize("text, message", [
    (_RULE % "low: 1100, high: 1000", "rule t1 1.5 T molli: low 1100.0 must be below high 1000.0"),
    (_RULE % "low: 1000, high: 1000", "low 1000.0 must be below high 1000.0"),
    (_RULE % "high: -5", "high must be positive"),
    (_RULE % "high: 1000, site: Hosp A", "site name 'Hosp A' is invalid"),
    (_RULE % "high: 1000, low: null, sequence: ''", "sequence is empty"),
    (_RULE % "high: fast", "must be a number"),
    ("labels:\n  cutoff_rules:\n    - {task: ecv, field_strength_t: 1.5, high: 3}\n",
     "must be one of 't1', 't2'"),
    ("labels:\n  cutoff_rules:\n    - {task: t1, field_strength_t: 2.0, high: 1100}\n",
     "field strength 2 T is not one of labels.t1_cutoff_ms's (1.5, 3 T)"),
    ("labels:\n  cutoff_rules:\n    - {task: t1, field_strength_t: 1.5, sequence: molly, "
     "high: 1100}\n", "sequence 'molly' is not a known t1 sequence"),
    ("labels:\n  cutoff_rules:\n    - {task: t1, field_strength_t: 1.5, sequence: MOLLI, "
     "high: 1100}\n    - {task: t1, field_strength_t: 1.5, sequence: molli 5(3)3, high: 1000}\n",
     "two rules for the same rows"),
    ("labels:\n  cutoff_rules:\n    - {task: t1, field_strength_t: 1.5, hihg: 1100}\n",
     "did you mean 'labels.cutoff_rules.high'"),
    ("labels:\n  t1_cutoff_ms: {1.5: 0}\n", "labels.t1_cutoff_ms: field strengths and cut-offs "
     "must be positive"),
    ("labels:\n  field_strength_tolerance_t: 0\n", "labels.field_strength_tolerance_t must be "
     "positive"),
    ("labels:\n  unknown_sequences: ignore\n", "labels.unknown_sequences must be one of"),
])
def test_bad_cut_off_configs_name_the_key_and_the_file(tmp_path, text, message):
    path = tmp_path / "ingest.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value), str(err.value)
    assert f"config file {path}" in str(err.value)
    assert err.value.key is not None and err.value.key.startswith("labels.")


def test_rules_in_yaml_load_dump_and_load_back(tmp_path):
    import yaml

    from echocmr.config import to_dict

    path = tmp_path / "ingest.yaml"
    path.write_text(
        "site: hosp_a\nlabels:\n  sequence_aliases: {t1map_5s3s3s: molli}\n  cutoff_rules:\n"
        "    - {task: t1, field_strength_t: 1.5, sequence: ShMOLLI, high: 1000}\n"
        "    - {task: t1, field_strength_t: 3, sequence: molli, low: 1100, high: 1300, "
        "site: hosp_a}\n")
    config = load_config(path)
    assert config.labels.cutoff_rules[1] == CutoffRule(
        task="t1", field_strength_t=3.0, sequence="molli", low=1100.0, high=1300.0, site="hosp_a")
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(yaml.safe_dump(to_dict(config)))
    assert load_config(dumped) == config
    assert config.fingerprint() != load_config(None, site="hosp_a").fingerprint()


# -- through `echocmr ingest` -----------------------------------------------------------------


def _export(root, patients: list[str], *, seed: int = 0) -> str:
    """One small echo clip per patient, studied 2023-05-10."""
    from echocmr.ingest.synth.small import small_clip

    from _ingest_fixtures import Identity, write_us_dicom

    dicom = root / "dicom"
    dicom.mkdir(parents=True)
    for i, patient in enumerate(patients):
        write_us_dicom(dicom / f"{patient}.dcm", small_clip(16, 48, 64, seed=seed + i).frames,
                       ident=Identity(patient_id=patient, study_date="20230510"))
    return str(dicom)


def _ingest(dicom: str, labels: str, out, *, site: str, config: str | None, capsys) -> str:
    argv = ["ingest", "--dicom", dicom, "--labels", labels, "--out", str(out), "--site", site,
            "--workers", "1", "--no-progress", "--clip-size", "32"]
    if config is not None:
        argv += ["--config", config]
    assert echocmr_cli.main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("cutoffs")
    patients = [f"P{i}" for i in range(6)]
    dicom = _export(root, patients)
    # P0 MOLLI 1030 / P1 ShMOLLI 1030 / P2 two-sided low 920 / P3 SASHA (no cut-off) /
    # P4 no sequence 1070 / P5 MOLLI 1080 (abnormal for every site but hosp_a)
    table = pd.DataFrame({
        "patient_id": patients, "cmr_date": ["2023-05-08"] * 6, "field_strength_t": [1.5] * 6,
        "t1_native_ms": [1030.0, 1030.0, 920.0, 1200.0, 1070.0, 1080.0],
        "t1_sequence": ["MOLLI 5(3)3", "ShMOLLI", "molli", "SASHA", "", "molli"],
    })
    labels = root / "cmr.csv"
    table.to_csv(labels, index=False)
    plain = root / "cmr_plain.csv"
    table.drop(columns="t1_sequence").to_csv(plain, index=False)
    config = root / "ingest.yaml"
    config.write_text(
        "text_detector: {enabled: false}\n"
        "labels:\n  cutoff_rules:\n"
        "    - {task: t1, field_strength_t: 1.5, sequence: shmolli, high: 1000}\n"
        "    - {task: t1, field_strength_t: 1.5, sequence: molli, low: 950, high: 1060}\n"
        "    - {task: t1, field_strength_t: 1.5, sequence: molli, low: 900, high: 1100, "
        "site: hosp_a}\n")
    plain_config = root / "plain.yaml"
    plain_config.write_text("text_detector: {enabled: false}\n")
    return {"root": root, "dicom": dicom, "labels": str(labels), "plain": str(plain),
            "config": str(config), "plain_config": str(plain_config), "table": table}


def _t1_of(out, export) -> list[float]:
    """T1 labels in patient order (P0..P5), read back from the shard set's manifest."""
    from echocmr.ingest.splits import KeyedHasher, resolve_split_key

    manifest = read_manifest(str(out)).set_index("patient_hash")
    site = manifest["site"].iloc[0]
    key, _ = resolve_split_key(None, warn=False)
    hasher = KeyedHasher(key, site=site)
    return [float(manifest.loc[hasher.patient_hash(p), "t1"]) for p in export["table"]["patient_id"]]


def test_ingest_applies_sequence_and_site_rules_and_records_them(export, tmp_path, capsys, split_key):
    out_b = tmp_path / "hosp_b"
    summary = _ingest(export["dicom"], export["labels"], out_b, site="hosp_b",
                      config=export["config"], capsys=capsys)
    t1 = _t1_of(out_b, export)
    assert t1[:3] == [0.0, 1.0, 1.0] and math.isnan(t1[3]) and t1[4:] == [1.0, 1.0]
    assert "label cut-off t1 1.5 T molli (rule): abnormal < 950 or > 1060 ms: 3 row(s)" in summary
    assert "label cut-off t1 1.5 T shmolli (rule): abnormal > 1000 ms: 1 row(s)" in summary
    assert "label cut-off t1 1.5 T default: abnormal > 1050 ms: 1 row(s)" in summary
    assert "label table: t1: sequence 'sasha' has no cut-off at 1.5 T (unknown): 1" in summary
    stats_b = json.loads((out_b / "stats.json").read_text())
    rules_b = RuleSet(load_config(export["config"]).labels, "hosp_b").fingerprint
    assert stats_b["label_rules"] == {"hosp_b": rules_b}
    assert f"label cut-offs: fingerprint {rules_b}" in summary

    out_a = tmp_path / "hosp_a"
    summary_a = _ingest(export["dicom"], export["labels"], out_a, site="hosp_a",
                        config=export["config"], capsys=capsys)
    t1_a = _t1_of(out_a, export)
    assert t1_a[:3] == [0.0, 1.0, 0.0] and t1_a[5] == 0.0  # hosp_a's molli range [900, 1100]
    assert "t1 1.5 T molli (site hosp_a): abnormal < 900 or > 1100 ms: 3 row(s)" in summary_a
    rules_a = json.loads((out_a / "stats.json").read_text())["label_rules"]["hosp_a"]
    assert rules_a != rules_b

    # Both sets verify (stats.json, label_rules included, is what the manifest gives) and merge.
    from echocmr.shards.reshard import ReshardConfig, ReshardError, reshard
    from echocmr.shards.verify import verify

    assert verify(str(out_a)) == [] and verify(str(out_b)) == []
    merged = tmp_path / "merged"
    reshard([str(out_a), str(out_b)], str(merged), config=ReshardConfig())
    assert json.loads((merged / "stats.json").read_text())["label_rules"] == {
        "hosp_a": rules_a, "hosp_b": rules_b}
    from echocmr.shards.stats import describe, format_table

    assert f"hosp_a {rules_a}, hosp_b {rules_b}" in format_table(describe(str(merged)))

    # hosp_b again, from another export under today's cut-offs: one site, two definitions of
    # abnormal T1 cannot be merged into one set.
    other = tmp_path / "other"
    dicom2 = _export(other, ["Q0"], seed=50)
    labels2 = _csv(other, patient_id=["Q0"], field_strength_t=[1.5], t1_native_ms=[1000.0])
    out_b2 = other / "hosp_b_2"
    _ingest(dicom2, labels2, out_b2, site="hosp_b", config=export["plain_config"], capsys=capsys)
    with pytest.raises(ReshardError, match="disagree on the label cut-offs of site 'hosp_b'"):
        reshard([str(out_b), str(out_b2)], str(tmp_path / "mixed"), config=ReshardConfig())

    # Re-ingesting into the same set with other cut-offs says so.
    again = _ingest(export["dicom"], export["labels"], out_b, site="hosp_b",
                    config=export["plain_config"], capsys=capsys)
    assert f"had this site's labels from other cut-offs (fingerprint {rules_b})" in again


def test_ingest_without_sequence_rules_is_todays(export, tmp_path, capsys, split_key):
    """No rules: the sequence column changes nothing; shards and manifest are byte-identical to
    those of the same table without it, and T1 is today's single cut-off per field strength."""
    with_column, without = tmp_path / "with", tmp_path / "without"
    _ingest(export["dicom"], export["labels"], with_column, site="hosp_b",
            config=export["plain_config"], capsys=capsys)
    _ingest(export["dicom"], export["plain"], without, site="hosp_b",
            config=export["plain_config"], capsys=capsys)
    files = sorted(p.name for p in with_column.iterdir() if p.is_file())
    assert files == sorted(p.name for p in without.iterdir() if p.is_file())
    for name in files:
        if name != "ingest_report.parquet":
            assert (with_column / name).read_bytes() == (without / name).read_bytes(), name
    expected = (export["table"]["t1_native_ms"] > 1050).astype(float).tolist()
    assert _t1_of(with_column, export) == expected
    stats = json.loads((with_column / "stats.json").read_text())
    assert stats["label_rules"] == {"hosp_b": RuleSet(LabelConfig()).fingerprint}
