"""The logged model's input example: one small synthetic DICOM cine, as a ``dicom`` request.

MLflow stores the example beside the model (``input_example.json`` and the ready-to-POST
``serving_input_example.json``) and runs it through the model when it is logged, so the example
must be a request the model answers. It is a 16-frame 64x64 grey cine of a beating disc in
speckle, written by the synthetic cohort's DICOM writer (`ingest.synth.dicom_writer`) with a
fixed fictional identity, JPEG baseline: about 40 KB, well under a second to write, the same
bytes every time. The clip form is shown in docs/pull-a-model.md (MLflow keeps one example).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from echocmr.ingest.synth.dicom_writer import DicomIdentity, base_dataset, write_pixels
from echocmr.ingest.synth.vendors import JPEG_BASELINE_8BIT, US_MULTIFRAME_IMAGE_STORAGE

FRAMES, SIZE, FPS = 16, 64, 30.0
_UID = "2.25.1"  # a fictional UID root ("2.25": UUID-derived); nothing here names a person
EXAMPLE_IDENTITY = DicomIdentity(
    patient_name="EXAMPLE^SYNTHETIC", patient_id="EXAMPLE", birth_date="19000101", sex="O",
    study_uid=f"{_UID}.1", study_date="20000101", study_time="000000", accession="EXAMPLE",
    institution="echocmr example", study_id="1", series_uid=f"{_UID}.2", series_number=1,
    sop_uid=f"{_UID}.3", instance_number=1, heart_rate=60)


def example_frames(seed: int = 0) -> np.ndarray:
    """``uint8[16, 64, 64]``: a disc whose radius beats once over the clip, in speckle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    r = np.hypot(yy, xx)
    frames = []
    for t in range(FRAMES):
        radius = 14 + 6 * np.sin(2 * np.pi * t / FRAMES)
        tissue = np.where(r < radius, 60, 150) * (r < SIZE / 2 - 1)
        speckle = rng.integers(0, 60, size=(SIZE, SIZE)) * (r < SIZE / 2 - 1)
        frames.append(np.clip(tissue + speckle, 0, 255).astype(np.uint8))
    return np.stack(frames)


def example_dicom() -> bytes:
    """The example cine's file bytes (module docstring)."""
    ds = base_dataset(EXAMPLE_IDENTITY, sop_class=US_MULTIFRAME_IMAGE_STORAGE,
                      transfer_syntax=JPEG_BASELINE_8BIT)
    ds.NumberOfFrames = FRAMES
    ds.FrameTime = f"{1000.0 / FPS:.1f}"
    ds.FrameIncrementPointer = 0x00181063
    with tempfile.TemporaryDirectory(prefix="echocmr-example-") as tmp:
        path = os.path.join(tmp, "example.dcm")
        write_pixels(path, ds, iter(example_frames()), n_frames=FRAMES, rows=SIZE, columns=SIZE,
                     transfer_syntax=JPEG_BASELINE_8BIT, photometric="MONOCHROME2",
                     pixel_mode="L", jpeg_quality=90)
        with open(path, "rb") as f:
            return f.read()
