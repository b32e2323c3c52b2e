"""Find burned-in text in output frames with an OCR model: the second line of defence.

Sector cropping and overlay masking (`ingest.sector`) rest on two assumptions: text lies outside
the moving sector, or it stays still. A text detector shares neither, so ingest runs one on every
kept clip before it is written: ``text_detector.frames`` evenly spaced output frames (fixed
indices, first and last included), each upscaled ``upscale`` times (bicubic: the detector is trained on
text far larger than the 6-10 pixel glyphs of a 112x112 clip; at 4x it reads them), then text
detection and recognition. A detected box counts as text when the recogniser reads at least one character with
confidence ``min_score`` or more (this is what keeps speckle from counting). Boxes, enlarged by
``margin`` output pixels, are masked (zeroed) in every frame of the clip, or the clip is rejected
``burned_in_text`` (``action: reject``). What was read is never kept or logged: only counts.

The model is RapidOCR 1.4 (``rapidocr-onnxruntime``): PaddleOCR's PP-OCRv4 detector and
recogniser exported to ONNX, shipped inside the wheel (no download, works offline), run by ONNX
Runtime on the CPU. Why this one: it needs no GPU and no network, installs from PyPI without
system packages (Tesseract would), reads Latin text and digits well at this size, and at one
thread per session its results are deterministic, so resumed runs give byte-identical shards.
One model is loaded per worker process, on first use (~1 s). Cost: ~0.25 s per frame on one
core (the detector resizes its input to a 736-pixel short side), so ~0.75 s per clip at 3 frames;
`bench/bench_ingest.py --text-detector` measures it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from echocmr.ingest.config import TextDetectorConfig


@dataclass(frozen=True)
class TextFindings:
    """Where text was found in a clip (never what it says)."""

    boxes: int  # text boxes found over the sampled frames
    mask_HW: np.ndarray  # bool, output-frame sized: True = text (with margin)


def engine_version() -> str:
    """Identifies the OCR model and runtime (part of the work cache's fingerprint)."""
    from importlib.metadata import version

    return f"rapidocr-onnxruntime {version('rapidocr-onnxruntime')}, " \
           f"onnxruntime {version('onnxruntime')}"


@lru_cache(maxsize=2)
def _engine(threads: int):
    """The OCR engine of this process (loaded once per worker process and thread count)."""
    import logging

    from rapidocr_onnxruntime import RapidOCR

    logging.getLogger("RapidOCR").setLevel(logging.ERROR)
    kwargs = {f"{part}{name}": threads for part in ("det_", "cls_", "rec_", "")
              for name in ("intra_op_num_threads", "inter_op_num_threads")}
    return RapidOCR(use_cls=False, **kwargs)


def sample_indices(n_frames: int, n: int) -> np.ndarray:
    """Fixed, evenly spaced frame indices (first and last included)."""
    return np.unique(np.linspace(0, n_frames - 1, min(n, n_frames)).round().astype(int))


def find_text(frames_THW: np.ndarray, config: TextDetectorConfig | None = None) -> TextFindings:
    """Run the detector on sampled frames of ``uint8[T, H, W]`` and return where text is."""
    from PIL import Image, ImageDraw

    config = config or TextDetectorConfig()
    _, h, w = frames_THW.shape
    scale = config.upscale
    engine = _engine(config.threads)
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    boxes = 0
    for t in sample_indices(len(frames_THW), config.frames):
        frame = Image.fromarray(np.ascontiguousarray(frames_THW[t]))
        big = np.asarray(frame.resize((w * scale, h * scale), Image.Resampling.BICUBIC))
        result, _ = engine(np.repeat(big[..., None], 3, axis=-1))
        for quad, text, score in result or []:
            if not str(text).strip() or float(score) < config.min_score:
                continue
            boxes += 1
            points = np.asarray(quad, dtype=np.float64) / scale
            x0, y0 = points.min(axis=0) - config.margin
            x1, y1 = points.max(axis=0) + config.margin
            draw.rectangle([int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)),
                            int(np.ceil(y1))], fill=1)
    return TextFindings(boxes=boxes, mask_HW=np.asarray(layer, dtype=bool))
