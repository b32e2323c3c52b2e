"""DICOM files as the fictional machines export them: headers, regions and pixel encodings.

Three layers, so the synthetic cohort and the tests write files the same way: `base_dataset` (the
header of a file), `write_pixels` (the image pixel module, the frames encoded for a transfer syntax,
the file saved) and `write_image` / `write_text_sr`, which compose them for a `Vendor`'s habits.
Tests that need a file no machine of the cohort writes (big endian, 12 bits, palette colour, JPEG
2000, ...) call the first two directly.

Frames are encoded one by one as the renderer yields them (JPEG baseline through Pillow, 4:2:2
chroma unless asked to keep RGB; RLE, JPEG-LS and JPEG 2000 through pydicom's encoders; JPEG
lossless through `jpeg_lossless`; or raw bytes) and compressed frames are encapsulated with a basic
offset table. Nothing here reads a clock: every date, time and UID comes from the caller, so the
same inputs give byte-identical files.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
)

from echocmr.ingest.synth.jpeg_lossless import jpeg_lossless_encode
from echocmr.ingest.synth.sector import SectorGeometry
from echocmr.ingest.synth.vendors import (
    BASIC_TEXT_SR_STORAGE,
    EXPLICIT_VR_LITTLE_ENDIAN,
    JPEG_BASELINE_8BIT,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
    US_IMAGE_STORAGE,
    US_MULTIFRAME_IMAGE_STORAGE,
    Vendor,
)

_FRAME_TIME = 0x00181063
_CINE_RATE = 0x00180040
_REGION_TISSUE = 1
_REGION_COLOUR_FLOW = 2
_NATIVE = (EXPLICIT_VR_LITTLE_ENDIAN, ImplicitVRLittleEndian, ExplicitVRBigEndian)
# Transfer syntaxes pydicom encodes, and the plugin that does it.
_PYDICOM_PLUGINS = {RLE_LOSSLESS: "pylibjpeg", JPEG_LS_LOSSLESS: "pyjpegls",
                    JPEG2000Lossless: "pylibjpeg"}
_ONE_SAMPLE = ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")


@dataclass(kw_only=True)
class DicomIdentity:
    """Who, when, where and which: the header values of one file."""

    patient_name: str  # DICOM PN, "LAST^FIRST"
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str
    study_uid: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    accession: str
    institution: str
    study_id: str
    series_uid: str
    series_number: int
    sop_uid: str
    instance_number: int
    heart_rate: int


def base_dataset(ident: DicomIdentity, *, sop_class: str, modality: str = "US",
                 transfer_syntax: str = EXPLICIT_VR_LITTLE_ENDIAN,
                 vendor: Vendor | None = None) -> Dataset:
    """The header of one file: patient, study, series and instance (and the machine, if given)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ident.sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ident.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ident.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ident.study_time
    ds.AccessionNumber = ident.accession
    ds.Modality = modality
    ds.InstitutionName = ident.institution
    ds.ReferringPhysicianName = "REFERRER^CARDIOLOGY"
    ds.StudyDescription = "Echocardiogram transthoracic"
    if vendor is not None:
        ds.Manufacturer = vendor.manufacturer
        ds.StationName = f"{vendor.key.upper()}01"
        ds.ManufacturerModelName = vendor.model
        serial = zlib.crc32(vendor.model.encode()) % 10**6
        ds.DeviceSerialNumber = f"{vendor.key[:2].upper()}{serial:06d}"
        ds.SoftwareVersions = vendor.software
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = ident.birth_date
    ds.PatientSex = ident.sex
    ds.StudyInstanceUID = ident.study_uid
    ds.SeriesInstanceUID = ident.series_uid
    ds.StudyID = ident.study_id
    ds.SeriesNumber = ident.series_number
    ds.InstanceNumber = ident.instance_number
    return ds


def region(box: tuple[int, int, int, int], cm_per_px: float, *, data_type: int = _REGION_TISSUE,
           spatial_format: int = 1, reference: tuple[int, int] | None = None) -> Dataset:
    """One item of the ultrasound region sequence: ``box`` is (min x, min y, max x, max y) in
    pixels, ``reference`` the pixel (relative to the box) at physical position (0, 0) cm."""
    item = Dataset()
    item.RegionSpatialFormat = spatial_format  # 1: 2D
    item.RegionDataType = data_type
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = box[0], box[1]
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = box[2], box[3]
    if reference is not None:
        item.ReferencePixelX0, item.ReferencePixelY0 = reference
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3  # cm
    if reference is not None:
        item.ReferencePixelPhysicalValueX = item.ReferencePixelPhysicalValueY = 0.0
    item.PhysicalDeltaX = item.PhysicalDeltaY = cm_per_px
    return item


