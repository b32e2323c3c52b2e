"""A small shard set whose clips are in four views (A4C, A2C, PLAX and the non-target PSAX).

Every patient (one study) gets one clip per view, each a phantom heart drawn for the patient
(`ingest.synth.small.small_clip`: the cohort's anatomy and phantom, the fan filling the frame,
random depth and seed), so a view classifier has something to learn in seconds. Splits by patient
(60/20/20). Labels are random; views are what the tests look at.
"""

from __future__ import annotations

import hashlib

import numpy as np

from echocmr.ingest.encode import encode_webm
from echocmr.ingest.synth.anatomy import ALL_VIEWS, draw_heart
from echocmr.ingest.synth.small import small_clip
from echocmr.shards.format import Sample
from echocmr.shards.writer import ShardSetWriter, WriterConfig

FINGERPRINT = hashlib.sha256(b"echocmr-test-views").hexdigest()[:16]


def _hex(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def make_view_set(out_dir: str, *, site: str = "site_a", n_patients: int = 20, size: int = 64,
                  n_frames: int = 16, seed: int = 0, views=ALL_VIEWS,
                  unknown_every: int = 0, view_models: dict[str, str] | None = None) -> str:
    """Write the set; ``unknown_every`` > 0 stores every n-th clip's view as ``unknown``;
    ``view_models`` goes to stats.json (site -> the view model said to have labelled it)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_patients)
    split_of = {int(p): ("val" if i % 5 == 0 else "test" if i % 5 == 1 else "train")
                for i, p in enumerate(order)}
    writer = ShardSetWriter(out_dir, config=WriterConfig(samples_per_shard=16),
                            clip_format={"height": size, "width": size, "fps": 30.0,
                                         "codec": "vp9", "pix_fmt": "yuv420p"},
                            split_key_fingerprint=FINGERPRINT, view_models=view_models)
    n = 0
    with writer:
        for patient in range(n_patients):
            territory = str(rng.choice(["", "", "LAD", "RCA", "LCX"]))
            heart = draw_heart(rng, territory=territory, severity=1.0 if territory else 0.0,
                               extent=1.0)
            labels = np.array([float(bool(territory)), np.nan, np.nan, np.nan, np.nan],
                              dtype=np.float32)
            for view in views:
                frames = small_clip(n_frames, size, size, seed=int(rng.integers(2**32)),
                                    view=view, overlays=False, heart=heart,
                                    depth_cm=float(rng.uniform(10.0, 14.0))).frames
                n += 1
                stored = "unknown" if unknown_every and n % unknown_every == 0 else view
                key = f"{site}-{_hex('clip', site, seed, patient, view)}"
                meta = {"key": key, "site": site, "split": split_of[patient],
                        "patient_hash": _hex("p", site, seed, patient),
                        "study_hash": _hex("s", site, seed, patient), "view": stored,
                        "fps": 30.0, "n_frames": n_frames}
                pixels = frames.astype(np.float64)
                writer.add(Sample(key=key, video=encode_webm(frames, 30.0), labels=labels,
                                  meta=meta),
                           pixel_stats=(float(pixels.mean()), float(pixels.std()),
                                        int(pixels.size)))
    return str(out_dir)
