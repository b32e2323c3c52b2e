"""What the served model accepts in one request, and the errors it answers with.

``mlflow models serve`` runs the pyfunc (`model.serving`) in a thread per request and answers
504 after ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` seconds, but it cannot stop the thread: left
alone, a slow study would keep decoding, with its files on disk, long after the client gave up.
So a request is bounded here, before and while it runs:

* caps per request (`ServeLimits`): how many files, how many bytes per file and in all, and the
  pixel data a file's header declares (rows x columns x frames x samples x bytes per sample),
  read from the header before anything is decoded or inflated (a deflated file is inflated
  only up to the budget). Over a cap: a 400 that names the cap and the setting that raises it;
* a `Deadline`: the request's time budget, checked between files; past it the request stops,
  and the caller's ``finally`` removes its files. Under ``mlflow models serve`` the budget is
  the server's own timeout, so the work stops when the client is told 504;
* `ServingError`: our own 400. MLflow's scoring server prefixes every model error with the
  request (``Failed to predict data '<the whole table>'``: 300 KB of base64 for one DICOM);
  this error keeps its message, which names the field and the rule and never the data;
* `quiet_request_names`: MLflow's schema check logs the names of a request's extra columns
  (``Found extra inputs ...: `['DOE^JANE']```); the served model rewrites that log line
  without them, since a request can name a column anything.

Settings (environment of the server; defaults in brackets): ``ECHOCMR_SERVE_MAX_FILES`` [64],
``ECHOCMR_SERVE_MAX_CLIPS`` [256, rows of the clip form],
``ECHOCMR_SERVE_MAX_FILE_MB`` [256], ``ECHOCMR_SERVE_MAX_REQUEST_MB`` [512],
``ECHOCMR_SERVE_MAX_PIXEL_MB`` [1024, declared decoded pixel data per file],
``ECHOCMR_SERVE_TIMEOUT_S`` [the scoring server's timeout when served, else none].
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import time
import zlib
from dataclasses import dataclass

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

MB = 1 << 20
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
_ENV = {"max_files": ("ECHOCMR_SERVE_MAX_FILES", 1),
        "max_clips": ("ECHOCMR_SERVE_MAX_CLIPS", 1),
        "max_file_bytes": ("ECHOCMR_SERVE_MAX_FILE_MB", MB),
        "max_request_bytes": ("ECHOCMR_SERVE_MAX_REQUEST_MB", MB),
        "max_pixel_bytes": ("ECHOCMR_SERVE_MAX_PIXEL_MB", MB)}
TIMEOUT_ENV = "ECHOCMR_SERVE_TIMEOUT_S"
_MLFLOW_TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
_MLFLOW_SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"  # set by MLflow's scoring server


class ServingError(MlflowException):
    """A 400 whose message is ours alone (module docstring).

    MLflow's scoring server rewrites ``e.message`` to prefix the request's data; this class
    keeps the message it was made with, so no request cell reaches the response or the log.
    """

    def __init__(self, message: str) -> None:
        self._fixed = str(message)
        super().__init__(self._fixed, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._fixed

    @message.setter
    def message(self, value: str) -> None:  # MLflow's rewrite: the data is not ours to echo
        pass

    def __str__(self) -> str:
        return self._fixed


_EXTRA_INPUTS = "Found extra inputs in the model input"


class _NoRequestNames(logging.Filter):
    """MLflow's warning about extra columns, without the column names (module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(_EXTRA_INPUTS):
            record.msg = (f"{_EXTRA_INPUTS} that the model signature does not define (names "
                          "not logged: a request may name a column anything); they are ignored")
            record.args = ()
        return True


def quiet_request_names() -> None:
    """Install `_NoRequestNames` on MLflow's schema logger (once per process)."""
    logger = logging.getLogger("mlflow.models.utils")
    if not any(isinstance(f, _NoRequestNames) for f in logger.filters):
        logger.addFilter(_NoRequestNames())


class RequestTimedOut(ServingError):
    """The request ran past its `Deadline`; its work stopped and its files are removed."""


