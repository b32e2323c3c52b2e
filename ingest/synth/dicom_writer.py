"""DICOM files as the fictional machines export them: headers, regions and pixel encodings.

Frames are encoded one by one as the renderer yields them (JPEG baseline through Pillow with 4:2:2
chroma, RLE through pylibjpeg-rle, JPEG-LS through pyjpegls, or raw bytes) and compressed frames are
encapsulated with a basic offset table. Nothing here reads a clock: every date, time and UID comes
from the caller, so the same inputs give byte-identical files.
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
from pydicom.pixels.encoders import JPEGLSLosslessEncoder, RLELosslessEncoder
from pydicom.sequence import Sequence

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


def _base_dataset(ident: DicomIdentity, vendor: Vendor, sop_class: str, ts: str,
                  modality: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ident.sop_uid
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ident.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ident.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ident.study_time
    ds.AccessionNumber = ident.accession
    ds.Modality = modality
    ds.Manufacturer = vendor.manufacturer
    ds.InstitutionName = ident.institution
    ds.ReferringPhysicianName = "REFERRER^CARDIOLOGY"
    ds.StationName = f"{vendor.key.upper()}01"
    ds.StudyDescription = "Echocardiogram transthoracic"
    ds.ManufacturerModelName = vendor.model
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = ident.birth_date
    ds.PatientSex = ident.sex
    ds.DeviceSerialNumber = f"{vendor.key[:2].upper()}{zlib.crc32(vendor.model.encode()) % 10**6:06d}"
    ds.SoftwareVersions = vendor.software
    ds.StudyInstanceUID = ident.study_uid
    ds.SeriesInstanceUID = ident.series_uid
    ds.StudyID = ident.study_id
    ds.SeriesNumber = ident.series_number
    ds.InstanceNumber = ident.instance_number
    return ds


def _regions(geometry: SectorGeometry, colour_flow: bool) -> Sequence:
    """The ultrasound region sequence: the fan's box and its pixel spacing (cm), tissue first."""
    min_x, min_y, max_x, max_y = geometry.box
    tissue = Dataset()
    tissue.RegionSpatialFormat = 1  # 2D
    tissue.RegionDataType = _REGION_TISSUE
    tissue.RegionFlags = 0
    tissue.RegionLocationMinX0 = min_x
    tissue.RegionLocationMinY0 = min_y
    tissue.RegionLocationMaxX1 = max_x
    tissue.RegionLocationMaxY1 = max_y
    tissue.ReferencePixelX0 = geometry.apex_x - min_x
    tissue.ReferencePixelY0 = geometry.apex_y - min_y
    tissue.PhysicalUnitsXDirection = 3  # cm
    tissue.PhysicalUnitsYDirection = 3
    tissue.ReferencePixelPhysicalValueX = 0.0
    tissue.ReferencePixelPhysicalValueY = 0.0
    tissue.PhysicalDeltaX = geometry.cm_per_px
    tissue.PhysicalDeltaY = geometry.cm_per_px
    items = [tissue]
    if colour_flow:
        flow = Dataset()
        for keyword in tissue.dir():
            setattr(flow, keyword, getattr(tissue, keyword))
        flow.RegionDataType = _REGION_COLOUR_FLOW
        items.append(flow)
    return Sequence(items)


def _frame_encoder(vendor: Vendor, pixel_mode: str) -> Callable[[np.ndarray], bytes]:
    """Frame (uint8 array in ``pixel_mode`` layout) -> encoded bytes for the transfer syntax."""
    ts = vendor.transfer_syntax
    common = dict(rows=vendor.rows, columns=vendor.columns, bits_allocated=8, bits_stored=8,
                  pixel_representation=0, number_of_frames=1,
                  samples_per_pixel=vendor.samples_per_pixel)
    if ts == JPEG_BASELINE_8BIT:
        if pixel_mode not in ("RGB", "YCbCr"):
            raise ValueError(f"JPEG baseline YBR needs RGB or YCbCr frames, not {pixel_mode}")

        def encode_jpeg(frame: np.ndarray) -> bytes:
            buf = io.BytesIO()
            image = Image.frombuffer(pixel_mode, (frame.shape[1], frame.shape[0]),
                                     np.ascontiguousarray(frame), "raw", pixel_mode, 0, 1)
            # JPEG stores YCbCr (RGB input is converted); subsampling=1 is 4:2:2: YBR_FULL_422.
            image.save(buf, "JPEG", quality=vendor.jpeg_quality, subsampling=1)
            return buf.getvalue()
        return encode_jpeg
    if ts == RLE_LOSSLESS:
        def encode_rle(frame: np.ndarray) -> bytes:
            return RLELosslessEncoder.encode(
                frame, encoding_plugin="pylibjpeg", photometric_interpretation="RGB",
                planar_configuration=0, **common)
        return encode_rle
    if ts == JPEG_LS_LOSSLESS:
        def encode_jls(frame: np.ndarray) -> bytes:
            return JPEGLSLosslessEncoder.encode(
                frame, encoding_plugin="pyjpegls", photometric_interpretation="MONOCHROME2",
                **common)
        return encode_jls
    if ts == EXPLICIT_VR_LITTLE_ENDIAN:
        return lambda frame: np.ascontiguousarray(frame).tobytes()
    raise ValueError(f"no frame encoder for transfer syntax {ts}")


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
    """Write an ultrasound image: multi-frame when ``n_frames`` > 1, else US Image Storage.

    ``frames`` are uint8 arrays in ``pixel_mode`` layout ("L", "RGB" or, for JPEG, "YCbCr");
    each is encoded before the next is drawn, so a renderer may reuse one buffer.
    """
    multiframe = n_frames > 1
    sop_class = US_MULTIFRAME_IMAGE_STORAGE if multiframe else US_IMAGE_STORAGE
    ts = vendor.transfer_syntax
    ds = _base_dataset(ident, vendor, sop_class, ts, "US")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", "0001"]
    ds.HeartRate = ident.heart_rate
    ds.SamplesPerPixel = vendor.samples_per_pixel
    ds.PhotometricInterpretation = vendor.photometric
    if vendor.colour:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = vendor.rows, vendor.columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
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
    encode = _frame_encoder(vendor, pixel_mode)
    encoded = [encode(frame) for frame in frames]
    if len(encoded) != n_frames:
        raise RuntimeError(f"renderer gave {len(encoded)} frames, expected {n_frames}")
    if ts == EXPLICIT_VR_LITTLE_ENDIAN:
        ds.PixelData = b"".join(encoded)
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "00"
    else:
        ds.PixelData = encapsulate(encoded, has_bot=True)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        if ts == JPEG_BASELINE_8BIT:
            raw = n_frames * vendor.rows * vendor.columns * 3
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionRatio = f"{raw / sum(map(len, encoded)):.2f}"
            ds.LossyImageCompressionMethod = "ISO_10918_1"
        else:
            ds.LossyImageCompression = "00"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_text_sr(path: Path, *, ident: DicomIdentity, vendor: Vendor, lines: list[str]) -> None:
    """A Basic Text SR (a measurements page the machine exports beside the clips): no pixels."""
    ds = _base_dataset(ident, vendor, BASIC_TEXT_SR_STORAGE, EXPLICIT_VR_LITTLE_ENDIAN, "SR")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    code.CodeMeaning = meaning
    return code
