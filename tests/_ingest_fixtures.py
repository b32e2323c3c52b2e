"""Small, real DICOM files for the ingest tests, made in the test (no downloads).

`phantom` draws a tiny echo-like clip: a fan-shaped sector of flickering speckle with a pulsing
bright ring inside, static burned-in text in a corner, a static marker dot inside the sector and a
thin moving "ECG" trace below it. `write_us_dicom` stores frames as an ultrasound multi-frame
object in any transfer syntax / photometric interpretation the tests need; `write_cohort` lays out
a small hospital-style export (patient-named folders) plus a CMR table, with every PHI string
recorded so a test can search the outputs for them.

JPEG baseline is written with Pillow; JPEG lossless (process 14, first-order prediction) with the
tiny encoder `jpeg_lossless_encode` below, because no installed library writes it; RLE, JPEG-LS
and JPEG 2000 through pydicom's own encoders.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from echocmr.shards.format import INGEST_REPORT_FILE

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.11"
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"
TEXT_BOX = (2, 10, 3, 43)  # rows, cols of the burned-in text in `phantom` frames


def phantom(n_frames: int = 20, height: int = 72, width: int = 96, *, seed: int = 0,
            text: bool = True, ecg_gap: int = 8, ecg_mask: np.ndarray | None = None) -> np.ndarray:
    """An echo-like grey clip ``uint8[T, H, W]`` (see the module docstring).

    ``ecg_gap`` is the distance between the fan and the ECG trace; pass a bool array of the
    clip's shape as ``ecg_mask`` to get the trace's pixels marked in it.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    apex_x, apex_y = width / 2, 4.0
    radius = np.hypot(xx - apex_x, yy - apex_y)
    angle = np.arctan2(xx - apex_x, yy - apex_y)
    fan = (radius < height - 6 - ecg_gap) & (np.abs(angle) < np.deg2rad(38)) & (radius > 3)
    cy, cx = height * 0.5, apex_x
    frames = np.zeros((n_frames, height, width), dtype=np.uint8)
    for t in range(n_frames):
        speckle = rng.gamma(2.0, 18.0, size=(height, width))
        ring_r = height * (0.2 + 0.05 * np.sin(2 * np.pi * t / 10))
        ring = np.abs(np.hypot(xx - cx, (yy - cy) * 1.3) - ring_r) < 2.5
        img = np.where(ring, 150 + speckle * 0.5, speckle)
        img = np.where(fan, img, 0)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
        # a thin moving ECG trace along the bottom, outside the sector
        ecg_x = np.arange(width)
        ecg_y = (height - 4 + np.round(1.5 * np.sin(ecg_x / 4 + t))).astype(int)
        frames[t, ecg_y, ecg_x] = 200
        if ecg_mask is not None:
            ecg_mask[t, ecg_y, ecg_x] = True
    if text:
        r0, r1, c0, c1 = TEXT_BOX
        glyphs = np.random.default_rng(1234).random((r1 - r0, c1 - c0)) < 0.45
        frames[:, r0:r1, c0:c1][:, glyphs] = 230
        frames[:, 14:17, int(apex_x) + 2:int(apex_x) + 5] = 240  # a static marker in the sector
    return frames


def grey_to_rgb(frames_THW: np.ndarray) -> np.ndarray:
    return np.repeat(frames_THW[..., None], 3, axis=-1)


