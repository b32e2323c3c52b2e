"""A real, small shard set for tests: VP9 clips through `ShardSetWriter`, in seconds.

`make_shard_set(out_dir)` builds ``n_patients`` patients (one study each) with
``clips_per_patient`` clips, assigned by patient to train/val/test (60/20/20, each split gets at
least one patient), labels with NaNs, and, when ``signal=True``, a visible WMA pattern: every clip
shows a bright disc on speckle; the disc beats (its radius oscillates) in WMA-negative clips and
stands still in WMA-positive ones, so a small video network can learn WMA while LGE..ECV are
random noise labels.

Train and eval tests import it; keep it cheap (112x112x24 clips encode in ~30 ms each).
"""

from __future__ import annotations

import hashlib

import numpy as np

from echocmr.ingest.encode import encode_webm
from echocmr.shards.format import TASKS, Sample
from echocmr.shards.writer import ShardSetWriter, WriterConfig

FIXTURE_SPLIT_KEY_FINGERPRINT = hashlib.sha256(b"echocmr-test-split-key").hexdigest()[:16]
VIEWS = ("A4C", "A2C", "PLAX")


def _hex(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def clip_format(size: int = 112, fps: float = 30.0) -> dict:
    return {"height": size, "width": size, "fps": float(fps), "codec": "vp9", "pix_fmt": "yuv420p"}


def make_frames(
    rng: np.random.Generator,
    *,
    wma: bool,
    n_frames: int,
    size: int,
    fps: float,
    signal: bool = True,
) -> np.ndarray:
    """uint8[T, H, W]: speckle plus a disc that beats (WMA negative) or stands still (positive)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2 + rng.uniform(-size / 10, size / 10, size=2)
    radius = size * rng.uniform(0.18, 0.25)
    phase = rng.uniform(0, 2 * np.pi)
    heart_hz = rng.uniform(1.0, 1.6)
    amplitude = 0.0 if (wma and signal) else 0.3 * radius
    if not signal:
        amplitude = 0.3 * radius * rng.uniform(0.0, 1.0)
    frames = np.empty((n_frames, size, size), dtype=np.uint8)
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    speckle = rng.normal(0, 10, size=(size, size))  # static texture: cheap for VP9
    for t in range(n_frames):
        r = radius + amplitude * np.sin(2 * np.pi * heart_hz * t / fps + phase)
        img = 40.0 + 150.0 * (dist < r) + speckle + rng.normal(0, 2, size=(size, size))
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def _labels(rng: np.random.Generator, patient: int) -> np.ndarray:
    wma = float(patient % 2)  # balanced, always known
    lge = float(rng.random() < 0.4) if rng.random() > 0.15 else np.nan
    others = [float(rng.random() < 0.3) if rng.random() > 0.35 else np.nan for _ in TASKS[2:]]
    return np.array([wma, lge, *others], dtype=np.float32)


def _splits(n_patients: int, rng: np.random.Generator) -> list[str]:
    """Split per patient pair (2k: WMA negative, 2k+1: positive), so every split that has a pair
    holds both WMA classes; about 60/20/20, val and test get a pair each when there are >= 3."""
    n_pairs = (n_patients + 1) // 2
    n_held = max(1, round(0.2 * n_pairs)) if n_pairs >= 3 else 0
    order = ["val"] * n_held + ["test"] * n_held + ["train"] * (n_pairs - 2 * n_held)
    pair_split = [order[i] for i in rng.permutation(n_pairs)]
    return [pair_split[p // 2] for p in range(n_patients)]


def make_shard_set(
    out_dir: str,
    *,
    site: str = "site_a",
    n_patients: int = 8,
    clips_per_patient: int = 2,
    n_frames: int = 24,
    size: int = 112,
    fps: float = 30.0,
    seed: int = 0,
    samples_per_shard: int = 4,
    signal: bool = True,
) -> str:
    """Write a real shard set into ``out_dir`` and return ``out_dir``."""
    rng = np.random.default_rng(seed)
    splits = _splits(n_patients, rng)
    writer = ShardSetWriter(
        out_dir,
        config=WriterConfig(samples_per_shard=samples_per_shard),
        clip_format=clip_format(size, fps),
        split_key_fingerprint=FIXTURE_SPLIT_KEY_FINGERPRINT,
    )
    with writer:
        for patient in range(n_patients):
            labels = _labels(rng, patient)
            patient_hash = _hex("patient", site, seed, patient)
            study_hash = _hex("study", site, seed, patient)
            for clip in range(clips_per_patient):
                frames = make_frames(
                    rng,
                    wma=bool(labels[0] == 1),
                    n_frames=n_frames,
                    size=size,
                    fps=fps,
                    signal=signal,
                )
                key = f"{site}-{_hex('clip', site, seed, patient, clip)}"
                meta = {
                    "key": key,
                    "site": site,
                    "split": splits[patient],
                    "patient_hash": patient_hash,
                    "study_hash": study_hash,
                    "source_sop_hash": _hex("sop", site, seed, patient, clip),
                    "view": VIEWS[clip % len(VIEWS)],
                    "fps": float(fps),
                    "n_frames": n_frames,
                    "height": size,
                    "width": size,
                    "orig_fps": float(fps),
                    "orig_n_frames": n_frames,
                    "pixel_spacing_mm": [0.3, 0.3],
                    "echo_cmr_gap_days": int(rng.integers(-30, 31)),
                    "field_strength_t": 1.5,
                }
                pixels = frames.astype(np.float64)
                writer.add(
                    Sample(key=key, video=encode_webm(frames, fps), labels=labels, meta=meta),
                    pixel_stats=(float(pixels.mean()), float(pixels.std()), int(pixels.size)),
                )
    return str(out_dir)
