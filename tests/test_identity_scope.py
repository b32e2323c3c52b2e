"""One patient at two sites: ``splits.identity_scope`` (site | shared) through real ingests,
``stats.json``, ``shards verify`` and ``shards reshard``."""

from __future__ import annotations

import json
import os

import pytest

from echocmr.config import ConfigError
from echocmr.ingest.config import IngestConfig, SplitConfig
from echocmr.ingest.job import run_ingest
from echocmr.ingest.splits import KeyedHasher
from echocmr.shards.reader import read_manifest
from echocmr.shards.reshard import ReshardConfig, ReshardError, reshard
from echocmr.shards.verify import verify

from _ingest_fixtures import write_cohort

KEY = b"a-test-key"


def test_shared_scope_names_a_person_by_id_alone():
    ids = [f"MRN{i:05d}" for i in range(200)]
    shared = [KeyedHasher(KEY, site=s, config=SplitConfig(identity_scope="shared"))
              for s in ("north", "south")]
    per_site = [KeyedHasher(KEY, site=s) for s in ("north", "south")]
    for pid in ids:
        assert shared[0].patient_hash(pid) == shared[1].patient_hash(pid)
        assert shared[0].split(pid) == shared[1].split(pid)
        assert per_site[0].patient_hash(pid) != per_site[1].patient_hash(pid)
        # a shared hash is not any site's per-site hash (its own domain)
        assert shared[0].patient_hash(pid) not in {h.patient_hash(pid) for h in per_site}
    # per site, the same ID lands in different splits at the two sites for some patients:
    # exactly what lets one person train at one site and test at the other
    assert any(per_site[0].split(p) != per_site[1].split(p) for p in ids)
    # the study hash stays the site's (a study belongs to one site)
    assert shared[0].study_hash("1.2.3") != shared[1].study_hash("1.2.3")


def test_an_unknown_scope_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="identity_scope.*shared"):
        SplitConfig(identity_scope="network")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """One export (the same patient IDs) ingested as two sites, in each scope."""
    root = tmp_path_factory.mktemp("scope")
    cohort = write_cohort(root / "export", n_patients=4, clips_per_study=1, bad_files=False)
    out = {}
    old = os.environ.get("ECHOCMR_SPLIT_KEY")
    os.environ["ECHOCMR_SPLIT_KEY"] = KEY.decode()
    try:
        for scope in ("site", "shared"):
            for site in ("north", "south"):
                config = IngestConfig(site=site, workers=1,
                                      splits=SplitConfig(identity_scope=scope))
                path = str(root / f"{scope}-{site}")
                run_ingest(cohort.dicom_dir, cohort.labels_path, path, config=config,
                           progress=False)
                out[scope, site] = path
    finally:
        if old is None:
            os.environ.pop("ECHOCMR_SPLIT_KEY", None)
        else:
            os.environ["ECHOCMR_SPLIT_KEY"] = old
    return out


def _stats(path: str) -> dict:
    return json.loads(open(os.path.join(path, "stats.json")).read())


def test_stats_json_records_the_scope_and_verify_accepts_it(ingested):
    for (scope, _), path in ingested.items():
        assert _stats(path)["identity_scope"] == scope
        assert verify(path) == []


def test_shared_scope_gives_one_identity_and_one_split_across_sites(ingested):
    def patients(scope, site):
        m = read_manifest(ingested[scope, site])
        return m.drop_duplicates("patient_hash").set_index("patient_hash")["split"]

    north, south = patients("shared", "north"), patients("shared", "south")
    assert set(north.index) == set(south.index) and len(north) == 4
    assert (north.sort_index() == south.sort_index()).all()
    assert not set(patients("site", "north").index) & set(patients("site", "south").index)


def test_reshard_refuses_to_merge_scopes_and_merges_one(ingested, tmp_path):
    with pytest.raises(ReshardError, match="identity scope"):
        reshard([ingested["site", "north"], ingested["shared", "south"]],
                str(tmp_path / "mixed"), config=ReshardConfig())
    assert not (tmp_path / "mixed").exists()
    out = str(tmp_path / "merged")
    reshard([ingested["shared", "north"], ingested["shared", "south"]], out,
            config=ReshardConfig())
    assert _stats(out)["identity_scope"] == "shared" and verify(out) == []
    m = read_manifest(out)
    # one person, seen at two sites, is one patient in one split
    per_patient = m.groupby("patient_hash").agg(sites=("site", "nunique"),
                                               splits=("split", "nunique"))
    assert (per_patient["sites"] == 2).all() and (per_patient["splits"] == 1).all()


def test_a_set_without_a_scope_counts_as_per_site(ingested, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(ingested["site", "south"], old)
    stats = _stats(str(old))
    del stats["identity_scope"]
    (old / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    out = str(tmp_path / "merged")
    reshard([ingested["site", "north"], str(old)], out, config=ReshardConfig())
    assert _stats(out)["identity_scope"] == "site"
    with pytest.raises(ReshardError, match="identity scope"):
        reshard([ingested["shared", "north"], str(old)], str(tmp_path / "no"),
                config=ReshardConfig())
