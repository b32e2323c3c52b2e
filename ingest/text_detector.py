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
One model is loaded per worker process, on first use (~1 s). Cost: ~0.19 s per frame on one
core at the defaults (the 4x frame cropped to its non-zero box and read as it is), so ~0.56 s
per clip at 3 frames; `bench/bench_ingest.py --text-detector` measures it.

The models are RapidOCR's; the steps around the detector are done here (the same arithmetic, so
at ``detector_side`` 736 on the whole frame the result is bit-identical to ``RapidOCR.__call__``)
so that its input can be chosen: read as it is (padded to a multiple of 32, the default) or
resized to a ``detector_side`` short side, cropped to the non-zero box (``crop_to_content``, the
default) or whole, one call per frame or all sampled frames
tiled into one mosaic (``mosaic``: black gutters of `GUTTER` pixels, every box clipped to each
tile it overlaps and carried back to that frame's output pixels). `bench/bench_text_detector.py`
measures recall, false boxes and cost of each setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from echocmr.ingest.config import TextDetectorConfig
from echocmr.ingest.sector import grown_bbox


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


STRIDE = 32  # the detector's input sides are multiples of this
GUTTER = 64  # black pixels between mosaic tiles (and around them), at the upscaled size


@lru_cache(maxsize=1)
def _normalise_lut() -> np.ndarray:
    """Grey level -> the detector's input value, computed as RapidOCR's DetPreProcess does
    (float32 scale, float64 mean/std, float32 result) so a lookup gives the same bits."""
    levels = np.arange(256, dtype=np.float32) * (1 / 255.0)
    return ((levels - np.array([0.5])) / np.array([0.5])).astype(np.float32)


@lru_cache(maxsize=4)
def _postprocess(box_thresh: float = 0.5, unclip_ratio: float = 1.6):
    """RapidOCR's DB post-processing (probability map -> boxes) with its default settings."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

    return DBPostProcess(thresh=0.3, box_thresh=box_thresh, max_candidates=1000,
                         unclip_ratio=unclip_ratio, score_mode="fast", use_dilation=True)


def _detect(engine, image_HW: np.ndarray, side: int) -> np.ndarray:
    """Text boxes (``float32[N, 4, 2]``, x/y in ``image_HW`` pixels) found by the detector.

    ``side`` > 0: the image is resized so its short side is ``side`` (then each side rounded
    to a multiple of 32), as RapidOCR does by default; 0: it is padded with black to a multiple
    of 32 and read at its own size."""
    import cv2

    h, w = image_HW.shape
    if side:
        ratio = side / min(h, w) if min(h, w) < side else 1.0
        size = (int(round(int(w * ratio) / STRIDE) * STRIDE),
                int(round(int(h * ratio) / STRIDE) * STRIDE))
        net_HW = cv2.resize(image_HW, size)
        map_shape = (h, w)  # the map is scaled back to the image
    else:
        ph, pw = -(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE
        net_HW = np.zeros((ph, pw), dtype=np.uint8)
        net_HW[:h, :w] = image_HW
        map_shape = (ph, pw)  # the map is the padded image, pixel for pixel
    tensor = np.ascontiguousarray(np.broadcast_to(_normalise_lut()[net_HW], (1, 3) + net_HW.shape))
    prob = engine.text_det.infer(tensor)[0]
    boxes, _ = _postprocess()(prob, map_shape)
    boxes = engine.text_det.filter_tag_det_res(boxes, (h, w))
    return boxes if len(boxes) else np.zeros((0, 4, 2), dtype=np.float32)


def mosaic_grid(n: int, tile_hw: tuple[int, int], gutter: int = GUTTER) -> tuple[int, int]:
    """(rows, columns) of the mosaic of ``n`` tiles with the fewest pixels (then the squarest,
    then the widest)."""
    th, tw = tile_hw

    def pixels(cols: int) -> tuple[int, int, int]:
        rows = -(-n // cols)
        height, width = rows * th + (rows + 1) * gutter, cols * tw + (cols + 1) * gutter
        return -(-height // STRIDE) * -(-width // STRIDE), abs(height - width), -cols

    cols = min(range(1, n + 1), key=pixels)
    return -(-n // cols), cols


def _layout(tiles: list[np.ndarray], mosaic: bool) -> list[tuple[np.ndarray, list[tuple[int, int]]]]:
    """The images the detector reads, each with the (top, left) of the tiles it holds."""
    if not mosaic:
        return [(tile, [(0, 0)]) for tile in tiles]
    th, tw = tiles[0].shape
    rows, cols = mosaic_grid(len(tiles), (th, tw))
    image = np.zeros((rows * th + (rows + 1) * GUTTER, cols * tw + (cols + 1) * GUTTER),
                     dtype=np.uint8)
    origins = []
    for i, tile in enumerate(tiles):
        top, left = GUTTER + (i // cols) * (th + GUTTER), GUTTER + (i % cols) * (tw + GUTTER)
        image[top:top + th, left:left + tw] = tile
        origins.append((top, left))
    return [(image, origins)]


def find_text(frames_THW: np.ndarray, config: TextDetectorConfig | None = None) -> TextFindings:
    """Run the detector on sampled frames of ``uint8[T, H, W]`` and return where text is."""
    from PIL import Image, ImageDraw

    config = config or TextDetectorConfig()
    _, h, w = frames_THW.shape
    scale = config.upscale
    sampled = frames_THW[sample_indices(len(frames_THW), config.frames)]
    layer = Image.new("L", (w, h), 0)
    # The box around any sampled frame's non-zero pixels (grown by the margin), or all of it.
    box = grown_bbox(sampled.any(axis=0), config.margin) if config.crop_to_content else \
        (slice(0, h), slice(0, w))
    if box is None:  # every sampled frame is black: nothing to read
        return TextFindings(boxes=0, mask_HW=np.zeros((h, w), dtype=bool))
    rows, cols = box
    y0, y1, x0, x1 = rows.start, rows.stop, cols.start, cols.stop
    engine = _engine(config.threads)
    size = ((x1 - x0) * scale, (y1 - y0) * scale)
    tiles = [np.asarray(Image.fromarray(np.ascontiguousarray(frame[y0:y1, x0:x1]))
                        .resize(size, Image.Resampling.BICUBIC)) for frame in sampled]
    th, tw = tiles[0].shape
    draw = ImageDraw.Draw(layer)
    boxes = 0
    for image, origins in _layout(tiles, config.mosaic):
        quads, where = [], []
        for quad in engine.sorted_boxes(_detect(engine, image, config.detector_side)):
            for top, left in origins:  # a box belongs to each tile it overlaps, clipped to it
                clipped = np.stack([np.clip(quad[:, 0], left, left + tw - 1),
                                    np.clip(quad[:, 1], top, top + th - 1)], axis=1)
                if not np.array_equal(clipped, quad) and min(  # as the detector drops
                        int(np.linalg.norm(clipped[0] - clipped[1])),  # boxes of 3 pixels
                        int(np.linalg.norm(clipped[0] - clipped[3]))) <= 3:  # or less
                    continue
                quads.append(clipped.astype(np.float32))
                where.append((top, left))
        if not quads:
            continue
        crops = [np.repeat(crop[..., None], 3, axis=-1)
                 for crop in engine.get_crop_img_list(image, quads)]
        read, _ = engine.text_rec(crops)
        for quad, (top, left), (text, score, *_) in zip(quads, where, read, strict=True):
            if not str(text).strip() or float(score) < config.min_score:
                continue
            boxes += 1
            points = (quad - (left, top)) / scale + (x0, y0)
            bx0, by0 = points.min(axis=0) - config.margin
            bx1, by1 = points.max(axis=0) + config.margin
            draw.rectangle([int(np.floor(bx0)), int(np.floor(by0)), int(np.ceil(bx1)),
                            int(np.ceil(by1))], fill=1)
    return TextFindings(boxes=boxes, mask_HW=np.asarray(layer, dtype=bool))
