"""The DICOM header: what a file is, whether it is an echo cine loop we can use, and its
identifiers, all before any pixel data is decoded.

`load_dataset` parses a file and refuses what is not a DICOM image object; `check_cine` refuses
what is not an ultrasound cine loop and header values that contradict themselves or the data
(`bad_header`, `truncated`); `identity` gives the identifiers (PHI: in memory only).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from datetime import date
from os import PathLike
from typing import BinaryIO

from echocmr.ingest.config import ReadConfig
from echocmr.ingest.pixel_budget import check_declared, check_deflated
from echocmr.ingest.reasons import RejectedInput, exception_detail


def silence_pydicom() -> None:
    """`quiet_pydicom` for the rest of the process, thread-safe (a filter on pydicom's modules
    only): for a process that only reads files, such as the served model's."""
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


@contextlib.contextmanager
def quiet_pydicom():
    """pydicom's warnings and log records, off for the block: they quote element values
    (``Invalid value for VR IS: '<the value>'``), which can be patient text, and a process's stderr
    ends up in logs. What ingest needs from a warning (truncation) is caught where it arises
    (`load_dataset`). Ingest's workers are quiet for good (`ingest.worker.init_worker`);
    ``echocmr predict`` and the served model read files in a process that must stay quiet too.
    """
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)

# SOP classes and modalities that are never images (SR, encapsulated documents, presentation
# states, waveforms, raw data, registration, RT plans/structures, DICOMDIR).
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF / CDA / STL ...
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms (ECG ...)
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registration, fiducials, segmentation
    "1.2.840.10008.5.1.4.1.1.481.",  # RT objects
    "1.2.840.10008.1.3.10",  # media storage directory (DICOMDIR)
)
_NON_IMAGE_MODALITIES = {"SR", "DOC", "KO", "PR", "ECG", "REG", "RTSTRUCT", "RTPLAN", "PLAN"}
_US_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
    "1.2.840.10008.5.1.4.1.1.6.1",  # US image
    "1.2.840.10008.5.1.4.1.1.3",  # retired US multi-frame
    "1.2.840.10008.5.1.4.1.1.6",  # retired US image
}
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class ClipIdentity:
    """Identifiers of a clip. PHI: used for hashing and pairing, never written anywhere."""

    patient_id: str
    study_uid: str
    sop_uid: str
    study_date: date | None


