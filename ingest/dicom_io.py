"""Read one DICOM file into a grey echo clip ``uint8[T, H, W]``, or say why not.

The steps, each in its own module: the header (`ingest.dicom_header`: what the file is, whether
it is a cine loop we can use, its identifiers), the pixel data (`ingest.dicom_pixels`, with the
JPEG fast path `ingest.jpeg` and the colour conversion `ingest.colour`), and the geometry and
timing (`ingest.dicom_geometry`). Every refusal raises `ingest.reasons.RejectedInput` with a short
reason code and a human-readable detail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike

import numpy as np

from echocmr.ingest.config import ReadConfig
from echocmr.ingest.dicom_geometry import (
    UltrasoundRegion,
    frame_rate,
    pixel_spacing,
    ultrasound_regions,
)
from echocmr.ingest.dicom_header import (
    ClipIdentity,
    check_cine,
    identity,
    is_lossy,
    load_dataset,
)
from echocmr.ingest.dicom_pixels import decode_grey
from echocmr.ingest.reasons import RejectedInput


@dataclass
class DicomClip:
    """A decoded clip: grey frames plus what preprocessing needs."""

    frames_THW: np.ndarray  # uint8 grey (luma)
    chroma_HW: np.ndarray | None  # float32 2nd-largest chroma over sampled frames; None if grey
    fps: float | None  # source frame rate, None when the file does not say
    regions: list[UltrasoundRegion] = field(default_factory=list)
    pixel_spacing_mm: tuple[float, float] | None = None  # (row, col) from PixelSpacing, if any
    photometric: str = ""  # of the decoded data
    # Lossy-compressed (a lossy transfer syntax, or LossyImageCompression "01"): constant overlay
    # carries codec noise, which `ingest.sector` allows for.
    lossy: bool = False


def clip_from_dataset(ds, config: ReadConfig | None = None) -> DicomClip:
    """Decode the pixel data of a checked dataset to grey frames and a chroma map."""
    config = config or ReadConfig()
    frames, chroma, photometric = decode_grey(ds, strict_jpeg_frames=config.strict_jpeg_check_frames)
    return DicomClip(
        frames_THW=frames,
        chroma_HW=chroma,
        fps=frame_rate(ds),
        regions=ultrasound_regions(ds),
        pixel_spacing_mm=pixel_spacing(ds),
        photometric=photometric,
        lossy=is_lossy(ds),
    )


def read_dicom(path: str | PathLike, config: ReadConfig | None = None) -> tuple[DicomClip, ClipIdentity | None]:
    """Read, check and decode one file. Raises `RejectedInput`.

    The identity is None when the file lacks identifiers: prediction does not need them.
    """
    config = config or ReadConfig()
    ds = load_dataset(path, config)
    check_cine(ds, config)
    try:
        ident = identity(ds)
    except RejectedInput:
        ident = None
    return clip_from_dataset(ds, config), ident
