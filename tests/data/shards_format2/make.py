"""How tests/data/shards_format2/set was made: run at main 05f4b9f (format 2), from the repository
root, as `python tests/data/shards_format2/make.py tests/data/shards_format2/set /tmp/resharded`;
it prints the digests of a reshard of it (samples_per_shard 4, seed 3), which
tests/test_shards_vendor.py pins for the tars and indexes."""
import hashlib
import json
import os
import shutil
import sys

from echocmr.shards.format import FORMAT_VERSION, Sample, SampleMeta
from echocmr.shards.reshard import ReshardConfig, reshard
from echocmr.shards.writer import ShardSetWriter, WriterConfig

sys.path.insert(0, "tests")
from _shards_fixtures import FIXTURE_SPLIT_KEY_FINGERPRINT, clip_format

assert FORMAT_VERSION == 2
out = sys.argv[1]
shutil.rmtree(out, ignore_errors=True)
site = "old_site"
rows = []
for i in range(12):
    patient = i // 2
    split = ("train", "train", "train", "val", "test")[patient % 5]
    digest = hashlib.sha256(f"{site}|{i}".encode()).hexdigest()
    rows.append((split, f"{site}-{digest[:16]}", i, patient))
rows.sort(key=lambda r: (("train", "val", "test").index(r[0]), r[1]))
with ShardSetWriter(out, config=WriterConfig(samples_per_shard=5), clip_format=clip_format(32, 30.0),
                    split_key_fingerprint=FIXTURE_SPLIT_KEY_FINGERPRINT,
                    view_models={site: "models:/views/1"}) as writer:
    for split, key, i, patient in rows:
        video = hashlib.sha512(key.encode()).digest() * (2 + i % 3)
        model = i % 3 != 0
        meta = SampleMeta(
            key=key, site=site, split=split,
            patient_hash=hashlib.sha256(f"p|{site}|{patient}".encode()).hexdigest()[:16],
            study_hash=hashlib.sha256(f"s|{site}|{patient}".encode()).hexdigest()[:16],
            view=("A4C", "A2C", "PLAX", "other", "unknown")[i % 5], n_frames=20 + i % 5,
            fps=30.0, view_source="model" if model else "table",
            view_confidence=round(0.5 + i / 40, 4))
        labels = [float((i + t) % 3 == 0) if (i + t) % 7 else float("nan") for t in range(5)]
        writer.add(Sample(key=key, video=video, labels=labels, meta=meta),
                   pixel_stats=(40.0 + i % 9, 20.0 + i % 5, 32 * 32 * 20))
merged = sys.argv[2]
shutil.rmtree(merged, ignore_errors=True)
reshard([out], merged, config=ReshardConfig(samples_per_shard=4, seed=3))
print(json.dumps({n: hashlib.sha256(open(os.path.join(merged, n), "rb").read()).hexdigest()[:16]
                  for n in sorted(os.listdir(merged))}, indent=1))