def load_dataset(path: str | PathLike | BinaryIO, config: ReadConfig | None = None):
    """Parse a file with pydicom; refuse non-DICOM, unreadable and truncated files, and deflated
    ones that would inflate past the pixel budget (`ingest.pixel_budget.check_deflated`)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    _check_deflated(path, config or ReadConfig())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            raise RejectedInput("not_dicom", "no DICOM preamble/'DICM' prefix") from None
        except PermissionError as exc:
            raise RejectedInput("unreadable_file", f"cannot open it: {exc.strerror}") from None
        except (EOFError, OSError) as exc:
            if isinstance(exc, EOFError) or "end of file" in str(exc).lower():
                raise RejectedInput("truncated", f"file ends early: {exception_detail(exc)}") from None
            raise RejectedInput("unreadable", exception_detail(exc)) from None
        except Exception as exc:  # pydicom raises many types on garbage
            text = str(exc).lower()
            if "end of file" in text or "eof" in text or "buffer" in text:
                raise RejectedInput("truncated", f"file ends early: {exception_detail(exc)}") from None
            raise RejectedInput("unreadable", exception_detail(exc)) from None
    for w in caught:
        text = str(w.message).lower()
        if "end of file" in text or "eof" in text:
            # pydicom drops an encapsulated element cut off by EOF with only a warning.
            raise RejectedInput("truncated", str(w.message))
    media_class = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "") or "")
    if media_class.startswith(_NON_IMAGE_SOP_PREFIXES) or "DirectoryRecordSequence" in ds:
        raise RejectedInput("not_image", "not an image object (a DICOMDIR or other non-image)")
    if "SOPClassUID" not in ds and "Modality" not in ds and "PixelData" not in ds:
        raise RejectedInput("unreadable", "no SOP Class, Modality or Pixel Data: not a DICOM object")
    return ds


def _check_deflated(path: str | PathLike | BinaryIO, config: ReadConfig) -> None:
    if hasattr(path, "read"):
        check_deflated(path, config)
        return
    try:
        f = open(path, "rb")
    except OSError:
        return  # pydicom's own attempt says why
    with f:
        check_deflated(f, config)


def check_cine(ds, config: ReadConfig) -> int:
    """Refuse everything but an ultrasound cine loop with pixel data; return the frame count."""
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    modality = str(ds.get("Modality", "") or "").upper()
    if sop_class.startswith(_NON_IMAGE_SOP_PREFIXES) or modality in _NON_IMAGE_MODALITIES:
        name = getattr(getattr(ds, "SOPClassUID", None), "name", "") or modality or sop_class
        raise RejectedInput("not_image", f"not an image object ({name})")
    if not modality and sop_class in _US_SOP_CLASSES:
        modality = "US"
    if modality not in config.modalities:
        raise RejectedInput("other_modality", f"modality {modality or 'unknown'!r}, "
                            f"want one of {list(config.modalities)}")
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise RejectedInput("no_pixel_data", "an image object without Pixel Data")
    declared = ds.get("NumberOfFrames", None)
    if declared in (None, ""):
        n_frames = 1
    else:
        try:
            n_frames = int(declared)
        except (TypeError, ValueError):
            raise RejectedInput("bad_header", "NumberOfFrames is not a number") from None
        if n_frames < 1:
            raise RejectedInput("bad_header", f"NumberOfFrames is {n_frames}")
    if n_frames == 1:
        raise RejectedInput("single_frame", "a still image (1 frame)")
    if n_frames < config.min_frames:
        raise RejectedInput("too_few_frames", f"{n_frames} frames < read.min_frames "
                            f"{config.min_frames}")
    _check_dimensions(ds, n_frames, config)
    _check_length(ds, n_frames)
    return n_frames


def study_uid(ds) -> str | None:
    """The StudyInstanceUID of a dataset, None when it has none (PHI: kept in memory only)."""
    return str(ds.get("StudyInstanceUID", "") or "").strip() or None


def identity(ds) -> ClipIdentity:
    """The clip's identifiers (PHI, kept in memory only)."""
    patient_id = str(ds.get("PatientID", "") or "").strip()
    study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    sop_uid = str(ds.get("SOPInstanceUID", "") or "").strip()
    missing = [n for n, v in (("PatientID", patient_id), ("StudyInstanceUID", study_uid),
                              ("SOPInstanceUID", sop_uid)) if not v]
    if missing:
        raise RejectedInput("missing_identifiers", f"missing {missing}")
    study_date = None
    for tag in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        study_date = _parse_da(ds.get(tag))
        if study_date is not None:
            break
    return ClipIdentity(patient_id=patient_id, study_uid=study_uid, sop_uid=sop_uid,
                        study_date=study_date)


# JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000 (may be lossy), HTJ2K, MPEG/HEVC.
_LOSSY_SYNTAX_PREFIXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                          "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91",
                          "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.4.10",
                          "1.2.840.10008.1.2.4.11")


def is_lossy(ds) -> bool:
    """Whether the pixels went through lossy compression (now or, per the header, before)."""
    tsyntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    if tsyntax.startswith(_LOSSY_SYNTAX_PREFIXES):
        return True
    return str(ds.get("LossyImageCompression", "") or "").strip() == "01"


def extended_offsets(ds):
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        return ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths
    return None


def _parse_da(value) -> date | None:
    text = str(value or "").strip()
    if len(text) >= 8 and text[:8].isdigit():
        try:
            return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            return None
    return None


MAX_SIDE = 8192  # pixels: no ultrasound screen is larger; a larger header is a broken one
_BITS_ALLOCATED = (1, 8, 16, 32, 64)  # the values PS3.5 8.1.1 allows