def _regions(geometry: SectorGeometry, colour_flow: bool) -> Sequence:
    """The ultrasound region sequence: the fan's box and its pixel spacing (cm), tissue first."""
    min_x, min_y, _, _ = geometry.box
    reference = (geometry.apex_x - min_x, geometry.apex_y - min_y)
    items = [region(geometry.box, geometry.cm_per_px, reference=reference)]
    if colour_flow:
        items.append(region(geometry.box, geometry.cm_per_px, data_type=_REGION_COLOUR_FLOW,
                            reference=reference))
    return Sequence(items)


def set_image_pixel_module(ds: Dataset, *, rows: int, columns: int, photometric: str,
                           bits: int = 8) -> int:
    """Rows, columns, samples, photometric interpretation and bit depth; returns the samples."""
    samples = 1 if photometric in _ONE_SAMPLE else 3
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = (16 if bits > 8 else 8), bits, bits - 1
    ds.PixelRepresentation = 0
    return samples


def _subsample_422(ybr_HWC: np.ndarray) -> np.ndarray:
    """Native YBR_FULL_422 byte order: Y1 Y2 Cb Cr for each horizontal pixel pair."""
    h, w, _ = ybr_HWC.shape
    pairs = ybr_HWC.reshape(h, w // 2, 2, 3)
    return np.stack([pairs[..., 0, 0], pairs[..., 1, 0], pairs[..., 0, 1], pairs[..., 0, 2]],
                    axis=-1)


def _frame_encoder(ts: str, *, photometric: str, pixel_mode: str, rows: int, columns: int,
                   samples: int, bits: int, jpeg_quality: int,
                   jpeg_keep_rgb: bool) -> Callable[[np.ndarray], bytes]:
    """Frame (array in ``pixel_mode`` layout, stored colour space) -> its bytes for ``ts``."""
    if ts in _NATIVE:
        dtype = np.dtype(np.uint16 if bits > 8 else np.uint8)

        def encode_raw(frame: np.ndarray) -> bytes:
            data = np.ascontiguousarray(frame.astype(dtype, copy=False))
            if photometric == "YBR_FULL_422":
                data = _subsample_422(data)
            if ts == ExplicitVRBigEndian and dtype.itemsize > 1:
                data = data.byteswap()
            return data.tobytes()
        return encode_raw
    if ts == JPEG_BASELINE_8BIT:
        if (pixel_mode == "L") != (samples == 1) or pixel_mode not in ("L", "RGB", "YCbCr"):
            raise ValueError(f"JPEG baseline {photometric} cannot take {pixel_mode} frames")
        options = {} if samples == 1 else {"subsampling": 0 if jpeg_keep_rgb else 1,
                                           "keep_rgb": jpeg_keep_rgb}

        def encode_jpeg(frame: np.ndarray) -> bytes:
            buf = io.BytesIO()
            image = Image.frombuffer(pixel_mode, (frame.shape[1], frame.shape[0]),
                                     np.ascontiguousarray(frame), "raw", pixel_mode, 0, 1)
            # JPEG stores YCbCr (RGB input is converted); subsampling=1 is 4:2:2: YBR_FULL_422.
            image.save(buf, "JPEG", quality=jpeg_quality, **options)
            return buf.getvalue()
        return encode_jpeg
    if ts == JPEGLosslessSV1:
        if samples != 1 or bits != 8:
            raise ValueError("the JPEG lossless encoder takes 8-bit grey frames only")
        return jpeg_lossless_encode
    if ts in _PYDICOM_PLUGINS:
        encoder, plugin = get_encoder(ts), _PYDICOM_PLUGINS[ts]
        options = dict(rows=rows, columns=columns, bits_allocated=16 if bits > 8 else 8,
                       bits_stored=bits, pixel_representation=0, number_of_frames=1,
                       samples_per_pixel=samples, photometric_interpretation=photometric)
        if samples == 3:
            options["planar_configuration"] = 0

        def encode_pydicom(frame: np.ndarray) -> bytes:
            return encoder.encode(frame, encoding_plugin=plugin, **options)
        return encode_pydicom
    raise ValueError(f"no frame encoder for transfer syntax {ts}")


def write_pixels(
    path: Path | str,
    ds: Dataset,
    frames: Iterable[np.ndarray],
    *,
    n_frames: int,
    rows: int,
    columns: int,
    transfer_syntax: str,
    photometric: str,
    pixel_mode: str | None = None,
    bits: int = 8,
    palette: np.ndarray | None = None,
    jpeg_quality: int = 95,
    jpeg_keep_rgb: bool = False,
) -> None:
    """Give ``ds`` its image pixel module and ``frames`` encoded for ``transfer_syntax``; save it.

    ``frames`` are arrays in the stored colour space (grey for MONOCHROME*, palette indices with
    ``palette`` (uint8 [N, 3]) for PALETTE COLOR, RGB, or YCbCr for YBR_FULL/YBR_FULL_422 native;
    native YBR_FULL_422 is subsampled here), shaped [rows, columns] or [rows, columns, 3]. For
    JPEG, ``pixel_mode`` "YCbCr" says the frames are already YCbCr ("L" or "RGB" by default).
    Each frame is encoded before the next is drawn, so a renderer may reuse one buffer.
    """
    samples = set_image_pixel_module(ds, rows=rows, columns=columns, photometric=photometric,
                                     bits=bits)
    if palette is not None:
        for i, colour in enumerate(("Red", "Green", "Blue")):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [len(palette), 0, 8])
            setattr(ds, f"{colour}PaletteColorLookupTableData",
                    np.asarray(palette)[:, i].astype("<u2").tobytes())
            ds[f"{colour}PaletteColorLookupTableData"].VR = "OW"
    encode = _frame_encoder(transfer_syntax, photometric=photometric,
                            pixel_mode=pixel_mode or ("L" if samples == 1 else "RGB"), rows=rows,
                            columns=columns, samples=samples, bits=bits,
                            jpeg_quality=jpeg_quality, jpeg_keep_rgb=jpeg_keep_rgb)
    encoded = [encode(frame) for frame in frames]
    if len(encoded) != n_frames:
        raise RuntimeError(f"renderer gave {len(encoded)} frames, expected {n_frames}")
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    if transfer_syntax in _NATIVE:
        ds.PixelData = b"".join(encoded)
        ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    else:
        ds.PixelData = encapsulate(encoded, has_bot=True)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    if transfer_syntax == JPEG_BASELINE_8BIT:
        raw = n_frames * rows * columns * samples
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{raw / sum(map(len, encoded)):.2f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.LossyImageCompression = "00"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True, little_endian=transfer_syntax != ExplicitVRBigEndian,
               implicit_vr=transfer_syntax == ImplicitVRLittleEndian)


