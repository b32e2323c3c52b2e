"""Reading DICOM to grey clips: every transfer syntax and colour space, and every refusal."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import convert_color_space, pixel_array
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from echocmr.ingest.config import ReadConfig
from echocmr.ingest.dicom_geometry import frame_rate
from echocmr.ingest.dicom_header import check_cine, identity, load_dataset
from echocmr.ingest.dicom_io import read_dicom
from echocmr.ingest.dicom_pixels import decode_grey
from echocmr.ingest.reasons import RejectedInput
from echocmr.ingest.synth.small import small_clip

from _ingest_fixtures import (
    grey_to_rgb,
    write_non_image,
    write_us_dicom,
)

PYDICOM_FILES = os.path.dirname(get_testdata_file("CT_small.dcm"))


def _bundled(name: str) -> str:
    """A test file that ships inside the pydicom wheel (never downloaded)."""
    path = os.path.join(PYDICOM_FILES, name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not bundled with this pydicom")
    return path


def _luma(rgb: np.ndarray) -> np.ndarray:
    return np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)


@pytest.fixture(scope="module")
def grey():
    return small_clip(16, 48, 64, seed=3).frames


# (photometric, syntax, how pixels are stored, max abs error vs the grey truth)
CASES = {
    "mono2-explicit-le": ("MONOCHROME2", ExplicitVRLittleEndian, "grey", 0),
    "mono2-implicit-le": ("MONOCHROME2", ImplicitVRLittleEndian, "grey", 0),
    "mono2-12bit-big-endian": ("MONOCHROME2", ExplicitVRBigEndian, "grey12", 0),
    "mono1-inverted": ("MONOCHROME1", ExplicitVRLittleEndian, "inverted", 0),
    "rgb-native": ("RGB", ExplicitVRLittleEndian, "rgb", 0),
    "ybr-full-native": ("YBR_FULL", ExplicitVRLittleEndian, "ybr", 0),
    "ybr-full-422-native": ("YBR_FULL_422", ExplicitVRLittleEndian, "ybr", 0),
    "palette": ("PALETTE COLOR", ExplicitVRLittleEndian, "palette", 1),
    "rle-mono": ("MONOCHROME2", RLELossless, "grey", 0),
    "rle-rgb": ("RGB", RLELossless, "rgb", 0),
    "jpeg-ls": ("MONOCHROME2", JPEGLSLossless, "grey", 0),
    "jpeg-2000-mono": ("MONOCHROME2", JPEG2000Lossless, "grey", 0),
    "jpeg-2000-rgb": ("RGB", JPEG2000Lossless, "rgb", 0),
    "jpeg-lossless": ("MONOCHROME2", JPEGLosslessSV1, "grey", 0),
    "jpeg-baseline-mono": ("MONOCHROME2", JPEGBaseline8Bit, "grey", 10),
    "jpeg-baseline-ybr": ("YBR_FULL_422", JPEGBaseline8Bit, "rgb", 10),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_syntax_and_colour_space_decodes_to_the_grey_truth(tmp_path, grey, case):
    photometric, syntax, stored, tolerance = CASES[case]
    kwargs = {}
    if stored == "grey":
        pixels = grey
    elif stored == "grey12":
        pixels, kwargs = grey.astype(np.uint16) * 16, {"bits": 12}
    elif stored == "inverted":
        pixels = 255 - grey
    elif stored == "rgb":
        pixels = grey_to_rgb(grey)
    elif stored == "ybr":
        pixels = convert_color_space(grey_to_rgb(grey), "RGB", "YBR_FULL")
    elif stored == "palette":  # indices through a LUT that maps i -> (255 - i) in every channel
        pixels = 255 - grey
        kwargs = {"palette": np.stack([255 - np.arange(256)] * 3, axis=1)}
    path = tmp_path / f"{case}.dcm"
    write_us_dicom(path, pixels, photometric=photometric, syntax=syntax, **kwargs)
    clip, ident = read_dicom(path)
    assert clip.frames_THW.dtype == np.uint8 and clip.frames_THW.shape == grey.shape
    err = np.abs(clip.frames_THW.astype(int) - grey)
    assert err.max() <= tolerance, (case, err.max())
    if tolerance:
        assert err.mean() < 1.5
    assert clip.fps == pytest.approx(30.0, rel=1e-3)
    assert ident is not None and ident.patient_id == "PID-0001"


def test_jpeg_whose_decoder_returns_rgb_is_taken_as_rgb(tmp_path, grey):
    """A 'YBR_FULL_422' header over an RGB codestream (Adobe marker, R/G/B component IDs):
    pydicom reports RGB, and we must compute luma rather than take the first plane (R)."""
    rgb = grey_to_rgb(grey)
    rgb[:, 10:20, 10:30] = (0, 200, 0)  # pure green: luma 117, R = 0
    truth = grey.astype(int)
    truth[:, 10:20, 10:30] = 117
    for keep_rgb in (True, False):
        path = tmp_path / f"rgb{keep_rgb}.dcm"
        write_us_dicom(path, rgb, photometric="YBR_FULL_422", syntax=JPEGBaseline8Bit,
                       keep_rgb_jpeg=keep_rgb)
        frames, chroma, decoded_as = decode_grey(load_dataset(path))
        assert decoded_as == ("RGB" if keep_rgb else "YBR_FULL_422")
        patch = np.abs(frames[:, 10:20, 10:30].astype(int) - 117)
        assert patch.max() <= 12 and patch.mean() < 3  # the R plane alone would read 0
        assert np.abs(frames.astype(int) - truth).mean() < 1.5
        assert chroma is not None and chroma[12, 15] > 60


def test_pydicom_ultrasound_example_is_grey_luma_not_green():
    path = get_testdata_file("examples_ybr_color.dcm")
    clip, _ = read_dicom(path)
    assert clip.frames_THW.shape == (30, 240, 320)
    assert clip.photometric in ("YBR_FULL_422", "YBR_FULL")
    assert clip.fps == pytest.approx(30.0, rel=1e-3)
    # The reference: pydicom's own YCbCr -> RGB conversion, then BT.601 luma.
    ref = _luma(pixel_array(path).astype(np.float64))
    assert np.abs(clip.frames_THW - ref).mean() < 1.0
    # The wrong colour path (YCbCr bytes taken as RGB) gives a very different, green-tinted grey.
    wrong = _luma(pixel_array(path, raw=True).astype(np.float64))
    assert np.abs(wrong - ref).mean() > 50
    assert clip.chroma_HW is not None and clip.chroma_HW.max() < 40  # no colour flow
    assert clip.regions and clip.regions[0].delta_x_mm == pytest.approx(0.5105, rel=1e-3)


@pytest.mark.parametrize("name", [
    "JPEG-lossy.dcm",  # JPEG extended, 12-bit
    "JPGExtended.dcm",
    "SC_jpeg_no_color_transform.dcm",  # JPEG baseline holding RGB
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_rle.dcm",
    "MR_small_bigendian.dcm",
    "SC_rgb_dcmtk_+eb+cy+n2.dcm",
    "examples_palette.dcm",
    "examples_jpeg2k.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
])
def test_bundled_pydicom_files_decode_like_pydicom(name):
    """Real files of many writers: our grey equals luma of pydicom's default (RGB) decode."""
    ds = pydicom.dcmread(_bundled(name))
    try:
        ref = ds.pixel_array
    except RuntimeError:  # JPEG-lossy.dcm: a corrupt codestream no installed plugin decodes
        with pytest.raises(RejectedInput, match="decode_failed"):
            decode_grey(ds)
        return
    frames, _, _ = decode_grey(ds)
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        ref = apply_color_lut(ref, ds)
        ref = ref >> 8 if ref.max() > 255 else ref
    if ref.ndim == frames.ndim + 1 or (ref.ndim == 3 and ref.shape[-1] == 3 and frames.shape[0] == 1):
        ref = _luma(ref.astype(np.float64))
    ref = ref.reshape(frames.shape).astype(np.float64)
    if ds.get("BitsStored", 8) > 8 and ds.SamplesPerPixel == 1:
        # Deep grey goes through its VOI window (as a viewer shows it), then to 8 bits.
        if "WindowCenter" in ds:
            from pydicom.pixels import apply_voi_lut

            ref = apply_voi_lut(ds.pixel_array, ds).reshape(frames.shape)
        assert np.corrcoef(frames.ravel(), ref.ravel())[0, 1] > 0.97  # 8-bit quantisation
    else:
        assert np.abs(frames - ref).mean() < 1.5, name