def _check_dimensions(ds, n_frames: int, config: ReadConfig) -> None:
    """Rows/Columns and bit depths against sanity, the declared size against the pixel budget
    (`ingest.pixel_budget`), and both against the data, before any pixel data is inflated or
    decoded.

    Native data: at least one whole frame of the declared size must be there (less is a header
    that does not describe this data; fewer frames than declared is `truncated`, checked next).
    Encapsulated JPEG / JPEG-LS / JPEG 2000: the first frame's codestream states its size.
    """
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 8) or 8)
    except (TypeError, ValueError):
        raise RejectedInput("bad_header", "Rows/Columns/SamplesPerPixel/BitsAllocated is not "
                            "a number") from None
    if not (0 < rows <= MAX_SIDE and 0 < cols <= MAX_SIDE):
        raise RejectedInput("bad_header", f"Rows x Columns {rows} x {cols} (each must be 1.."
                            f"{MAX_SIDE})")
    if bits not in _BITS_ALLOCATED:
        raise RejectedInput("bad_header", f"BitsAllocated is {bits} (DICOM allows "
                            f"{', '.join(map(str, _BITS_ALLOCATED))})")
    try:
        bits_stored = int(ds.get("BitsStored", bits) or bits)
    except (TypeError, ValueError):
        raise RejectedInput("bad_header", "BitsStored is not a number") from None
    if not 0 < bits_stored <= bits:
        raise RejectedInput("bad_header", f"BitsStored is {bits_stored} with BitsAllocated "
                            f"{bits}")
    check_declared(ds, config)
    if "PixelData" not in ds:
        return
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is None or not tsyntax.is_compressed:
        frame_bytes = rows * cols * samples * max(bits // 8, 1)
        if len(ds.PixelData) < frame_bytes:
            raise RejectedInput("bad_header", f"{len(ds.PixelData)} bytes of pixel data cannot "
                                f"hold one {rows} x {cols} frame")
        return
    from pydicom.encaps import generate_frames
    from pydicom.pixels.utils import _get_jpg_parameters

    try:
        first = next(generate_frames(ds.PixelData, number_of_frames=n_frames,
                                     extended_offsets=extended_offsets(ds)))
    except Exception:
        return  # fragment problems are `_check_length`'s (truncated) and the decoder's
    size = None
    params = _get_jpg_parameters(first) if first[:2] == b"\xff\xd8" else {}
    if params.get("height") and params.get("width"):
        size = (int(params["height"]), int(params["width"]))
    elif first[:4] == b"\xff\x4f\xff\x51" and len(first) >= 24:  # J2K SOC + SIZ
        xsiz, ysiz = int.from_bytes(first[8:12], "big"), int.from_bytes(first[12:16], "big")
        xo, yo = int.from_bytes(first[16:20], "big"), int.from_bytes(first[20:24], "big")
        size = (ysiz - yo, xsiz - xo)
    if size is not None and size != (rows, cols):
        raise RejectedInput("bad_header", f"header says {rows} x {cols}, the first frame's "
                            f"codestream {size[0]} x {size[1]}")


def _check_length(ds, n_frames: int) -> None:
    """Native pixel data shorter than the header promises, or too few encapsulated frames."""
    from pydicom.pixels.utils import get_expected_length

    if "PixelData" not in ds:
        return
    data = ds.PixelData
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is not None and tsyntax.is_compressed:
        n_fragments = _count_fragments(data)
        if n_fragments < n_frames:
            raise RejectedInput("truncated", f"{n_fragments} fragments for {n_frames} frames")
        return
    try:
        expected = get_expected_length(ds)
    except Exception:
        return
    if len(data) < expected:
        raise RejectedInput("truncated", f"{len(data)} bytes of pixel data, header promises {expected}")


def _count_fragments(data: bytes) -> int:
    """Fragments after the Basic Offset Table; raises `RejectedInput` if one is cut off."""
    view = memoryview(data)
    pos, count, first = 0, 0, True
    while pos + 8 <= len(view):
        tag = int.from_bytes(view[pos:pos + 4], "little")
        length = int.from_bytes(view[pos + 4:pos + 8], "little")
        if tag == 0xE0DDFFFE:  # sequence delimiter (group/element stored little-endian)
            break
        if tag != 0xE000FFFE:
            raise RejectedInput("truncated", f"bad item tag at byte {pos} of the pixel data")
        if pos + 8 + length > len(view):
            raise RejectedInput("truncated", "the last pixel data fragment is cut off")
        pos += 8 + length
        count += 0 if first else 1  # the first item is the Basic Offset Table
        first = False
    return count
