"""Turn a decoded DICOM clip into the model's input: a masked, square, resized, resampled clip.

`preprocess_dicom(path, config)` is the one implementation shared by ``echocmr ingest`` and
``echocmr predict``: training and prediction must see identically prepared pixels, so prediction
reuses this function rather than a copy. It needs no labels and no identifiers; it returns the
file's StudyInstanceUID (`PreprocessedClip.study_uid`, in memory only) so that predict can group
files into studies without reading them again.

Order of operations (each step is a small function below):

1. find the sector (`ingest.sector`): crop box + mask of sector minus static overlays; strongly
   coloured pixels do not count as moving tissue (a colour ECG must not join the sector);
2. reject colour Doppler: strong chroma on at least ``read.doppler_min_fraction`` of the sector
   (colour flow sits inside the fan, surrounded by moving grey tissue, so the hull covers it);
3. pick frames for the target frame rate (nearest source frame for each output time) and cap the
   length at ``max_frames``: done before resizing so dropped frames cost nothing;
4. crop, mask (zero outside the sector), pad to a centred square, resize to ``size`` x ``size``
   (Pillow's antialiased bilinear filter, deterministic).

The pixel spacing of the output is the source spacing times ``square side / size`` (the same in
both directions once the crop is padded to a square, if the source pixels were square).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from os import PathLike

import numpy as np

from echocmr.ingest.config import IngestConfig, PreprocessConfig, ReadConfig
from echocmr.ingest.dicom_header import check_cine, load_dataset, study_uid
from echocmr.ingest.dicom_io import DicomClip, clip_from_dataset
from echocmr.ingest.reasons import RejectedInput
from echocmr.ingest.sector import Sector, find_sector


@dataclass
class PreprocessedClip:
    """A clip ready to encode, with the facts the metadata keeps."""

    frames_THW: np.ndarray  # uint8[T, size, size]
    fps: float  # after resampling (the target frame rate)
    orig_fps: float | None  # of the source, None when the file does not say
    orig_n_frames: int
    pixel_spacing_mm: tuple[float, float] | None  # (row, col) of the output pixels
    sector_source: str  # how the sector was found (see `ingest.sector.Sector.source`)
    # The source's StudyInstanceUID (`preprocess_dicom` only; None without one). PHI: for grouping
    # files in memory, never written anywhere.
    study_uid: str | None = None

    @property
    def n_frames(self) -> int:
        return int(self.frames_THW.shape[0])

    def pixel_stats(self) -> tuple[float, float, int]:
        """(mean, std, n_pixels) on the 0-255 scale, as `shards.writer` wants them."""
        values = self.frames_THW.astype(np.float64)
        return float(values.mean()), float(values.std()), int(values.size)


def preprocess_dicom(
    path: str | PathLike, config: PreprocessConfig | IngestConfig | None = None
) -> PreprocessedClip:
    """Read one DICOM file and prepare it (raises `RejectedInput` for unusable files).

    The result carries the file's StudyInstanceUID (``study_uid``, None if it has none).
    """
    config = _preprocess_config(config)
    ds = load_dataset(path)
    check_cine(ds, config.read)
    uid = study_uid(ds)
    clip = clip_from_dataset(ds, config.read)
    del ds
    return replace(preprocess_clip(clip, config), study_uid=uid)


def preprocess_clip(clip: DicomClip, config: PreprocessConfig | None = None) -> PreprocessedClip:
    """Prepare an already decoded clip (see the module docstring for the steps)."""
    config = config or PreprocessConfig()
    coloured = None
    if clip.chroma_HW is not None:
        coloured = clip.chroma_HW > config.read.doppler_chroma_threshold
    sector = find_sector(clip.frames_THW, clip.regions, config.sector, clip.pixel_spacing_mm,
                         exclude_HW=coloured, lossy=clip.lossy)
    check_colour_doppler(clip.chroma_HW, sector, config.read)

    orig_n = int(clip.frames_THW.shape[0])
    picks = resample_indices(orig_n, clip.fps, config.target_fps, config.max_frames)
    y0, y1, x0, x1 = sector.box
    frames = clip.frames_THW[picks, y0:y1, x0:x1] * sector.mask_HW[None].astype(np.uint8)
    square, side = pad_to_square(frames)
    out = resize_frames(square, config.size)

    spacing = None
    if sector.spacing_mm is not None:
        scale = side / config.size
        spacing = (sector.spacing_mm[0] * scale, sector.spacing_mm[1] * scale)
    return PreprocessedClip(
        frames_THW=out,
        fps=float(config.target_fps),
        orig_fps=clip.fps,
        orig_n_frames=orig_n,
        pixel_spacing_mm=spacing,
        sector_source=sector.source,
    )


def check_colour_doppler(chroma_HW: np.ndarray | None, sector: Sector, config: ReadConfig) -> None:
    """Raise `RejectedInput('colour_doppler')` when the sector holds strong chroma."""
    if chroma_HW is None:
        return
    y0, y1, x0, x1 = sector.box
    inside = chroma_HW[y0:y1, x0:x1][sector.mask_HW]
    if inside.size == 0:
        return
    fraction = float(np.count_nonzero(inside > config.doppler_chroma_threshold)) / inside.size
    if fraction >= config.doppler_min_fraction:
        raise RejectedInput(
            "colour_doppler",
            f"{fraction:.1%} of the sector has chroma > {config.doppler_chroma_threshold:g} "
            f"(limit {config.doppler_min_fraction:.1%})",
        )


def resample_indices(
    n_frames: int, orig_fps: float | None, target_fps: float, max_frames: int
) -> np.ndarray:
    """Source frame index for each output frame: nearest in time, then capped in length.

    An unknown source rate is taken to be the target rate (no resampling).
    """
    if n_frames < 1:
        raise ValueError("a clip needs at least one frame")
    ratio = 1.0 if not orig_fps else orig_fps / target_fps  # source frames per output frame
    if abs(ratio - 1.0) < 1e-3:
        picks = np.arange(n_frames)
    else:
        n_out = max(1, int(math.floor(n_frames / ratio + 1e-6)))
        picks = np.minimum(np.floor(np.arange(n_out) * ratio + 0.5).astype(np.int64), n_frames - 1)
    return picks[:max_frames]


def pad_to_square(frames_THW: np.ndarray) -> tuple[np.ndarray, int]:
    """Zero-pad frames to a centred square; returns the frames and the side."""
    _, h, w = frames_THW.shape
    side = max(h, w)
    if h == w:
        return frames_THW, side
    out = np.zeros((frames_THW.shape[0], side, side), dtype=frames_THW.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[:, top:top + h, left:left + w] = frames_THW
    return out, side


def resize_frames(frames_THW: np.ndarray, size: int) -> np.ndarray:
    """Resize square frames to ``size`` x ``size`` with Pillow's antialiased bilinear filter."""
    from PIL import Image

    if frames_THW.shape[1:] == (size, size):
        return np.ascontiguousarray(frames_THW)
    out = np.empty((frames_THW.shape[0], size, size), dtype=np.uint8)
    for i, frame in enumerate(frames_THW):
        image = Image.fromarray(np.ascontiguousarray(frame))
        out[i] = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    return out


def _preprocess_config(config: PreprocessConfig | IngestConfig | None) -> PreprocessConfig:
    if config is None:
        return PreprocessConfig()
    if isinstance(config, IngestConfig):
        return config.preprocess
    return config
