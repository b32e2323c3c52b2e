"""Each clip's vendor: the DICOM Manufacturer through the alias table (`ingest.vendor_table`) to a
name of the vocabulary, ``other`` or ``unknown``; through the real ``echocmr ingest`` to
``KEY.json``, the manifest, stats.json's view mix per site and vendor, the report, the summary and
``echocmr shards stats``. The Manufacturer's own text never leaves ingest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest

from echocmr.config import ConfigError
from echocmr.ingest.config import load_config
from echocmr.ingest.synth.vendors import VENDORS as SYNTHETIC
from echocmr.ingest.vendor_table import VendorConfig

from _ingest_fixtures import write_cohort

# -- the table -------------------------------------------------------------------------------


@pytest.mark.parametrize("manufacturer, model, vendor", [
    ("GE Vingmed Ultrasound", "Vivid E95", "ge"),
    ("GE MEDICAL SYSTEMS", None, "ge"),
    ("GE Healthcare Austria GmbH & Co OG", "Voluson", "ge"),
    ("Philips Medical Systems", "EPIQ 7C", "philips"),
    ("ATL", "HDI 5000", "philips"),
    ("SIEMENS", "ACUSON SC2000", "siemens"),
    ("ACUSON", None, "siemens"),
    ("TOSHIBA_MEC_US", "TUS-A500", "canon"),
    ("Canon Medical Systems Corporation", "Aplio i800", "canon"),
    ("SAMSUNG MEDISON CO., LTD.", "HS70A", "samsung"),
    ("Mindray", None, "mindray"),
    ("ZONARE", None, "mindray"),
    ("Esaote", "MyLab Seven", "esaote"),
    ("Hitachi Aloka Medical, Ltd.", None, "hitachi"),
    ("ALOKA", "ProSound Alpha 7", "hitachi"),
    ("FUJIFILM SonoSite, Inc.", "X-Porte", "fujifilm"),
    ("SonoSite", None, "fujifilm"),
    ("", "Vivid S70N", "ge"),  # no Manufacturer: the model name says whose
    (None, "EPIQ CVx", "philips"),
    ("General Hospital Ultrasound", None, "other"),  # "ge" is a word, not a prefix
    ("SMITH^JOHN MRN4711", None, "other"),  # free text: never shipped, counted as other
    ("Acme Sonics", "Model 9", "other"),
    (None, None, "unknown"),
    ("", "", "unknown"),
    (None, "X1", "unknown"),  # a model name the table does not know says nothing
    (pydicom.multival.MultiValue(str, ["Philips", "Ultrasound"]), None, "philips"),
])
def test_the_built_in_table_maps_real_spellings(manufacturer, model, vendor):
    assert VendorConfig().table().vendor_of(manufacturer, model) == vendor


def test_every_synthetic_machine_maps_to_its_own_vendor():
    table = VendorConfig().table()
    for machine in SYNTHETIC:
        assert table.vendor_of(machine.manufacturer, machine.model) == machine.key
        assert table.vendor_of(None, machine.model) == "unknown"  # the models are not aliases


def test_a_sites_aliases_win_and_the_longest_match_decides(tmp_path):
    config_path = tmp_path / "ingest.yaml"
    config_path.write_text("vendors:\n  aliases:\n    Acme Sonics: esaote\n"
                           "    fujifilm healthcare: hitachi\n    GE: other\n")
    table = load_config(config_path).vendors.table()
    assert table.vendor_of("ACME SONICS Inc.") == "esaote"
    assert table.vendor_of("FUJIFILM Healthcare Corporation", "ARIETTA 750") == "hitachi"
    assert table.vendor_of("FUJIFILM SonoSite") == "fujifilm"
    assert table.vendor_of("GE") == "other"  # a site's alias replaces the built-in spelling
    assert table.vendor_of("GE Vingmed") == "ge"  # the longer built-in spelling still matches
    tie = VendorConfig(aliases={"acme": "ge", "sonics": "philips"}).table()
    assert tie.vendor_of("Acme Sonics") == "other"  # two vendors, one length: no match


@pytest.mark.parametrize("aliases, message", [
    ({"Acme": "Acme Corp"}, "not a vendor"),
    ({"Acme": "unknown"}, "not a vendor"),
    ({"--": "ge"}, "is empty"),
])
def test_an_alias_to_a_name_outside_the_vocabulary_is_refused(tmp_path, aliases, message):
    with pytest.raises(ConfigError, match=message):
        VendorConfig(aliases=aliases)
    path = tmp_path / "ingest.yaml"
    path.write_text(json.dumps({"vendors": {"aliases": aliases}}))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


# -- through echocmr ingest ------------------------------------------------------------------

PATIENT_TEXT = "ZEBULON^QUARTZ 99887766 DOB 19440101"
MAKERS = {  # patient number -> Manufacturer tag (None: the file has no such tag)
    0: "GE Vingmed Ultrasound", 1: "Philips Medical Systems", 2: PATIENT_TEXT, 3: None,
    4: "ACME Echo Ltd",
}
VENDOR_OF = {0: "ge", 1: "philips", 2: "other", 3: "unknown", 4: "esaote"}  # acme: an alias


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, module_split_key):
    """Five patients of two clips (an A4C and a PSAX per the views table), one maker each, and
    the cohort's bad files; ingested once by the real command line."""
    root = tmp_path_factory.mktemp("vendor_cohort")
    cohort = write_cohort(root, n_patients=5, clips_per_study=2, n_frames=16, shape=(48, 64))
    views, vendor_by_uid = [], {}
    for p, folder in enumerate(cohort.patients.values()):
        for c in range(2):
            path = os.path.join(cohort.dicom_dir, folder, "study1", f"clip{c}.dcm")
            ds = pydicom.dcmread(path)
            if MAKERS[p] is not None:
                ds.Manufacturer = MAKERS[p]
            ds.save_as(path, enforce_file_format=True)
            views.append({"sop_instance_uid": ds.SOPInstanceUID, "view": ("A4C", "PSAX")[c]})
            vendor_by_uid[ds.SOPInstanceUID] = VENDOR_OF[p]
    pd.DataFrame(views).to_csv(root / "views.csv", index=False)
    (root / "ingest.yaml").write_text("text_detector: {enabled: false}\n"
                                      "vendors: {aliases: {acme echo: esaote}}\n")
    out = root / "out"
    run = subprocess.run(
        [sys.executable, "-m", "echocmr", "ingest", "--dicom", cohort.dicom_dir, "--labels",
         cohort.labels_path, "--out", str(out), "--site", "hosp_v", "--views",
         str(root / "views.csv"), "--config", str(root / "ingest.yaml"), "--workers", "1"],
        capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    return out, run, vendor_by_uid, cohort


def test_the_summary_prints_the_view_mix_per_vendor(ingested):
    _, run, _, _ = ingested
    lines = run.stdout.splitlines()
    assert "  views per vendor (5 vendor(s); stats.json view_mix):" in lines
    for vendor in ("ge", "philips", "esaote", "other", "unknown"):
        assert f"    {vendor}: 2 clips: A4C 1 (50 %), other 1 (50 %)" in lines, run.stdout


def test_stats_json_and_shards_stats_carry_the_mix_per_site_and_vendor(ingested):
    out, _, _, _ = ingested
    stats = json.load(open(out / "stats.json"))
    assert stats["format_version"] == 3
    assert stats["view_mix"] == {"hosp_v": {v: {"A4C": 1, "other": 1} for v in
                                            ("ge", "philips", "esaote", "other", "unknown")}}
    run = subprocess.run([sys.executable, "-m", "echocmr", "shards", "stats", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "  esaote: 2 clips: A4C 1 (50 %), other 1 (50 %)" in run.stdout.splitlines()
    run = subprocess.run([sys.executable, "-m", "echocmr", "shards", "verify", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_each_clip_carries_its_vendor_in_json_manifest_and_report(ingested):
    out, _, vendor_by_uid, cohort = ingested
    manifest = pq.read_table(out / "manifest.parquet").to_pandas().set_index("key")
    report = pq.read_table(out / "ingest_report.parquet").to_pandas()
    kept = report[report["status"] == "kept"]
    assert len(kept) == 10 and len(manifest) == 10
    for source, key, vendor in zip(kept["source"], kept["key"], kept["vendor"], strict=True):
        uid = pydicom.dcmread(os.path.join(cohort.dicom_dir, source),
                              stop_before_pixels=True).SOPInstanceUID
        assert vendor == vendor_by_uid[uid] == manifest.loc[key, "vendor"]
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as t:
            for member in t.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(t.extractfile(member).read())
                    assert meta["vendor"] == manifest.loc[meta["key"], "vendor"]
    rejected = report.set_index(report["source"].str.rsplit("/", n=1).str[-1])
    assert pd.isna(rejected.loc["random.dcm", "vendor"])  # not a DICOM: no header to read
    assert rejected.loc["nopixels.dcm", "vendor"] == "unknown"  # a header without the tag


def test_a_manufacturer_full_of_patient_text_ships_nowhere(ingested):
    out, run, _, _ = ingested
    words = [w for w in PATIENT_TEXT.replace("^", " ").split() if len(w) > 3]
    found = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            text = " ".join(str(v) for v in table.to_pylist()) + str(table.schema.metadata)
        else:
            text = path.read_bytes().decode("latin-1")
        found += [(path.name, w) for w in words if w in text]
    found += [("output", w) for w in words if w in run.stdout + run.stderr]
    assert not found