def add_colour_doppler(rgb_THWC: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Paint red/blue flow into ``box`` (rows, cols) of every other frame."""
    out = rgb_THWC.copy()
    r0, r1, c0, c1 = box
    for t in range(0, len(out), 2):
        out[t, r0:r1, c0:(c0 + c1) // 2] = (220, 30, 20)
        out[t, r0:r1, (c0 + c1) // 2:c1] = (20, 40, 230)
    return out


@dataclass
class Identity:
    """The PHI of one test file (so tests can search outputs for every string)."""

    patient_id: str = "PID-0001"
    patient_name: str = "DOE^JANE"
    birth_date: str = "19610203"
    accession: str = "ACC-778899"
    institution: str = "ST ELSEWHERE HOSPITAL"
    study_date: str = "20230510"
    study_uid: str = field(default_factory=generate_uid)
    sop_uid: str = field(default_factory=generate_uid)

    def phi_strings(self) -> list[str]:
        return [self.patient_id, self.patient_name, self.patient_name.replace("^", " "),
                self.birth_date, self.accession, self.institution, self.study_date]


def base_dataset(ident: Identity, *, modality: str = "US", sop_class: str = US_MULTIFRAME,
                 fps: float | None = 30.0) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ident.sop_uid
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ident.sop_uid
    ds.StudyInstanceUID = ident.study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = ident.patient_id
    ds.PatientName = ident.patient_name
    ds.PatientBirthDate = ident.birth_date
    ds.AccessionNumber = ident.accession
    ds.InstitutionName = ident.institution
    ds.StudyDate = ident.study_date
    ds.SeriesDate = ident.study_date
    ds.Manufacturer = "TestVendor"
    if fps:
        ds.FrameTime = f"{1000.0 / fps:.3f}"
    return ds


def write_us_dicom(path, pixels: np.ndarray, *, ident: Identity | None = None,
                   photometric: str = "MONOCHROME2", syntax=ExplicitVRLittleEndian,
                   fps: float | None = 30.0, regions: list[dict] | None = None,
                   modality: str = "US", bits: int = 8, keep_rgb_jpeg: bool = False,
                   palette: np.ndarray | None = None) -> Identity:
    """Write ``pixels`` ([T,H,W] or [T,H,W,3]) as a US multi-frame file; returns its identity.

    ``pixels`` are given in the stored colour space: grey for MONOCHROME*, palette indices for
    PALETTE COLOR, RGB for RGB, YCbCr for YBR_FULL (YBR_FULL_422: give YCbCr, it is subsampled
    for native syntaxes; for JPEG baseline give RGB, Pillow converts).
    """
    ident = ident or Identity()
    ds = base_dataset(ident, modality=modality, fps=fps)
    n, h, w = pixels.shape[:3]
    samples = 3 if pixels.ndim == 4 else 1
    ds.NumberOfFrames = n
    ds.Rows, ds.Columns = h, w
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    if palette is not None:
        _set_palette(ds, palette)
    if regions:
        ds.SequenceOfUltrasoundRegions = [_region(**r) for r in regions]
    dtype = np.uint16 if bits > 8 else np.uint8
    arr = np.ascontiguousarray(pixels.astype(dtype))

    if syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian):
        ds.file_meta.TransferSyntaxUID = syntax
        data = arr
        if photometric == "YBR_FULL_422":
            data = _subsample_422(arr)
        if syntax == ExplicitVRBigEndian and arr.dtype.itemsize > 1:
            data = data.byteswap()
        ds.PixelData = data.tobytes()
        ds["PixelData"].VR = "OW" if bits > 8 else "OB"
        little = syntax != ExplicitVRBigEndian
        ds.save_as(path, enforce_file_format=True, little_endian=little,
                   implicit_vr=syntax == ImplicitVRLittleEndian)
        return ident
    if syntax == JPEGBaseline8Bit:
        frames = [_pillow_jpeg(f, keep_rgb=keep_rgb_jpeg) for f in arr]
    elif syntax == JPEGLosslessSV1:
        frames = [jpeg_lossless_encode(f) for f in arr]
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        plugin = {RLELossless: "", JPEGLSLossless: "pyjpegls", JPEG2000Lossless: "pylibjpeg"}[syntax]
        ds.compress(syntax, arr, encoding_plugin=plugin, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
        return ident
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return ident


def _subsample_422(ybr: np.ndarray) -> np.ndarray:
    """Native YBR_FULL_422 byte order: Y1 Y2 Cb Cr for each horizontal pixel pair."""
    t, h, w, _ = ybr.shape
    pairs = ybr.reshape(t, h, w // 2, 2, 3)
    out = np.empty((t, h, w // 2, 4), dtype=ybr.dtype)
    out[..., 0] = pairs[..., 0, 0]
    out[..., 1] = pairs[..., 1, 0]
    out[..., 2] = pairs[..., 0, 1]
    out[..., 3] = pairs[..., 0, 2]
    return out


def _pillow_jpeg(frame: np.ndarray, *, keep_rgb: bool) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    image = Image.fromarray(frame)
    if frame.ndim == 3:
        image.save(buf, format="JPEG", quality=95, subsampling=0 if keep_rgb else 1, keep_rgb=keep_rgb)
    else:
        image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _set_palette(ds: Dataset, lut_N3: np.ndarray) -> None:
    n = len(lut_N3)
    for i, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [n, 0, 8])
        data = lut_N3[:, i].astype("<u2").tobytes()
        setattr(ds, f"{colour}PaletteColorLookupTableData", data)
        ds[f"{colour}PaletteColorLookupTableData"].VR = "OW"


def _region(x0: int, y0: int, x1: int, y1: int, delta_cm: float = 0.03, spatial_format: int = 1,
            data_type: int = 1) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat = spatial_format
    item.RegionDataType = data_type
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3
    item.PhysicalDeltaX = item.PhysicalDeltaY = delta_cm
    return item


def write_non_image(path, kind: str, ident: Identity | None = None) -> Identity:
    """A structured report (``"sr"``), an encapsulated PDF (``"pdf"``) or a US object without
    pixel data (``"no_pixels"``)."""
    ident = ident or Identity()
    if kind == "sr":
        ds = base_dataset(ident, modality="SR", sop_class=SR_CLASS, fps=None)
        ds.ValueType = "CONTAINER"
        ds.ContinuityOfContent = "SEPARATE"
    elif kind == "pdf":
        ds = base_dataset(ident, modality="DOC", sop_class=PDF_CLASS, fps=None)
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = b"%PDF-1.4\n%fake\n"
    elif kind == "no_pixels":
        ds = base_dataset(ident)
        ds.NumberOfFrames = 20
        ds.Rows, ds.Columns = 64, 64
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
    else:
        raise ValueError(kind)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return ident


# -- a JPEG lossless (process 14, selection value 1) encoder, for 8-bit grey frames ----------

_DC_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]  # codes of lengths 1..16
_DC_VALS = list(range(12))


def _huffman_codes() -> dict[int, tuple[int, int]]:
    codes, code, k = {}, 0, 0
    for length, count in enumerate(_DC_BITS, start=1):
        for _ in range(count):
            codes[_DC_VALS[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


def jpeg_lossless_encode(frame_HW: np.ndarray) -> bytes:
    """Encode a uint8 grey frame as a lossless JPEG (SOF3, predictor 1, Pt 0)."""
    h, w = frame_HW.shape
    x = frame_HW.astype(np.int32)
    pred = np.empty_like(x)
    pred[0, 0] = 128
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    diffs = (x - pred).ravel()
    codes = _huffman_codes()
    acc, n_bits, out = 0, 0, bytearray()
    for d in diffs.tolist():
        mag = abs(d)
        cat = mag.bit_length()
        code, length = codes[cat]
        acc = (acc << length) | code
        n_bits += length
        if cat:
            extra = d if d > 0 else d + (1 << cat) - 1
            acc = (acc << cat) | extra
            n_bits += cat
        while n_bits >= 8:
            n_bits -= 8
            byte = (acc >> n_bits) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0)
        acc &= (1 << n_bits) - 1
    if n_bits:
        byte = ((acc << (8 - n_bits)) | ((1 << (8 - n_bits)) - 1)) & 0xFF
        out.append(byte)
        if byte == 0xFF:
            out.append(0)

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    sof = bytes([8]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    dht = bytes([0x00]) + bytes(_DC_BITS) + bytes(_DC_VALS)
    sos = bytes([1, 1, 0x00, 1, 0, 0])
    return (b"\xff\xd8" + segment(0xC3, sof) + segment(0xC4, dht) + segment(0xDA, sos)
            + bytes(out) + b"\xff\xd9")


# -- a small hospital-style export -------------------------------------------------------------


@dataclass
class Cohort:
    """What `write_cohort` made."""

    dicom_dir: str
    labels_path: str
    expected: dict[str, str | None]  # source -> None (kept) or the rejection reason
    phi: list[str]
    patients: dict[str, str]  # patient ID -> folder name


def write_cohort(root, *, n_patients: int = 4, clips_per_study: int = 2, n_frames: int = 18,
                 bad_files: bool = True, seed: int = 0, shape: tuple[int, int] = (72, 96)) -> Cohort:
    """Patients with one echo study each (paired with a CMR), plus deliberately bad files."""
    root = str(root)
    dicom_dir = os.path.join(root, "dicom")
    rows, expected, phi, patients = [], {}, [], {}
    base_date = date(2022, 3, 1)
    for p in range(n_patients):
        pid = f"MRN{7300 + p:05d}"
        name = f"SMITH{chr(65 + p)}^JOHN{chr(75 + p)}"
        folder = f"{name.replace('^', '_')}_{pid}"
        echo_date = base_date + timedelta(days=11 * p)
        study_uid = generate_uid()
        for c in range(clips_per_study):
            ident = Identity(patient_id=pid, patient_name=name, birth_date=f"19{50 + p}0{1 + p % 9}15",
                             accession=f"ACCN{9100 + p}", institution=f"MERCY GENERAL {p}",
                             study_date=echo_date.strftime("%Y%m%d"), study_uid=study_uid)
            rel = f"{folder}/study1/clip{c}.dcm"
            os.makedirs(os.path.join(dicom_dir, os.path.dirname(rel)), exist_ok=True)
            frames = phantom(n_frames, *shape, seed=seed + 10 * p + c)
            write_us_dicom(os.path.join(dicom_dir, rel), frames, ident=ident)
            expected[rel] = None
            phi.extend(ident.phi_strings())
        phi.append(folder)
        patients[pid] = folder
        cmr_date = echo_date - timedelta(days=3)
        rows.append({"patient_id": pid, "cmr_id": f"CMR{p}", "cmr_date": cmr_date.isoformat(),
                     "field_strength_t": 1.5 if p % 2 else 3.0, "wma": float(p % 2),
                     "lge": np.nan if p == 0 else 0.0, "t1_native_ms": 1100.0 + p,
                     "t2_ms": np.nan, "ecv_pct": 28.0 + 2 * p})
    if bad_files:
        folder = patients[f"MRN{7300:05d}"]
        bad = os.path.join(dicom_dir, folder, "study1")
        good = os.path.join(bad, "clip0.dcm")
        data = open(good, "rb").read()
        with open(os.path.join(bad, "truncated.dcm"), "wb") as f:
            f.write(data[: len(data) * 2 // 3])
        expected[f"{folder}/study1/truncated.dcm"] = "truncated"
        with open(os.path.join(bad, "random.dcm"), "wb") as f:
            f.write(np.random.default_rng(seed).bytes(5000))
        expected[f"{folder}/study1/random.dcm"] = "not_dicom"
        ident = Identity(patient_id=f"MRN{7300:05d}", patient_name="SMITHA^JOHNK")
        write_non_image(os.path.join(bad, "nopixels.dcm"), "no_pixels", ident)
        expected[f"{folder}/study1/nopixels.dcm"] = "no_pixel_data"
        write_non_image(os.path.join(bad, "report.dcm"), "sr", ident)
        expected[f"{folder}/study1/report.dcm"] = "not_image"
        phi.extend(ident.phi_strings())
    labels_path = os.path.join(root, "cmr.csv")
    pd.DataFrame(rows).to_csv(labels_path, index=False)
    return Cohort(dicom_dir=dicom_dir, labels_path=labels_path, expected=expected,
                  phi=sorted(set(phi)), patients=patients)


def die_on_crash_files(source: str) -> None:
    """A worker hook for tests: the process dies (like a segfaulting decoder) on '*crash*'."""
    if "crash" in os.path.basename(source):
        os._exit(139)


# -- checking outputs --------------------------------------------------------------------------

SHIPPED_SUFFIXES = (".tar", ".idx", ".parquet", ".json")


def shipped_files(out: str) -> list[str]:
    """What leaves the site: everything in the set but the report (and no work cache)."""
    return sorted(n for n in os.listdir(out) if n.endswith(SHIPPED_SUFFIXES) and n != INGEST_REPORT_FILE)


def find_phi(out: str, phi: list[str]) -> list[tuple[str, str]]:
    """(file, string) for every PHI string found in the shipped outputs.

    Raw bytes of every file (tars and indexes are uncompressed; stats is JSON) and, because
    Parquet pages are compressed, every decoded cell of the manifest too.
    """
    hits = []
    needles = {s for s in phi if s} | {s.lower() for s in phi if s} | {s.upper() for s in phi if s}
    for name in shipped_files(out):
        data = open(os.path.join(out, name), "rb").read()
        text = [data]
        if name.endswith(".parquet"):
            table = pd.read_parquet(os.path.join(out, name))
            text.append(" ".join(map(str, table.columns)).encode())
            text.append(table.to_csv(index=False).encode())
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(out, name)) as tar:
                text.append(" ".join(tar.getnames()).encode())
        for needle in needles:
            if any(needle.encode() in blob for blob in text):
                hits.append((name, needle))
    return hits