# -- refusals ---------------------------------------------------------------------------------


def _reason(path, config=None) -> str:
    with pytest.raises(RejectedInput) as info:
        clip_ds = load_dataset(path)
        check_cine(clip_ds, config or ReadConfig())
        decode_grey(clip_ds)
    assert info.value.detail
    return info.value.reason


def test_random_bytes_and_empty_files_are_not_dicom(tmp_path):
    (tmp_path / "random.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert _reason(tmp_path / "random.dcm") == "not_dicom"
    assert _reason(tmp_path / "empty.dcm") == "not_dicom"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless])
@pytest.mark.parametrize("fraction", [0.3, 0.7, 0.98])
def test_truncated_files_are_rejected_as_truncated(tmp_path, grey, syntax, fraction):
    good = tmp_path / "good.dcm"
    write_us_dicom(good, grey, syntax=syntax)
    data = good.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: int(len(data) * fraction)])
    assert _reason(cut) == "truncated"


def test_truncated_pydicom_example_is_rejected(tmp_path):
    data = open(get_testdata_file("examples_ybr_color.dcm"), "rb").read()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    assert _reason(cut) == "truncated"


def test_non_image_objects_and_missing_pixels(tmp_path):
    write_non_image(tmp_path / "sr.dcm", "sr")
    write_non_image(tmp_path / "pdf.dcm", "pdf")
    write_non_image(tmp_path / "nopix.dcm", "no_pixels")
    assert _reason(tmp_path / "sr.dcm") == "not_image"
    assert _reason(tmp_path / "pdf.dcm") == "not_image"
    assert _reason(tmp_path / "nopix.dcm") == "no_pixel_data"
    assert _reason(get_testdata_file("test-SR.dcm")) == "not_image"


