"""The shard toolkit's outputs on fixed inputs and seeds are pinned, byte for byte (issue 26).

The toolkit's paths are rewritten for archives of millions of clips (columnar manifests, streaming
by shard, Ray tasks); a rewrite must not change one byte of what they write or report. The inputs
here are two site sets of fixed bytes (clip bytes made from the key, not encoded: nothing depends
on a codec library's version), written through the project's writer; the digests were taken from
the code as it was before the rewrites (main at 464e404) and must stay what they are. A change
that alters them on purpose (a new format version) updates them and says why.
"""

from __future__ import annotations

import hashlib
import os

from echocmr.read.assign import assign, plan_reading
from echocmr.shards.format import Sample, SampleMeta
from echocmr.shards.reshard import ReshardConfig, reshard
from echocmr.shards.stats import describe
from echocmr.shards.verify import problems_json, verify
from echocmr.shards.writer import ShardSetWriter, WriterConfig

from _shards_fixtures import FIXTURE_SPLIT_KEY_FINGERPRINT, clip_format


def write_site(out: str, site: str, n: int) -> str:
    """``n`` clips of ``site`` (two per patient), fixed bytes, writer-ordered by split and key."""
    rows = []
    for i in range(n):
        patient = i // 2
        split = ("train", "train", "train", "val", "test")[patient % 5]
        digest = hashlib.sha256(f"{site}|{i}".encode()).hexdigest()
        rows.append((split, f"{site}-{digest[:16]}", i, patient))
    rows.sort(key=lambda r: (("train", "val", "test").index(r[0]), r[1]))
    with ShardSetWriter(out, config=WriterConfig(samples_per_shard=7),
                        clip_format=clip_format(32, 30.0),
                        split_key_fingerprint=FIXTURE_SPLIT_KEY_FINGERPRINT) as writer:
        for split, key, i, patient in rows:
            video = hashlib.sha512(key.encode()).digest() * (3 + i % 4)
            meta = SampleMeta(
                key=key, site=site, split=split,
                patient_hash=hashlib.sha256(f"p|{site}|{patient}".encode()).hexdigest()[:16],
                study_hash=hashlib.sha256(f"s|{site}|{patient}".encode()).hexdigest()[:16],
                view=("A4C", "A2C", "PLAX", "other")[i % 4], n_frames=20 + i % 5, fps=30.0)
            labels = [float((i + t) % 3 == 0) if (i + t) % 7 else float("nan") for t in range(5)]
            writer.add(Sample(key=key, video=video, labels=labels, meta=meta),
                       pixel_stats=(40.0 + i % 9, 20.0 + i % 5, 32 * 32 * 20))
    return out


def digests(directory: str) -> dict[str, str]:
    return {name: hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()[:16]
            for name in sorted(os.listdir(directory))}


def test_reshard_verify_and_stats_write_and_say_what_they_did_before(tmp_path):
    a = write_site(str(tmp_path / "a"), "site_a", 40)
    b = write_site(str(tmp_path / "b"), "site_b", 26)
    out = str(tmp_path / "merged")
    reshard([a, b], out, config=ReshardConfig(samples_per_shard=9, seed=11))
    assert digests(out) == GOLDEN_RESHARD
    assert verify(out) == []
    described = {k: v for k, v in describe(out).items() if k != "set"}  # "set": the path
    stats = hashlib.sha256(repr(sorted(described.items())).encode()).hexdigest()[:16]
    assert stats == GOLDEN_DESCRIBE
    # a damaged copy: the problems and their order are pinned too
    damaged = str(tmp_path / "damaged")
    os.rename(out, damaged)
    with open(os.path.join(damaged, "train-000001.tar"), "r+b") as f:
        f.seek(2600)
        byte = f.read(1)
        f.seek(2600)
        f.write(bytes([byte[0] ^ 0x20]))
    os.remove(os.path.join(damaged, "val-000000.idx"))
    assert hashlib.sha256(problems_json(verify(damaged)).encode()).hexdigest()[:16] \
        == GOLDEN_PROBLEMS


def test_each_ranks_deal_on_a_fixed_seed_is_pinned(tmp_path):
    a = write_site(str(tmp_path / "a"), "site_a", 60)
    train = plan_reading(a, ("train",)).split("train")
    deal = [[(p.name, p.start, p.stop) for p in assign(train, r, 3, seed=4, epoch=2,
                                                       shuffle=True)] for r in range(3)]
    assert deal == GOLDEN_DEAL


# From main at 464e404 (the toolkit before the rewrites), with this module's inputs.
GOLDEN_RESHARD = {
    # format 3 (the vendor): the manifest gains the vendor column (null here: these samples name
    # none), stats.json its format_version 3 and view_mix. Were "0e72d130deedde78" and
    # "ee9cf5dfbd0a4650" in format 2; every tar and index is unchanged.
    "manifest.parquet": "f1ae1067cbca1508", "stats.json": "0010511513d37584",
    "test-000000.idx": "43f22f12b6486e6b", "test-000000.tar": "8317e488af49d3b6",
    "test-000001.idx": "7e62338afa93b5e1", "test-000001.tar": "0dd126afe7ba60d7",
    "train-000000.idx": "6de77d1a2c5a8895", "train-000000.tar": "4a3fa5fee885d00e",
    "train-000001.idx": "e1c47460bcf297b8", "train-000001.tar": "a0f86c2a95364a44",
    "train-000002.idx": "92c6d13a2957c671", "train-000002.tar": "0fc4a7da5bcade69",
    "train-000003.idx": "e4cc62db7928ba0a", "train-000003.tar": "26827d0f684abc92",
    "train-000004.idx": "fbef3eab1ddc2d05", "train-000004.tar": "d1878b5a6ad07537",
    "val-000000.idx": "42773017aff2c524", "val-000000.tar": "5d628363a82bf036",
    "val-000001.idx": "e7dca468cf9faf5e", "val-000001.tar": "2148dc2711f23d9d",
}
GOLDEN_DESCRIBE = "d96f5f7b60f5b3a8"  # format 3: view_mix per vendor (format 2: 179fec572e1f4d6a)
GOLDEN_PROBLEMS = "c167bde28ea3945d"  # a corrupt clip in train-000001, val-000000's index gone
# read.assign's deal (new in issue 26): ranks 0..2 of the train split, seed 4, epoch 2.
GOLDEN_DEAL = [
    [("train-000000.tar", 0, 7), ("train-000003.tar", 0, 7)],
    [("train-000004.tar", 0, 7), ("train-000001.tar", 0, 7)],
    [("train-000002.tar", 0, 7), ("train-000005.tar", 0, 1)],
]
