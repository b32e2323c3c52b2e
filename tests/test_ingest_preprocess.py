"""Sector finding, masking, colour-Doppler refusal and the clip geometry/timing."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from scipy import ndimage

from echocmr.ingest.config import PreprocessConfig, SectorConfig
from echocmr.ingest.dicom_io import read_dicom
from echocmr.ingest.encode import decode_webm, encode_webm
from echocmr.ingest.preprocess import (
    pad_to_square,
    preprocess_dicom,
    resample_indices,
    resize_frames,
)
from echocmr.ingest.reasons import RejectedInput
from echocmr.ingest.sector import convex_hull_mask, find_sector
from echocmr.ingest.synth.small import small_clip

from _ingest_fixtures import add_colour_doppler, grey_to_rgb, write_us_dicom

EXAMPLE = get_testdata_file("examples_ybr_color.dcm")


def _static_bright(frames_THW: np.ndarray, level: float = 60.0, still: float = 1.0) -> np.ndarray:
    """Pixels that never change and are bright: burned-in text and markers."""
    f = frames_THW.astype(np.float32)
    return (f.std(axis=0) < still) & (f.mean(axis=0) > level)


def _kept_full(sector, shape) -> np.ndarray:
    full = np.zeros(shape, dtype=bool)
    y0, y1, x0, x1 = sector.box
    full[y0:y1, x0:x1] = sector.mask_HW
    return full


@pytest.fixture(scope="module")
def example_clip():
    return read_dicom(EXAMPLE)[0]


def test_example_sector_drops_every_burned_in_pixel(example_clip):
    frames = example_clip.frames_THW
    text = _static_bright(frames)
    assert text.sum() > 500  # the example does carry burned-in text (labels, scale, menu bar)
    sector = find_sector(frames, example_clip.regions)
    kept = _kept_full(sector, frames.shape[1:])
    assert sector.source == "pixels"  # its region box belongs to a 640x480 original: ignored
    assert not (kept & text).any()
    moving = frames.astype(np.float32).std(axis=0) > 8  # clearly moving tissue
    assert (kept & moving).sum() > 0.97 * moving.sum()  # ...is kept


def test_example_ingests_to_a_grey_clip_with_text_masked(example_clip):
    import pydicom

    clip = preprocess_dicom(EXAMPLE)
    assert clip.study_uid == pydicom.dcmread(EXAMPLE).StudyInstanceUID  # for predict's grouping
    assert clip.frames_THW.shape == (30, 144, 144) and clip.frames_THW.dtype == np.uint8
    assert clip.fps == 30.0 and clip.orig_fps == pytest.approx(30.0, rel=1e-3)
    assert clip.orig_n_frames == 30
    # No burned-in text survives: no perfectly still, bright pixel is left in the output...
    masked = _static_bright(clip.frames_THW, level=20, still=0.5).sum()
    # ...whereas the same geometry without masking keeps the text.
    square, _ = pad_to_square(example_clip.frames_THW)
    naive = resize_frames(square, 144)
    assert _static_bright(naive, level=20, still=0.5).sum() > 300
    assert masked == 0, masked
    # The tissue is there: the clip is far from blank and moves.
    assert clip.frames_THW.mean() > 5 and clip.frames_THW.astype(float).std(axis=0).mean() > 3

    # Stored as grey: decoding the VP9 to RGB gives R == G == B (no green tint).
    import io

    import av

    data = encode_webm(clip.frames_THW, clip.fps)
    with av.open(io.BytesIO(data)) as container:
        rgb = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    spread = rgb.max(axis=-1).astype(int) - rgb.min(axis=-1)
    assert rgb.shape == (30, 144, 144, 3) and spread.max() <= 2
    luma, fps = decode_webm(data)
    assert fps == pytest.approx(30.0) and np.abs(luma.astype(int) - clip.frames_THW).mean() < 1.5


def test_vp9_keeps_the_full_grey_range():
    """Grey is stored as limited-range luma, so decoders give back 0..255 including the dark and
    bright levels (stored as is, every decoder clipped them to what 16 and 235 map to)."""
    import io

    import av

    levels = [0, 5, 10, 40, 128, 225, 250, 255]
    frames = np.broadcast_to(np.repeat(np.array(levels, np.uint8), 8), (6, 16, 64)).copy()
    data = encode_webm(frames, 30.0)
    assert encode_webm(frames, 30.0) == data  # deterministic

    def band_means(x):  # the middle of each 8-pixel band, away from the edges
        return np.array([x[:, :, 8 * k + 2 : 8 * k + 6].mean() for k in range(len(levels))])

    decoded, _ = decode_webm(data)
    np.testing.assert_allclose(band_means(decoded), levels, atol=1.0)
    with av.open(io.BytesIO(data)) as container:  # FFmpeg's own conversion agrees
        stream = container.streams.video[0]
        assert stream.codec_context.color_range == av.video.reformatter.ColorRange.MPEG
        rgb = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    np.testing.assert_allclose(band_means(rgb[..., 1]), levels, atol=1.5)


def test_phantom_sector_masks_text_marker_and_ecg():
    clip = small_clip(24, 72, 96, seed=5)
    frames = clip.frames
    sector = find_sector(frames)
    kept = _kept_full(sector, frames.shape[1:])
    text = _static_bright(frames)
    assert clip.text.sum() > 50 and text[clip.text].all() and text[clip.marker].all()
    assert not (kept & text).any()  # neither the text in the corner nor the marker in the fan
    assert not (kept & clip.ecg.any(axis=0)).any()  # the moving ECG trace below the fan
    moving = clip.sector & (frames.astype(np.float32).std(axis=0) > 8)  # clearly moving tissue
    # ...is kept: the fan. Overlays are blanked as word boxes with a 2-pixel margin, and still
    # pixels down to grey 16 count as overlay (dim text), so this quiet phantom loses ~12 %.
    assert kept[moving].mean() > 0.85 and kept[clip.sector].mean() > 0.8


def test_colour_ecg_touching_the_fan_is_neither_sector_nor_doppler(tmp_path):
    clip = small_clip(20, 72, 96, seed=7, ecg_gap=0)
    ecg = clip.ecg
    assert (ndimage.binary_dilation(clip.sector) & ecg.any(axis=0)).any()  # the trace touches the fan
    rgb = grey_to_rgb(clip.frames)
    rgb[ecg] = (40, 220, 90)  # a green ECG trace, as colour machines draw it
    write_us_dicom(tmp_path / "ecg.dcm", rgb, photometric="RGB")
    clip, _ = read_dicom(tmp_path / "ecg.dcm")
    coloured = clip.chroma_HW > 40
    sector = find_sector(clip.frames_THW, exclude_HW=coloured)
    kept = _kept_full(sector, clip.frames_THW.shape[1:])
    assert not (kept & ecg.any(axis=0)).any()
    assert preprocess_dicom(tmp_path / "ecg.dcm").frames_THW.shape == (20, 144, 144)


def test_region_sequence_crops_and_gives_spacing(tmp_path):
    frames = small_clip(20, 72, 96, seed=2).frames
    region = {"x0": 20, "y0": 2, "x1": 75, "y1": 65, "delta_cm": 0.05}
    path = tmp_path / "r.dcm"
    write_us_dicom(path, frames, regions=[region])
    clip, _ = read_dicom(path)
    sector = find_sector(clip.frames_THW, clip.regions)
    y0, y1, x0, x1 = sector.box
    assert sector.source == "region+pixels"
    assert 2 <= y0 and y1 <= 66 and 20 <= x0 and x1 <= 76
    assert sector.spacing_mm == pytest.approx((0.5, 0.5))
    prepared = preprocess_dicom(path, PreprocessConfig(size=32))
    side = max(y1 - y0, x1 - x0)
    assert prepared.pixel_spacing_mm == pytest.approx((0.5 * side / 32, 0.5 * side / 32))

    # A region that does not fit the image (a downscaled export) is ignored, not clipped.
    write_us_dicom(path, frames, regions=[{"x0": 20, "y0": 2, "x1": 190, "y1": 140}])
    clip, _ = read_dicom(path)
    assert find_sector(clip.frames_THW, clip.regions).source == "pixels"


def test_static_clip_has_no_sector_and_is_rejected():
    frames = np.repeat(small_clip(2, 48, 64, seed=1).frames[:1], 16, axis=0)
    with pytest.raises(RejectedInput) as info:
        find_sector(frames, config=SectorConfig())
    assert info.value.reason == "no_sector"


def test_convex_hull_fills_a_ring():
    yy, xx = np.mgrid[0:50, 0:50]
    ring = np.abs(np.hypot(yy - 25, xx - 25) - 15) < 1.5
    hull = convex_hull_mask(ring)
    assert hull[25, 25] and hull[15:35, 15:35].all() and not hull[2, 2] and not hull[25, 45]


def test_colour_doppler_is_rejected_but_colour_outside_the_sector_is_not(tmp_path):
    frames = small_clip(20, 72, 96, seed=4).frames
    rgb = grey_to_rgb(frames)
    doppler = add_colour_doppler(rgb, (25, 45, 38, 58))
    write_us_dicom(tmp_path / "cd.dcm", doppler, photometric="RGB")
    with pytest.raises(RejectedInput) as info:
        preprocess_dicom(tmp_path / "cd.dcm")
    assert info.value.reason == "colour_doppler"

    logo = rgb.copy()
    logo[:, 60:70, 2:12] = (240, 200, 0)  # a static coloured logo in a corner
    write_us_dicom(tmp_path / "logo.dcm", logo, photometric="RGB")
    assert preprocess_dicom(tmp_path / "logo.dcm").frames_THW.shape == (20, 144, 144)


def test_resample_indices():
    assert resample_indices(60, 60.0, 30.0, 128).tolist() == list(range(0, 60, 2))
    assert resample_indices(10, 30.0, 30.0, 128).tolist() == list(range(10))
    assert resample_indices(10, None, 30.0, 128).tolist() == list(range(10))  # unknown: as is
    up = resample_indices(25, 25.0, 30.0, 128)
    assert len(up) == 30 and up[0] == 0 and up[-1] == 24 and np.all(np.diff(up) >= 0)
    assert len(resample_indices(300, 30.0, 30.0, 128)) == 128


def test_preprocess_resamples_and_caps(tmp_path):
    frames = small_clip(40, 48, 64, seed=6).frames
    write_us_dicom(tmp_path / "a.dcm", frames, fps=60.0)
    clip = preprocess_dicom(tmp_path / "a.dcm", PreprocessConfig(max_frames=16, size=64))
    assert clip.frames_THW.shape == (16, 64, 64)
    assert clip.orig_fps == pytest.approx(60.0, rel=1e-3) and clip.orig_n_frames == 40
    mean, std, n = clip.pixel_stats()
    assert n == 16 * 64 * 64 and 0 < mean < 255 and std > 0


def test_pad_and_resize():
    frames = np.full((2, 10, 20), 200, dtype=np.uint8)
    square, side = pad_to_square(frames)
    assert side == 20 and square.shape == (2, 20, 20)
    assert square[:, :5].max() == 0 and square[:, 5:15].min() == 200 and square[:, 15:].max() == 0
    out = resize_frames(square, 10)
    assert out.shape == (2, 10, 10) and out[:, 4:6].min() > 150 and out[:, 0].max() < 60