def test_other_modality_single_frame_and_short_clips(tmp_path, grey):
    assert _reason(get_testdata_file("CT_small.dcm")) == "other_modality"
    write_us_dicom(tmp_path / "mr.dcm", grey, modality="MR")
    assert _reason(tmp_path / "mr.dcm") == "other_modality"
    write_us_dicom(tmp_path / "one.dcm", grey[:1])
    assert _reason(tmp_path / "one.dcm") == "single_frame"
    write_us_dicom(tmp_path / "short.dcm", grey[:8])
    assert _reason(tmp_path / "short.dcm") == "too_few_frames"
    load = load_dataset(tmp_path / "short.dcm")
    assert check_cine(load, ReadConfig(min_frames=8)) == 8


def test_pixel_data_that_will_not_decode(tmp_path, grey):
    path = tmp_path / "bad.dcm"
    write_us_dicom(path, grey, syntax=JPEGBaseline8Bit)
    ds = pydicom.dcmread(path)
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\xff\xd8garbage-not-a-jpeg" * 4 for _ in range(len(grey))])
    ds.save_as(path)
    assert _reason(path) == "decode_failed"


def test_identity_and_frame_rate(tmp_path, grey):
    path = tmp_path / "a.dcm"
    ident = write_us_dicom(path, grey, fps=25.0)
    ds = load_dataset(path)
    got = identity(ds)
    assert (got.patient_id, got.study_uid, got.sop_uid) == (ident.patient_id, ident.study_uid,
                                                            ident.sop_uid)
    assert got.study_date.isoformat() == "2023-05-10"
    assert frame_rate(ds) == pytest.approx(25.0, rel=1e-3)
    del ds.FrameTime
    ds.CineRate = 50
    assert frame_rate(ds) == 50.0
    del ds.CineRate
    assert frame_rate(ds) is None


def _jpeg_clip(path, n_frames: int = 20):
    """A YBR JPEG-baseline clip and its codestreams (one per frame)."""
    from pydicom.encaps import generate_frames

    frames = small_clip(n_frames, 96, 128, seed=5).frames
    write_us_dicom(path, grey_to_rgb(frames), photometric="YBR_FULL_422", syntax=JPEGBaseline8Bit)
    ds = pydicom.dcmread(path)
    return ds, [bytearray(f) for f in generate_frames(ds.PixelData, number_of_frames=n_frames)]


def _with_frames(ds, path, codestreams) -> None:
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([bytes(f) for f in codestreams])
    ds.save_as(path)


def _entropy_start(codestream: bytes) -> int:
    sos = codestream.find(b"\xff\xda")
    return sos + 2 + int.from_bytes(codestream[sos + 2:sos + 4], "big")


