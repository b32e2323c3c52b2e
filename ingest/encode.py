"""VP9-in-WebM encoding of grey clips, and the matching decode for checks.

Why VP9/WebM: it is the one codec that DALI's ``fn.decoders.video`` decodes both on the CPU and on
the GPU (H.264/HEVC/AV1 are GPU-only there), so one shard set serves CPU and GPU training alike.
Grey echo goes in the Y plane of yuv420p with neutral chroma (128).

Luma range: DALI converts our YUV to RGB as limited ("TV") range, ``x = clip(round((Y' - 16) *
255 / 219), 0, 255)`` (measured on the CPU decoder, DALI 2.4; limited range is also what VP9 and
NVDEC assume unless told otherwise, so the GPU decoder agrees whether or not it reads the flag).
Grey levels stored as they are (0..255 in Y) would lose everything below 16 and above 235: the
dark blood-pool speckle and bright specular echoes. So `encode_webm` stores ``Y' = 16 + round(Y *
219 / 255)`` (exact integers, `shards.format.GREY_TO_LUMA`) and marks the stream limited range,
and the decoder expands it back to ≈ Y over the full 0..255. The price is 220 stored levels for
256: a step of 255/219 ≈ 1.16 grey levels, so a level comes back at most 1 off (36 of the 256
do; 0.14 on average over a flat histogram), far below crf 20's codec error. On pydicom's
preprocessed ultrasound example, pixels at grey 1..15 (22 % of the clip) came back 11.2 levels off
on average before and 1.2 after; the whole clip 0.66 after. `decode_webm` returns what DALI
gives, so tests and tools compare like with like. Shards written before this (format version 1)
decode clipped; the readers refuse them (`shards.format.check_format_version`) and ingest must
be re-run.

Defaults: ``crf=20`` is near-lossless for 112×112 echo (mean absolute error below one grey level,
~50 KB per 120 frames); ``lossless=True`` is ~6× larger (it keeps ``Y'`` exactly, so the decoded
grey is within the one-level quantisation above). libvpx's "realtime" deadline at ``cpu-used`` 4
encodes a clip in 0.57x the CPU time of its "good" deadline at the same crf, with the same error
and slightly smaller files: on the 4-patient bench cohort's 18 prepared 144×144 clips (711
frames; ``python -m bench.bench_ingest --patients 4 --encoder``) 0.077 s against 0.136 s a clip,
46.0 against 48.7 KB, mean absolute error 0.943 against 0.940 grey levels, largest 36 against 44
(0.607 against 0.610 on pydicom's ultrasound example). Higher ``cpu-used`` in realtime is faster
still (0.035 s at 6) at a higher error (0.985); under "good", 5..8 were slower than 4 here.
Output is deterministic: one encoder thread, no row multithreading and the muxer's bit-exact
flag, so the same frames give the same bytes (ingest relies on this for byte-identical re-runs).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from echocmr.config import ConfigError
from echocmr.shards.format import GREY_TO_LUMA, LUMA_TO_GREY


@dataclass(kw_only=True)
class EncoderConfig:
    """VP9 quality settings."""

    crf: int = 20  # 0 (best) .. 63; 20 is near-lossless at 112×112
    lossless: bool = False  # exact stored luma (grey within 1 level), ~6x the bytes
    cpu_used: int = 4  # libvpx speed/quality trade-off, 0 (slow) .. 8 (fast)
    deadline: str = "realtime"  # libvpx's "realtime" or "good" (see the module docstring)

    def __post_init__(self) -> None:
        if self.deadline not in ("good", "realtime"):
            raise ConfigError(f"encoder.deadline must be 'good' or 'realtime', got "
                              f"{self.deadline!r}")
        if not 0 <= self.crf <= 63:
            raise ConfigError(f"encoder.crf must be in 0..63, got {self.crf}")
        if not 0 <= self.cpu_used <= 8:
            raise ConfigError(f"encoder.cpu_used must be in 0..8, got {self.cpu_used}")


def fps_fraction(fps: float) -> Fraction:
    """A rational frame rate for the container (30 -> 30/1, 29.97 -> 30000/1001)."""
    if not fps > 0:
        raise ValueError(f"frame rate must be positive, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def encode_webm(frames_THW: np.ndarray, fps: float, config: EncoderConfig | None = None) -> bytes:
    """Encode grey frames ``uint8[T, H, W]`` (H, W even, 0..255) to VP9 WebM bytes, luma stored
    as limited range (see the module docstring)."""
    import av  # heavy; imported where used
    from av.video.reformatter import ColorRange

    config = config or EncoderConfig()
    if frames_THW.ndim != 3 or frames_THW.dtype != np.uint8:
        raise ValueError(f"expected uint8[T, H, W] frames, got {frames_THW.dtype}{frames_THW.shape}")
    n_frames, height, width = frames_THW.shape
    if n_frames == 0:
        raise ValueError("cannot encode a clip with no frames")
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even sides, got {height}x{width}")

    rate = fps_fraction(fps)
    buf = io.BytesIO()
    # bitexact: no library version strings or dates in the file, so output is reproducible.
    with av.open(buf, mode="w", format="webm", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libvpx-vp9", rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        # Self-describing: the WebM Colour element and the VP9 header both say limited range.
        stream.codec_context.color_range = ColorRange.MPEG
        opts = {"deadline": config.deadline, "cpu-used": str(config.cpu_used), "row-mt": "0"}
        if config.lossless:
            opts["lossless"] = "1"
        else:
            opts.update({"crf": str(config.crf), "b": "0"})
        stream.options = opts
        chroma = np.full((height // 2, width // 2), 128, dtype=np.uint8)
        for i, luma in enumerate(frames_THW):
            frame = av.VideoFrame(width, height, "yuv420p")
            frame.planes[0].update(_pad_plane(GREY_TO_LUMA[luma], frame.planes[0].line_size))
            frame.planes[1].update(_pad_plane(chroma, frame.planes[1].line_size))
            frame.planes[2].update(_pad_plane(chroma, frame.planes[2].line_size))
            frame.pts = i
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def decode_webm(data: bytes) -> tuple[np.ndarray, float]:
    """Decode WebM bytes to grey frames ``uint8[T, H, W]`` and the stream's frame rate.

    The values are DALI's: limited-range luma expanded to 0..255 (``decode_webm(encode_webm(x))``
    is ``x`` up to codec error and one grey level of quantisation); a stream marked full range is
    returned as stored, as DALI's CPU decoder does.
    """
    import av
    from av.video.reformatter import ColorRange

    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        frames = []
        for f in container.decode(stream):
            # The Y plane read directly: exact integer expansion, no swscale rounding or dither.
            luma = _read_plane(f.planes[0], f.width, f.height)
            frames.append(luma if f.color_range == ColorRange.JPEG else LUMA_TO_GREY[luma])
    if not frames:
        raise ValueError("video holds no frames")
    return np.stack(frames), rate


def _pad_plane(plane: np.ndarray, line_size: int) -> bytes:
    """Rows padded to the frame's line size (libav aligns rows)."""
    if plane.shape[1] == line_size:
        return np.ascontiguousarray(plane).tobytes()
    out = np.zeros((plane.shape[0], line_size), dtype=np.uint8)
    out[:, : plane.shape[1]] = plane
    return out.tobytes()


def _read_plane(plane, width: int, height: int) -> np.ndarray:
    rows = np.frombuffer(bytes(plane), dtype=np.uint8).reshape(height, plane.line_size)
    return rows[:, :width].copy()