def write_image(
    path: Path,
    *,
    ident: DicomIdentity,
    vendor: Vendor,
    geometry: SectorGeometry,
    frames: Iterable[np.ndarray],
    n_frames: int,
    fps: float,
    pixel_mode: str,
    colour_flow: bool = False,
) -> None:
    """Write an ultrasound image as ``vendor`` does: multi-frame when ``n_frames`` > 1, else US
    Image Storage.

    ``frames`` are uint8 arrays in ``pixel_mode`` layout ("L", "RGB" or, for JPEG, "YCbCr").
    """
    multiframe = n_frames > 1
    sop_class = US_MULTIFRAME_IMAGE_STORAGE if multiframe else US_IMAGE_STORAGE
    ds = base_dataset(ident, sop_class=sop_class, transfer_syntax=vendor.transfer_syntax,
                      vendor=vendor)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", "0001"]
    ds.HeartRate = ident.heart_rate
    if multiframe:
        ds.NumberOfFrames = n_frames
        if vendor.timing == "frame_time":
            ds.FrameIncrementPointer = _FRAME_TIME
            ds.FrameTime = f"{1000.0 / fps:.1f}"  # the planner makes this exact
        else:
            ds.FrameIncrementPointer = _CINE_RATE
            ds.CineRate = int(round(fps))
            ds.RecommendedDisplayFrameRate = int(round(fps))
    if vendor.has_regions:
        ds.SequenceOfUltrasoundRegions = _regions(geometry, colour_flow)
    write_pixels(path, ds, frames, n_frames=n_frames, rows=vendor.rows, columns=vendor.columns,
                 transfer_syntax=vendor.transfer_syntax, photometric=vendor.photometric,
                 pixel_mode=pixel_mode, jpeg_quality=vendor.jpeg_quality)


def write_text_sr(path: Path | str, *, ident: DicomIdentity, vendor: Vendor | None,
                  lines: list[str]) -> None:
    """A Basic Text SR (a measurements page the machine exports beside the clips): no pixels."""
    ds = base_dataset(ident, sop_class=BASIC_TEXT_SR_STORAGE, modality="SR", vendor=vendor)
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic imaging report")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    items = []
    for text in lines:
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "TEXT"
        item.ConceptNameCodeSequence = Sequence([_code("121071", "DCM", "Finding")])
        item.TextValue = text
        items.append(item)
    ds.ContentSequence = Sequence(items)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    code.CodeMeaning = meaning
    return code