def test_every_jpeg_frame_is_decoded_strictly_not_only_the_sampled_ones(tmp_path):
    """libjpeg-turbo's strict mode sees damage in any frame, with the second decoder off."""
    from echocmr.ingest.colour import sample_frames
    from echocmr.ingest.jpeg import decode_jpeg_luma

    path = tmp_path / "clip.dcm"
    ds, codestreams = _jpeg_clip(path, n_frames=40)
    k = next(i for i in range(40) if i not in set(sample_frames(40, 4).tolist()))
    c = codestreams[k]
    # Overwrite the middle of the entropy-coded data: out-of-sync Huffman data / a marker hit early.
    mid = (_entropy_start(c) + len(c) - 2) // 2
    c[mid - 40:mid + 40] = bytes(80)
    _with_frames(ds, path, codestreams)
    damaged = pydicom.dcmread(path)
    with pytest.raises(RejectedInput) as info:
        decode_jpeg_luma(damaged, strict_frames=0)
    assert info.value.reason == "decode_failed"
    assert f"JPEG frame {k}:" in info.value.detail and "Corrupt JPEG data" in info.value.detail
    with pytest.raises(RejectedInput, match=f"JPEG frame {k}:"):
        decode_jpeg_luma(damaged, strict_frames=4)


def test_a_jpeg_warning_that_is_not_damage_does_not_reject_the_clip(tmp_path):
    """An unknown JFIF revision is a libjpeg warning, not damage to the pixels: the frame decodes
    to the same luma as the unmodified one."""
    from echocmr.ingest.jpeg import decode_jpeg_luma

    path = tmp_path / "clip.dcm"
    ds, codestreams = _jpeg_clip(path)
    reference, _, _ = decode_jpeg_luma(pydicom.dcmread(path))
    app0 = codestreams[3].find(b"JFIF\x00")
    if app0 < 0:  # the writer left out JFIF: add an APP0 segment with a revision libjpeg warns on
        segment = b"\xff\xe0\x00\x10JFIF\x00\x07\x01\x00\x00\x01\x00\x01\x00\x00"
        codestreams[3][2:2] = segment
    else:
        codestreams[3][app0 + 5] = 7  # major version 7
    import simplejpeg

    with pytest.raises(ValueError, match="JFIF"):
        simplejpeg.decode_jpeg(bytes(codestreams[3]), colorspace="GRAY", strict=True)
    _with_frames(ds, path, codestreams)
    luma, _, _ = decode_jpeg_luma(pydicom.dcmread(path))
    assert np.array_equal(luma, reference)


def test_the_jpeg_fast_path_gives_pillows_luma_exactly(tmp_path):
    """libjpeg-turbo's greyscale output is the Y plane Pillow's draft("L") gave before."""
    from io import BytesIO

    from PIL import Image

    from echocmr.ingest.jpeg import decode_jpeg_luma

    path = tmp_path / "clip.dcm"
    _, codestreams = _jpeg_clip(path)
    luma, _, photometric = decode_jpeg_luma(pydicom.dcmread(path))
    for i, c in enumerate(codestreams):
        with Image.open(BytesIO(bytes(c))) as image:
            image.draft("L", image.size)
            assert np.array_equal(luma[i], np.asarray(image))
    assert photometric.startswith("YBR")


# -- the general path's shortcuts give pydicom's default result exactly -----------------------


@pytest.mark.parametrize("name", [
    "MR_small_jpeg_ls_lossless.dcm",  # 16-bit lossless
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jls_lossy_line.dcm",  # RGB, line interleaved
    "SC_rgb_jls_lossy_sample.dcm",  # RGB, sample interleaved
])
def test_jpeg_ls_is_decoded_by_charls_to_what_pydicoms_default_order_gives(name, monkeypatch):
    """JPEG-LS goes to pyjpegls (CharLS, ~3.5x faster than pylibjpeg-libjpeg, which pydicom tries
    first); the grey frames must be those of pydicom's default plugin order, bit for bit."""
    from pydicom.pixels import get_decoder

    from echocmr.ingest import dicom_pixels

    ds = load_dataset(_bundled(name))
    reference = pydicom.dcmread(_bundled(name))
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    asked = []
    real = type(decoder).as_array

    def spy(self, src, **kwargs):
        asked.append(kwargs.get("decoding_plugin", ""))
        return real(self, src, **kwargs)

    monkeypatch.setattr(type(decoder), "as_array", spy)
    frames, chroma, photometric = decode_grey(ds)
    assert asked == ["pyjpegls"]
    arr, changes = real(decoder, reference, raw=True)  # pydicom's order: pylibjpeg first
    monkeypatch.setattr(dicom_pixels, "_as_array", lambda dec, d, ts: (arr, changes))
    expected, expected_chroma, expected_pi = decode_grey(reference)
    assert np.array_equal(frames, expected) and photometric == expected_pi
    assert (chroma is None and expected_chroma is None) or np.array_equal(chroma, expected_chroma)


