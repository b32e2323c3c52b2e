"""A real, small shard set for tests: VP9 clips through `ShardSetWriter`, in seconds.

`make_shard_set(out_dir)` builds ``n_patients`` patients (one study each) with
``clips_per_patient`` clips, assigned by patient to train/val/test (60/20/20, each split gets at
least one patient), labels with NaNs, and a visible WMA pattern: every clip is the synthetic
cohort's phantom heart in its view (``ingest.synth.small.small_clip``, the fan filling the frame);
the heart beats in WMA-negative clips and stands still in WMA-positive ones, so a small video
network can learn WMA while LGE..ECV are random noise labels.

Train and eval tests import it; keep it cheap (a 112x112x24 clip renders and encodes in ~60 ms).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable

import numpy as np

from echocmr.ingest.encode import encode_webm
from echocmr.ingest.synth.anatomy import VIEWS, HeartParams
from echocmr.ingest.synth.small import small_clip
from echocmr.shards.format import TASKS, Sample
from echocmr.shards.index import format_index, index_from_tar
from echocmr.shards.writer import ShardSetWriter, WriterConfig

FIXTURE_SPLIT_KEY_FINGERPRINT = hashlib.sha256(b"echocmr-test-split-key").hexdigest()[:16]
# A big heart that beats hard, seen from close: the beat fills much of a 32x32 frame.
STRONG_HEART = HeartParams(half_length_cm=4.2, half_width_cm=2.4, wall_cm=1.0, shortening=0.45,
                           thickening=0.6)


def _hex(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def clip_format(size: int = 112, fps: float = 30.0) -> dict:
    return {"height": size, "width": size, "fps": float(fps), "codec": "vp9", "pix_fmt": "yuv420p"}


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
                view = VIEWS[clip % len(VIEWS)]
                frames = small_clip(
                    n_frames, size, size, seed=int(rng.integers(2**32)), fps=fps, view=view,
                    beating=labels[0] != 1, overlays=False, heart=STRONG_HEART, depth_cm=9.0,
                ).frames
                key = f"{site}-{_hex('clip', site, seed, patient, clip)}"
                meta = {
                    "key": key,
                    "site": site,
                    "split": splits[patient],
                    "patient_hash": patient_hash,
                    "study_hash": study_hash,
                    "source_sop_hash": _hex("sop", site, seed, patient, clip),
                    "view": view,
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


def rewrite_first_member(tar_path: str, edit: Callable[[bytes], bytes] | None = None, *,
                         header: Callable[[tarfile.TarInfo], None] | None = None,
                         tar_format: int = tarfile.PAX_FORMAT) -> tuple[str, str, bytes]:
    """Rewrite a shard's tar with its first member's bytes replaced by ``edit(bytes)`` and/or
    ``header(info)`` applied to its header, in ``tar_format``, then rebuild its ``.idx`` from the
    new tar (an attacker who knows the format does that too). Returns (the member's name, its
    sample key, its bytes now)."""
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    info, data = members[0]
    if edit is not None:
        data = edit(data)
        info.size = len(data)
    if header is not None:
        header(info)
    members[0] = (info, data)
    with tarfile.open(tar_path, "w", format=tar_format) as tar:
        for member, content in members:
            tar.addfile(member, io.BytesIO(content))
    with open(tar_path, "rb") as f:
        index = format_index(index_from_tar(f))
    with open(tar_path[:-4] + ".idx", "w") as f:
        f.write(index)
    return info.name, info.name.split(".")[0], data
