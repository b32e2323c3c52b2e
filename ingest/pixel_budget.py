"""The pixel budget: how much pixel data one file may declare, checked before any of it is inflated
or decoded, so that one small file cannot take a worker's (or the model server's) memory.

A file's declared pixel data is Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated
/ 8 bytes: what a decoder allocates for it before any conversion. `check_declared` refuses a
header above ``preprocess.read.max_pixel_mb`` as ``bad_header``; `ingest.dicom_header.check_cine`
calls it before any decoder runs (native and encapsulated data have been read as stored by then,
which takes no more memory than the file's size).

Deflated Explicit VR Little Endian is the one transfer syntax where the file's size says nothing:
the whole dataset, header included, is deflated, and pydicom inflates all of it at once on reading
(a 364 KB file became 369 MB of pixel data). `check_deflated` runs first: it inflates the file in
bounded chunks, keeping only the first `OTHER_ELEMENTS_BYTES` (where the header is), checks the
header's declared size against the budget as soon as it has reached the Pixel Data element, and
counts the rest without keeping it. A file whose data inflates past its declared pixel data plus
`OTHER_ELEMENTS_BYTES` of other elements (or past `OTHER_ELEMENTS_BYTES` before any Pixel Data
element) is ``bad_header`` as well. Nothing larger than the budget is held: at most the header, a
chunk, and zlib's window. The cost is one extra inflate of the (rare) deflated file.
"""

from __future__ import annotations

import io
import math
import warnings
import zlib
from typing import BinaryIO

from echocmr.ingest.config import ReadConfig
from echocmr.ingest.reasons import RejectedInput

DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
OTHER_ELEMENTS_BYTES = 16 * 1024 * 1024  # all elements but the pixel data, inflated
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float / Double Float Pixel Data
_CHUNK = 1 << 16  # compressed bytes read at a time
_OUT_CHUNK = 1 << 20  # most inflated bytes produced by one zlib call
_MB = 1024 * 1024


def declared_pixel_bytes(ds) -> int:
    """Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated / 8, from the header
    (NumberOfFrames absent: 1); `RejectedInput` ``bad_header`` when one is not a number."""
    try:
        numbers = [int(ds.get(tag, default) or default) for tag, default in (
            ("Rows", 0), ("Columns", 0), ("NumberOfFrames", 1), ("SamplesPerPixel", 1),
            ("BitsAllocated", 8))]
    except (TypeError, ValueError):
        raise RejectedInput("bad_header", "Rows/Columns/NumberOfFrames/SamplesPerPixel/"
                            "BitsAllocated is not a number") from None
    rows, cols, frames, samples, bits = (max(n, 0) for n in numbers)
    return math.ceil(rows * cols * frames * samples * bits / 8)


def check_declared(ds, config: ReadConfig) -> int:
    """Refuse a header that declares more pixel data than ``config.max_pixel_mb``; return the
    declared bytes."""
    declared = declared_pixel_bytes(ds)
    _within_budget(declared, config)
    return declared


def check_deflated(fp: BinaryIO, config: ReadConfig) -> None:
    """For a file in the deflated transfer syntax: refuse it before pydicom inflates it when its
    header declares too much pixel data or its data inflates past what it declares (see the
    module docstring). Other files are left alone. ``fp`` is read from its current position and
    left at it."""
    start = fp.tell()
    try:
        offset = _dataset_offset(fp)
        if offset is None:
            return
        fp.seek(offset)
        _inflate_within_budget(fp, config)
    finally:
        fp.seek(start)


def _dataset_offset(fp: BinaryIO) -> int | None:
    """Where the deflated dataset starts, or None when the file is not in the deflated syntax (or
    not a DICOM file pydicom would read: its own reading then says why)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
    except Exception:
        return None
    if str(meta.get("TransferSyntaxUID", "") or "") != DEFLATED_SYNTAX:
        return None
    return fp.tell()


def _inflate_within_budget(fp: BinaryIO, config: ReadConfig) -> None:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    header = bytearray()  # the first OTHER_ELEMENTS_BYTES inflated, until the pixel data is met
    limit, declared = OTHER_ELEMENTS_BYTES, None
    total, next_parse = 0, 1 << 16
    while True:
        chunk = fp.read(_CHUNK)
        pending = chunk
        while True:
            try:
                out = inflater.decompress(pending, _OUT_CHUNK)
            except zlib.error as exc:
                raise RejectedInput("unreadable", f"the deflated dataset is corrupt: {exc}") from None
            pending = inflater.unconsumed_tail
            total += len(out)
            if declared is None and len(header) < OTHER_ELEMENTS_BYTES:
                header += out[:OTHER_ELEMENTS_BYTES - len(header)]
                if len(header) >= next_parse or not chunk or len(header) >= OTHER_ELEMENTS_BYTES:
                    declared = _declared_from_header(bytes(header))
                    next_parse = 2 * len(header)
                    if declared is not None:
                        _within_budget(declared, config)
                        limit = declared + OTHER_ELEMENTS_BYTES
                        header = bytearray()
            if total > limit:
                what = (f"more than the {_mb(declared)} MB of pixel data its header declares"
                        if declared is not None else "without a Pixel Data element")
                raise RejectedInput("bad_header", f"the deflated dataset inflates past "
                                    f"{_mb(limit)} MB, {what} plus {_mb(OTHER_ELEMENTS_BYTES)} MB "
                                    "of other elements")
            if not pending:
                break
        if not chunk or inflater.eof:
            return


def _within_budget(declared: int, config: ReadConfig) -> None:
    if declared > config.max_pixel_mb * _MB:
        raise RejectedInput("bad_header", f"the header declares {_mb(declared)} MB of pixel data "
                            f"(rows x columns x frames x samples x bits), above "
                            f"preprocess.read.max_pixel_mb {config.max_pixel_mb:g}")


def _declared_from_header(data: bytes) -> int | None:
    """The declared pixel bytes of an inflated dataset prefix once it reaches the Pixel Data
    element (None before that: more is needed, or there is none)."""
    from pydicom.filereader import read_dataset

    reached = []

    def at_pixels(tag, vr, length) -> bool:
        if int(tag) in _PIXEL_TAGS:
            reached.append(True)
            return True
        return False

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_dataset(io.BytesIO(data), is_implicit_VR=False, is_little_endian=True,
                              stop_when=at_pixels)
    except Exception:  # the prefix ends inside an element: not there yet
        return None
    if not reached:
        return None
    return declared_pixel_bytes(ds)


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / _MB:.1f}"