def test_jpeg_ls_that_charls_refuses_gets_pydicoms_default_verdict(tmp_path, grey):
    """A frame CharLS cannot decode: the clip is decoded again in pydicom's default order, so the
    verdict and its detail are what they were before CharLS went first (both plugins named)."""
    path = tmp_path / "ls.dcm"
    write_us_dicom(path, grey, syntax=JPEGLSLossless)
    ds = pydicom.dcmread(path)
    from pydicom.encaps import encapsulate, generate_frames

    frames = [bytearray(f) for f in generate_frames(ds.PixelData, number_of_frames=len(grey))]
    sof = frames[5].find(b"\xff\xf7")
    frames[5][sof + 1] = 0x01  # the JPEG-LS frame header is gone: no decoder can read frame 5
    ds.PixelData = encapsulate([bytes(f) for f in frames])
    ds.save_as(path)
    with pytest.raises(RejectedInput) as info:
        decode_grey(load_dataset(path))
    assert info.value.reason == "decode_failed"
    assert "pylibjpeg:" in info.value.detail and "pyjpegls:" in info.value.detail
    assert info.value.detail.index("pylibjpeg:") < info.value.detail.index("pyjpegls:")


@pytest.mark.parametrize(("dtype", "bits", "signed"), [
    (np.uint16, 12, 0), (np.uint16, 16, 0), (np.int16, 16, 1), (np.int16, 12, 1),
    (np.int8, 8, 1), (np.uint32, 24, 0), (np.int32, 32, 1), (np.uint16, 32, 0),
])
def test_to_uint8_is_the_int64_shift_exactly(dtype, bits, signed):
    """Deep samples scale to 8 bits in int32 where that holds them; the result must be the int64
    arithmetic's: offset signed data by 2^(bits-1), shift right by bits - 8, clip to 0..255."""
    from pydicom.dataset import Dataset

    from echocmr.ingest.dicom_pixels import _to_uint8

    info = np.iinfo(dtype)
    rng = np.random.default_rng(bits)
    arr = rng.integers(info.min, info.max, size=(3, 17, 19), dtype=dtype, endpoint=True)
    arr.flat[:4] = [info.min, info.max, 0, -1 if signed else 1]
    ds = Dataset()
    ds.PixelRepresentation = signed
    wide = arr.astype(np.int64)
    if signed:
        wide += 1 << (bits - 1)
    expected = np.clip(wide >> (bits - 8), 0, 255).astype(np.uint8)
    assert np.array_equal(_to_uint8(arr, bits, ds), expected)


def test_pylibjpegs_read_pass_gives_its_full_decodes_verdict_on_damaged_frames(tmp_path):
    """Ingest runs only pylibjpeg-libjpeg's read pass (~10x cheaper than ``libjpeg.decode``);
    on damaged frames of every kind it must say what the full decode says, message included, and
    see some damage libjpeg-turbo's strict mode decodes silently (the reason it runs at all)."""
    import libjpeg
    import simplejpeg

    from echocmr.ingest.jpeg import _full_decode_problem, _strict_decode_problem

    _, codestreams = _jpeg_clip(tmp_path / "clip.dcm", n_frames=8)
    rng = np.random.default_rng(7)
    seen, only_second = 0, 0
    for trial in range(240):
        data = bytearray(codestreams[trial % len(codestreams)])
        start, kind = _entropy_start(data), trial % 4
        if kind == 0:  # a run of zeros or random bytes (no 0xFF) in the scan data
            n = int(rng.choice([4, 16, 40]))
            at = int(rng.integers(start, len(data) - 2 - n))
            data[at:at + n] = bytes(n) if trial % 8 else \
                rng.integers(0, 255, n, dtype=np.uint8).tobytes().replace(b"\xff", b"\x00")
        elif kind == 1:  # one bit flipped anywhere
            at = int(rng.integers(2, len(data) - 2))
            data[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == 2:  # a header byte changed
            data[int(rng.integers(2, start))] = int(rng.integers(0, 256))
        else:  # cut short, then an EOI
            data = data[:int(rng.integers(start, len(data) - 4))] + b"\xff\xd9"
        data = bytes(data)
        full = _full_decode_problem(libjpeg, data)
        assert _strict_decode_problem(data) == full, (trial, full)
        if full is not None:
            seen += 1
            try:
                simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True)
                only_second += 1
            except ValueError:
                pass
    assert seen >= 30 and only_second >= 1, (seen, only_second)
    assert _strict_decode_problem(bytes(codestreams[0])) is None
