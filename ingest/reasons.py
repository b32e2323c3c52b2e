"""The job-wide vocabulary of why an input was not kept.

Every refusal in ingest, from the scan of ``--dicom`` to the text detector, is a `RejectedInput`
with one of the `REASONS` codes (the ``reason`` column of ``ingest_report.parquet``; docs/ingest.md
lists them) and a human-readable detail that never quotes patient text.
"""

from __future__ import annotations

import re

# Reason codes of the ingest report, with what they mean (docs/ingest.md repeats them).
REASONS: dict[str, str] = {
    "not_dicom": "not a DICOM file (no 'DICM' preamble) or random bytes",
    "unreadable": "a DICOM file that pydicom cannot parse",
    "truncated": "the file ends before its data does",
    "not_image": "a non-image object (structured report, PDF, presentation state, waveform, ...)",
    "other_modality": "an image of another modality than ultrasound",
    "no_pixel_data": "an image object without pixel data",
    "single_frame": "a still image, not a cine loop",
    "too_few_frames": "a cine loop shorter than read.min_frames",
    "decode_failed": "pixel data that the installed decoders cannot decode",
    "bad_header": "header values that contradict themselves or the data (NumberOfFrames 0, "
                  "Rows/Columns 0, implausible or unlike the codestream's)",
    "no_sector": "no moving sector could be located (a frozen or still clip)",
    "colour_doppler": "strong chroma inside the sector (colour Doppler)",
    "burned_in_text": "the text detector found text in the output frames (text_detector.action "
                      "reject)",
    "missing_identifiers": "no SOP Instance UID, Study Instance UID or Patient ID",
    "no_study_date": "no study (or series/acquisition/content) date to pair with a CMR",
    "no_cmr_within_window": "no CMR of the same patient within the pairing window",
    "duplicate_instance": "the same SOP Instance UID was already kept from another file",
    "symlink_loop": "a directory symlink that leads back to a directory above it (not followed)",
    "broken_symlink": "a symlink whose target does not exist",
    "duplicate_directory": "a directory symlink to a directory scanned already (not scanned again)",
    "not_regular_file": "a FIFO, socket or device file (never opened)",
    "unreadable_directory": "a directory that cannot be listed (permissions)",
    "unreadable_file": "a file that cannot be opened (permissions)",
    "worker_crashed": "the worker process died on this file (a decoder crash, or out of memory)",
    "error": "an unexpected error while processing (a bug: please report it)",
}


class RejectedInput(Exception):
    """An input file that is not an echo cine loop we can use; ``reason`` is a `REASONS` code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        self.reason = reason
        self.detail = detail or REASONS[reason]
        super().__init__(f"{reason}: {self.detail}")


_QUOTED = re.compile(r"""b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*\"""")
_DETAIL_LIMIT = 300


def exception_detail(exc: BaseException) -> str:
    """A rejection's ``detail`` from an exception: its type and message with every quoted
    literal (``'…'``, ``"…"``, ``b'…'``) shown as ``'…'``.

    The decoders' and Python's messages quote the value they failed on: pydicom's
    ``received b'SMITH'`` for a mangled element, ``could not convert string to float:
    'DOE^JANE'``, an ``OSError``'s file name. Such a value can be an element of the header or a
    path named after a patient, and a detail travels further than the report (``echocmr
    predict``'s output, the served model's ``files[].detail``), so it is never quoted.
    """
    text = _QUOTED.sub("'…'", str(exc))
    if len(text) > _DETAIL_LIMIT:
        text = text[:_DETAIL_LIMIT] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