@dataclass(frozen=True, kw_only=True)
class ServeLimits:
    """Caps on one request (module docstring); `from_env` reads the server's settings."""

    max_files: int = 64
    max_clips: int = 256  # rows of the clip form
    max_file_bytes: int = 256 * MB
    max_request_bytes: int = 512 * MB
    max_pixel_bytes: int = 1024 * MB
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        for name in _ENV:
            if getattr(self, name) < 1:
                raise ValueError(f"ServeLimits.{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"ServeLimits.timeout_s must be > 0, got {self.timeout_s}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServeLimits:
        env = os.environ if environ is None else environ
        values: dict = {}
        for name, (var, unit) in _ENV.items():
            if env.get(var):
                try:
                    values[name] = int(float(env[var]) * unit)
                except ValueError:
                    raise ValueError(f"{var}={env[var]!r}: write a number") from None
        timeout = env.get(TIMEOUT_ENV)
        if not timeout and env.get(_MLFLOW_SERVING_ENV, "").lower() == "true":
            timeout = env.get(_MLFLOW_TIMEOUT_ENV)
        if timeout:
            try:
                values["timeout_s"] = float(timeout)
            except ValueError:
                raise ValueError(f"{TIMEOUT_ENV}={timeout!r}: write seconds") from None
        return cls(**values)


class Deadline:
    """The time budget of one request; `check` raises `RequestTimedOut` once it is spent."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.ends = None if seconds is None else time.monotonic() + seconds

    def check(self) -> None:
        if self.ends is not None and time.monotonic() > self.ends:
            raise RequestTimedOut(f"the request ran past its {self.seconds:g} s budget "
                                  f"({TIMEOUT_ENV}); it was stopped and its files removed")


def check_clip_count(n: int, limits: ServeLimits) -> None:
    if n > limits.max_clips:
        raise ServingError(f"clip: {n} rows in one request; at most {limits.max_clips} "
                           f"({_ENV['max_clips'][0]})")


def dicom_bytes(values: list, limits: ServeLimits) -> list[bytes]:
    """The ``dicom`` cells as file bytes, within ``limits`` (count and size)."""
    if len(values) > limits.max_files:
        raise ServingError(f"dicom: {len(values)} files in one request; at most "
                           f"{limits.max_files} ({_ENV['max_files'][0]})")
    files, total = [], 0
    for i, value in enumerate(values):
        data = _as_bytes(value, i)
        if len(data) > limits.max_file_bytes:
            raise ServingError(f"dicom row {i}: {len(data) / MB:.1f} MB; at most "
                               f"{limits.max_file_bytes / MB:g} MB a file "
                               f"({_ENV['max_file_bytes'][0]})")
        total += len(data)
        if total > limits.max_request_bytes:
            raise ServingError(f"dicom: more than {limits.max_request_bytes / MB:g} MB of files "
                               f"in one request ({_ENV['max_request_bytes'][0]})")
        files.append(data)
    return files


def check_declared_pixels(data: bytes, i: int, limits: ServeLimits) -> None:
    """Refuse a file whose header declares more pixel data than ``limits.max_pixel_bytes``
    (or whose deflated dataset inflates past it), before any of it is decoded. Files pydicom
    cannot parse pass: the reader rejects them with its own reason."""
    import pydicom

    budget = limits.max_pixel_bytes
    _check_inflated_size(data, i, budget)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.get("BitsAllocated") or 8)
    except Exception:
        return
    declared = rows * cols * max(frames, 1) * max(samples, 1) * max(-(-bits // 8), 1)
    if declared > budget:
        raise ServingError(f"dicom row {i}: its header declares {declared / MB:.0f} MB of pixel "
                           f"data ({rows}x{cols}, {frames} frames, {samples} samples of {bits} "
                           f"bits); at most {budget / MB:g} MB ({_ENV['max_pixel_bytes'][0]})")


def _check_inflated_size(data: bytes, i: int, budget: int) -> None:
    """A deflated dataset is inflated here, counted and dropped, up to ``budget`` bytes; past
    that it is refused (pydicom would inflate all of it in memory)."""
    # The file meta group (explicit VR little endian, never deflated) starts at byte 132 with
    # its group length (0002,0000) UL, whose value is bytes 140-143; the dataset follows it.
    if data[128:136] != b"DICM\x02\x00\x00\x00":
        return  # no preamble: the reader refuses the file (not_dicom)
    start = 144 + int.from_bytes(data[140:144], "little")
    if DEFLATED.encode() not in data[144:start]:  # the transfer syntax UID is in the group
        return
    inflater, pending, total = zlib.decompressobj(-zlib.MAX_WBITS), data[start:], 0
    try:
        while pending and total <= budget:  # 1 MB at a time, counted and dropped
            total += len(inflater.decompress(pending, MB))
            pending = inflater.unconsumed_tail
    except zlib.error:
        return  # not valid deflate: the reader rejects it
    if total > budget:
        raise ServingError(f"dicom row {i}: its deflated dataset inflates to more than "
                           f"{budget / MB:g} MB ({_ENV['max_pixel_bytes'][0]})")


def _as_bytes(value, i: int) -> bytes:
    """A cell as file bytes. MLflow decodes base64 for ``dataframe_*`` requests but hands
    ``inputs``/``instances`` cells over still encoded (bytes or text); raw DICOM bytes are never
    valid base64 (the preamble and binary tags are outside its alphabet)."""
    if isinstance(value, np.ndarray) and value.size == 1:  # `instances` rows wrap each cell
        value = value.reshape(-1)[0]
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ServingError(f"dicom row {i}: text that is not base64 (send a file's bytes, "
                               "base64 in JSON)") from None
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if data and not data.startswith(b"\0"):
            try:
                return base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                pass
        return data
    raise ServingError(f"dicom row {i}: expected a file's bytes (base64 in JSON), got "
                       f"{type(value).__name__}")
