"""Ingest's work cache: a file's result comes back typed (its `SampleMeta` included), and a result
the cache cannot parse is redone, never half-trusted."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from echocmr.ingest.workcache import FileResult, WorkCache
from echocmr.shards.format import IngestFacts, SampleMeta


def _kept() -> tuple[FileResult, bytes]:
    video = b"\x1aE\xdf\xa3 not really a webm"
    meta = SampleMeta(
        key="site_a-0123abcd", site="site_a", split="val", patient_hash="p" * 16,
        study_hash="s" * 16, view="a4c", fps=np.float64(30.0) / 3 * 3, n_frames=32,
        ingest=IngestFacts(source_sop_hash="0123abcd", height=128, width=128, orig_fps=49.7,
                           orig_n_frames=60, pixel_spacing_mm=(0.31, 0.31),
                           echo_cmr_gap_days=-3, field_strength_t=None))
    result = FileResult(source="Müller/ß/clip 1.dcm", status="kept", key=meta.key, meta=meta,
                        labels=[1.0, None, 0.0, None, 1.0], pixel_stats=[40.5, 30.25, 524288.0],
                        video_sha256=hashlib.sha256(video).hexdigest(), video_bytes=len(video),
                        study_hash="s" * 16, text_boxes=2, paired=True)
    return result, video


def test_a_kept_result_comes_back_typed_with_its_key_json_bytes(tmp_path):
    cache = WorkCache(str(tmp_path / "work"))
    cache.prepare("fingerprint")
    result, video = _kept()
    cache.store("e1", result, video)
    back = cache.load("e1")
    assert isinstance(back.meta, SampleMeta) and back == result
    assert back.meta.to_json() == result.meta.to_json()  # what the shard will hold
    stored = json.loads((tmp_path / "work" / "files" / "e1" / "e1.json").read_bytes())
    assert stored["meta"] == result.meta.to_json().decode()  # KEY.json itself, not a re-encoding
    assert cache.video("e1", result.video_sha256) == video
    rejected = FileResult(source="x", status="rejected", reason="bad_header", detail="why")
    cache.store("e2", rejected, None)
    assert cache.load("e2") == rejected


def test_a_result_the_cache_cannot_parse_is_redone(tmp_path):
    cache = WorkCache(str(tmp_path / "work"))
    cache.prepare("fingerprint")
    result, video = _kept()
    cache.store("e1", result, video)
    path = tmp_path / "work" / "files" / "e1" / "e1.json"
    good = json.loads(path.read_bytes())
    meta = json.loads(good["meta"])
    bad = [
        {**good, "meta": meta},  # the dict an older cache held
        {**good, "meta": json.dumps({**meta, "patient_name": "SMITH^JOHN"})},  # unknown field
        {**good, "meta": json.dumps({k: v for k, v in meta.items() if k != "split"})},
        {**good, "key": "site_a-other"},  # meta names another sample
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "labels"},
        [good],
    ]
    for blob in bad:
        path.write_bytes(json.dumps(blob).encode())
        assert cache.load("e1") is None, blob
    path.write_bytes(json.dumps(good).encode())
    os.remove(tmp_path / "work" / "files" / "e1" / "e1.webm")  # kept without its clip: redone too
    assert cache.load("e1") is None
