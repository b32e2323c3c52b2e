"""Find burned-in text in output frames with an OCR model: the second line of defence.

Sector cropping and overlay masking (`ingest.sector`) rest on two assumptions: text lies outside
the moving sector, or it stays still. A text detector shares neither, so ingest runs one on every
kept clip before it is written. What it reads, in order:

1. ``text_detector.frames`` evenly spaced output frames (fixed indices, first and last
   included), each upscaled ``upscale`` times (bicubic: the detector is trained on text far
   larger than the 6-10 pixel glyphs of a 144x144 clip; at 4x it reads them);
2. (``composites``) one composite of every frame (`ingest.text_composite`): each pixel from the
   frame where it strays farthest from its temporal median, so text shown in a few frames only
   shows there whole; a box the detector finds on it but cannot read is read again in the
   ``candidate_frames`` frames its pixels came from (along its whole line, ``line_reads``, when
   it is shaped like one); a box read on it is read again along its whole line in the frame
   most of its pixels came from (``line_reads``);
3. (``motion_bands``) the bands of rows whose bright transient pattern slides along them
   (`ingest.text_motion`: a ticker), each read in the frame that shows it most;
4. (``dark_composite``) the clip's per-pixel temporal maximum: tissue at its brightest, so dark
   strokes held in every frame (dark text over tissue) stand out where no single frame shows
   them; read through a power curve (``dark_gamma``, off by default, `ingest.text_dark`) that
   spreads the dark levels, so dark text over the blood pool or dim tissue does too; a box read
   there counts when it reads as two characters or more (single letters are
   what bright speckle around a dark pit reads as), and is read again along its whole line in
   the frame most of its pixels peak in (``line_reads``: bright text of a few frames shows
   here where the transient composite took brighter tissue);
5. (``dark_strokes``) the densest lines of thin dark strokes in that maximum (a black top-hat,
   `ingest.text_dark_strokes`: dark text over the blood pool or dim tissue, which the detector
   model boxes little of), each line the mask does not cover whole read by the recogniser alone
   on its crop divided by its local bright level; a read of two characters or more at
   ``dark_stroke_score`` masks the line's rows across the content (as does a line of dark strokes
   inside a box read already, with no read); a line read as two characters or more below that
   score is read again on its core rows, in the maximum and the temporal median
   (``dark_stroke_rereads``: JPEG-coded dark text);
6. (``stroke_reads``) the densest window of transient thin bright strokes (`ingest.text_strokes`:
   text moving vertically or slowly), away from what is masked, read along its line in the
   frame that shows it most; what reads there is followed frame by frame
   (`_Reader.follow_each_frame`);
7. (``track_step``) every box read in a frame is read again ``track_step`` frames before and
   after it (the box grown by ``track_context``), and on while the text found there reaches
   beyond the boxes so far: a ticker is followed along its path;
8. (``verify_every_frame``, off by default: ~0.12 CPU s a frame) every other frame, whole, with
   what was found masked: the check that assumes nothing about when or where text shows.

A detected box counts as text when the recogniser reads at least one character with confidence
``min_score`` or more (this is what keeps speckle from counting); a box shaped like a line of
text that does not read as cropped is read turned 180° and mirrored either way as well
(``orientations``; a vertical box is turned 90° by the crop already). Boxes, enlarged by
``margin`` output pixels and grown along their line by ``line_extend`` times their height at
each end (the recogniser often reads part of a line only), are masked (zeroed) in every frame of
the clip, or the clip is rejected
``burned_in_text`` (``action: reject``). What was read is never kept or logged: only counts.
What it does not see (docs/ingest.md, "The text detector"): dark moving text in none of the
sampled frames (only step 7 finds it), a second string moving vertically or slowly in a clip
beyond ``stroke_reads`` (and the follow-up's region), dim text over moving tissue, dark text
over blood or dim tissue whose strokes are not 40 % and 10 grey levels below the surround's
maximum (JPEG-coded text a few levels below a black pool's maximum), or in a line beyond the
``dark_strokes`` densest (`ingest.text_dark_strokes`), text shown
in one frame only at a place where the tissue deviates more.

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
from echocmr.ingest.text_composite import transient_composite
from echocmr.ingest.text_dark import brightened_maximum
from echocmr.ingest.text_dark_strokes import dark_lines, dark_view
from echocmr.ingest.text_motion import moving_bands
from echocmr.ingest.text_strokes import densest_window, stroke_density


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
    """Find where text is in ``uint8[T, H, W]`` output frames (see the module docstring).

    The sampled frames are read first (as they always were), then, when ``config.composites``
    is on, the clip's transient composite and the frames its unread boxes point to, then every
    found box is followed through the neighbouring frames (``config.track_step``)."""
    config = config or TextDetectorConfig()
    reader = _Reader(frames_THW, config)
    sampled = sample_indices(len(frames_THW), config.frames)
    reader.read_sampled(sampled)
    median_HW = np.median(frames_THW, axis=0) if len(frames_THW) > 1 and (
        config.composites or config.motion_bands or config.stroke_reads) else None
    if config.composites and len(frames_THW) > 1:
        composite_HW, source_HW = transient_composite(frames_THW, median_HW)
        found, unread = reader.read_image(composite_HW, frame=None, box=reader.content_box)
        # where a box was read on the composite: in the frame most of its pixels came from,
        # along the whole line it lies on (the composite shows a line only where its frames
        # outshine the tissue of the others: often a part of it), then followed from there
        for points in found:
            t = _mode_frame(source_HW, points)
            reader.seeds.append((t, points))
            if config.line_reads and t not in reader.read_frames:
                reader.read_image(frames_THW[t], frame=t,
                                  box=_line_region(points, config.track_context,
                                                   reader.content_box))
        # a box the detector saw but could not read (a smear of moving text, a rotated or partly
        # hidden word): read that region again in the frames its pixels came from
        for points in unread[:config.candidate_boxes]:
            for t in _top_frames(source_HW, points, config.candidate_frames):
                if int(t) in reader.read_frames:
                    continue
                line = config.line_reads and _line_shaped(points)
                reader.read_image(frames_THW[t], frame=int(t),
                                  box=_line_region(points, config.track_context, reader.content_box)
                                  if line else
                                  _region(points, config.track_context, frames_THW.shape[1:]))
    if config.motion_bands and len(frames_THW) > 1 and reader.content_box is not None:
        # moving text (a ticker): rows whose bright transient pattern slides along them
        # (`ingest.text_motion`), read in the frame that shows it most, then followed
        for band in moving_bands(frames_THW, max_bands=config.motion_bands, median_HW=median_HW):
            if band.frame not in reader.read_frames:
                reader.read_image(frames_THW[band.frame], frame=band.frame,
                                  box=(band.rows, reader.content_box[1]))
    if config.dark_composite and len(frames_THW) > 1:
        # dark strokes held in most frames: each pixel at its brightest over the clip, so the
        # tissue under and around them is as bright as it gets while they stay dark
        # (a box counts when it reads as two characters or more: single letters are what
        # bright speckle around a dark pit reads as)
        found, _ = reader.read_image(brightened_maximum(frames_THW, config.dark_gamma), frame=None,
                                     box=reader.content_box, min_chars=2)
        # bright text shown in a few frames shows here too, where the transient composite
        # took brighter tissue: read its line in the frame most of its pixels peak in
        if found and config.line_reads:
            peak_HW = frames_THW.argmax(axis=0)
            for points in found:
                t = _mode_frame(peak_HW, points)
                if t not in reader.read_frames:
                    reader.read_image(frames_THW[t], frame=t,
                                      box=_line_region(points, config.track_context,
                                                       reader.content_box))
    if config.dark_strokes and len(frames_THW) > 1 and reader.content_box is not None:
        # dark text over the blood pool or dim tissue (`ingest.text_dark_strokes`): the lines of
        # thin dark strokes in the temporal maximum, each read by the recogniser alone
        reader.read_dark_lines(frames_THW.max(axis=0), median_HW)
    if config.stroke_reads and len(frames_THW) > 1 and reader.content_box is not None:
        # text that moves vertically or slowly (`ingest.text_strokes`): the densest window of
        # transient bright strokes away from what is masked, its line read in the frame that
        # shows it most, and what reads there followed frame by frame
        density_THW = stroke_density(frames_THW, median_HW)
        tried = np.zeros(frames_THW.shape[1:], dtype=bool)
        for _ in range(config.stroke_reads):
            proposal = densest_window(density_THW, tried | reader.mask_HW(config.line_extend))
            if proposal is None:
                break
            rows = slice(max(proposal.rows.start - STROKE_PAD, reader.content_box[0].start),
                         min(proposal.rows.stop + STROKE_PAD, reader.content_box[0].stop))
            tried[max(rows.start - STROKE_PAD, 0):rows.stop + STROKE_PAD, proposal.cols] = True
            found, _ = reader.read_image(frames_THW[proposal.frame], frame=None,
                                         box=(rows, reader.content_box[1]))
            for points in found:
                reader.follow_each_frame(proposal.frame, points)
    if config.track_step:
        reader.track()
    if config.verify_every_frame:
        reader.verify()
    return TextFindings(boxes=reader.boxes, mask_HW=reader.mask_HW(extend=config.line_extend))


def _mode_frame(source_HW: np.ndarray, points: np.ndarray) -> int:
    """The frame that most pixels of the composite inside ``points``' box came from."""
    return int(_top_frames(source_HW, points, 1)[0])


def _top_frames(source_HW: np.ndarray, points: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` frames that most pixels of the composite inside ``points``' box came from."""
    h, w = source_HW.shape
    x0, y0 = np.clip(np.floor(points.min(axis=0)).astype(int), 0, (w - 1, h - 1))
    x1, y1 = np.clip(np.ceil(points.max(axis=0)).astype(int) + 1, 1, (w, h))
    counts = np.bincount(source_HW[y0:y1, x0:x1].ravel())
    order = np.argsort(-counts, kind="stable")
    return order[:n][counts[order[:n]] > 0]


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """Between the centres of two boxes (output pixels)."""
    return float(np.linalg.norm(a.mean(axis=0) - b.mean(axis=0)))


def _region(points: np.ndarray, context: int, hw: tuple[int, int]) -> tuple[slice, slice]:
    """The box around ``points`` (output pixels) grown by ``context``, inside the frame."""
    h, w = hw
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - context
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + context + 1
    return slice(max(int(y0), 0), min(int(y1), h)), slice(max(int(x0), 0), min(int(x1), w))


def _line_region(points: np.ndarray, context: int,
                 content_box: tuple[slice, slice]) -> tuple[slice, slice]:
    """The line a box lies on: its rows (a wide box) or columns (a tall one), grown by
    ``context``, across the whole ``content_box``."""
    rows, cols = content_box
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - context
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + context + 1
    if x1 - x0 >= y1 - y0:
        return slice(max(int(y0), rows.start), min(int(y1), rows.stop)), cols
    return rows, slice(max(int(x0), cols.start), min(int(x1), cols.stop))


def _line_shaped(points: np.ndarray) -> bool:
    """A box (output pixels) shaped like a line of text, along either axis."""
    w, h = points.max(axis=0) - points.min(axis=0)
    return max(w, h) >= 2 * min(w, h) and min(w, h) <= LINE_MAX_HEIGHT


def _line_like(crop_HW: np.ndarray, upscale: int) -> bool:
    """A crop shaped like a line of text up to `LINE_MAX_HEIGHT` output pixels high: the only
    boxes worth turning over (the large blobs tissue gives the detector are not)."""
    h, w = crop_HW.shape[:2]
    return w >= 2 * h and h <= LINE_MAX_HEIGHT * upscale


def _dark_rereads(frames_THW: np.ndarray, median_HW: np.ndarray | None):
    """A callable giving the clip's temporal median as ``uint8`` (``median_HW`` when given),
    computed once, on the first call."""
    cache: list[np.ndarray] = []

    def median() -> np.ndarray:
        if not cache:
            cache.append(np.median(frames_THW, axis=0) if median_HW is None else median_HW)
        return cache[0].astype(np.uint8)
    return median


LINE_MAX_HEIGHT = 16  # output pixels: a 12-pixel glyph's line with the detector's padding
STROKE_PAD = 8  # output pixels: rows read above and below a window of transient strokes

_FLIPS = (lambda c: c[::-1, ::-1], lambda c: c[:, ::-1], lambda c: c[::-1, :])  # 180°, mirrors


class _Reader:
    """Reads images of one clip with the OCR model and collects the boxes that read as text."""

    def __init__(self, frames_THW: np.ndarray, config: TextDetectorConfig):
        self.frames_THW, self.config = frames_THW, config
        _, self.h, self.w = frames_THW.shape
        self.engine = _engine(config.threads)
        self.found: list[np.ndarray] = []  # boxes read as text, output pixels (with margin)
        self.seeds: list[tuple[int, np.ndarray]] = []  # (frame, box) to follow in time
        self.read_frames: set[int] = set()
        self.boxes = 0
        self.reads = 0
        content = frames_THW.any(axis=0)  # every frame's non-zero pixels
        self.content_box = grown_bbox(content, config.margin) if config.crop_to_content else \
            (slice(0, self.h), slice(0, self.w))

    def mask_HW(self, extend: float = 0.0) -> np.ndarray:
        """The boxes read as text (plus ``margin``), each also grown ``extend`` times its short
        side at both ends of its long side: the rest of a line the recogniser read only part of."""
        from PIL import Image, ImageDraw

        layer = Image.new("L", (self.w, self.h), 0)
        draw = ImageDraw.Draw(layer)
        for points in self.found:
            (bx0, by0), (bx1, by1) = points.min(axis=0), points.max(axis=0)
            if extend:
                long_x = bx1 - bx0 >= by1 - by0
                grow = extend * ((by1 - by0) if long_x else (bx1 - bx0))
                bx0, bx1 = (bx0 - grow, bx1 + grow) if long_x else (bx0, bx1)
                by0, by1 = (by0, by1) if long_x else (by0 - grow, by1 + grow)
            bx0, by0 = bx0 - self.config.margin, by0 - self.config.margin
            bx1, by1 = bx1 + self.config.margin, by1 + self.config.margin
            draw.rectangle([int(np.floor(bx0)), int(np.floor(by0)), int(np.ceil(bx1)),
                            int(np.ceil(by1))], fill=1)
        return np.asarray(layer, dtype=bool)

    def _upscale(self, image_HW: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
        from PIL import Image

        rows, cols = box
        size = ((cols.stop - cols.start) * self.config.upscale,
                (rows.stop - rows.start) * self.config.upscale)
        return np.asarray(Image.fromarray(np.ascontiguousarray(image_HW[rows, cols]))
                          .resize(size, Image.Resampling.BICUBIC))

    def read_sampled(self, indices: np.ndarray) -> None:
        """The sampled frames, cropped to the box of their non-zero pixels (as before)."""
        config = self.config
        sampled = self.frames_THW[indices]
        box = grown_bbox(sampled.any(axis=0), config.margin) if config.crop_to_content else \
            (slice(0, self.h), slice(0, self.w))
        self.read_frames.update(int(t) for t in indices)
        if box is None:  # every sampled frame is black: nothing to read
            return
        tiles = [self._upscale(frame, box) for frame in sampled]
        th, tw = tiles[0].shape
        for image_no, (image, origins) in enumerate(_layout(tiles, config.mosaic)):
            quads, where = [], []
            for quad in self.engine.sorted_boxes(_detect(self.engine, image, config.detector_side)):
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
            read = self._recognise(image, quads)
            for quad, (top, left), ok in zip(quads, where, read, strict=True):
                if ok:
                    points = (quad - (left, top)) / config.upscale + (box[1].start, box[0].start)
                    self._add(points)
                    tile = image_no * len(origins) + origins.index((top, left))
                    self.seeds.append((int(indices[tile]), points))

    def read_dark_lines(self, maximum_HW: np.ndarray, median_HW: np.ndarray | None = None) -> None:
        """The ``dark_strokes`` densest lines of thin dark strokes in the temporal maximum that
        the mask does not cover whole: each line's crop, divided by its local bright level, is read by the
        recogniser alone (no detector: it boxes little of this text); a line read as two
        characters or more at ``dark_stroke_score`` is masked along its rows across the
        content (the read may hold part of the line only). With ``dark_stroke_rereads``, a line
        read as two characters or more below that score is read again on its core rows, in the
        maximum and in the temporal median (``median_HW``; computed here when not given):
        JPEG-coded text is read there that its first crop does not show well enough."""
        config = self.config
        rereads = _dark_rereads(self.frames_THW, median_HW) if config.dark_stroke_rereads \
            else None
        masked = self.mask_HW(config.line_extend)
        cols, tried = self.content_box[1], 0
        for line in dark_lines(maximum_HW, 2 * config.dark_strokes):
            if tried == config.dark_strokes or self.reads >= config.max_reads:
                return
            across = np.array([[cols.start, line.rows.start], [cols.stop - 1, line.rows.start],
                               [cols.stop - 1, line.rows.stop - 1],
                               [cols.start, line.rows.stop - 1]], dtype=np.float32)
            if masked[line.rows, line.cols].all():
                # dark text inside a box read as text already: the rest of the line is the same
                # text (the read often holds part of it), masked without a read (bright text's
                # gaps are dark strokes too, but not dark against their ground: left as read)
                if line.dark:
                    self.found.append(across)
                continue
            tried += 1
            self.reads += 1
            text, score = self._read_dark(dark_view(maximum_HW, line))
            if len(text) >= 2 and score < config.dark_stroke_score and rereads is not None:
                # two characters or more, but not sure of them: the codec's blur and ringing
                # (JPEG) leave text a first crop reads in part; its core rows (the glyphs'
                # band, larger to the recogniser) in the maximum and in the temporal median
                # (each frame's ringing averaged out) read it
                for image_HW in (maximum_HW, rereads()):
                    text, score = self._read_dark(dark_view(image_HW, line, core=True))
                    if len(text) >= 2 and score >= config.dark_stroke_score:
                        break
            if len(text) >= 2 and score >= config.dark_stroke_score:
                self._add(across, again=True)

    def _read_dark(self, view_HW: np.ndarray) -> tuple[str, float]:
        """The recogniser's read of one grey crop: its characters (white space dropped) and
        confidence."""
        (text, score, *_), = self.engine.text_rec([np.repeat(view_HW[..., None], 3, axis=-1)])[0]
        return "".join(str(text).split()), float(score)

    def verify(self) -> None:
        """The second check, sharing no assumption of the others about which frames hold text:
        every frame not read whole before is read whole with what was found so far masked, and
        what it finds joins the mask."""
        covered = self.mask_HW()
        for t, frame in enumerate(self.frames_THW):
            if t in self.read_frames:
                continue
            self.read_image(np.where(covered, 0, frame).astype(np.uint8), frame=None,
                            box=self.content_box, counted=False)

    def read_image(self, image_HW: np.ndarray, frame: int | None,
                   box: tuple[slice, slice] | None,
                   counted: bool = True,
                   min_chars: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Read ``box`` of one output-sized image; returns the boxes read as text and those the
        detector found but the recogniser could not read (output pixels). Boxes read in a
        frame are followed in time from there."""
        if box is None or (counted and self.reads >= self.config.max_reads):
            return [], []
        self.reads += counted
        if frame is not None:
            self.read_frames.add(frame)
        image = self._upscale(image_HW, box)
        quads = [q.astype(np.float32) for q in
                 self.engine.sorted_boxes(_detect(self.engine, image, self.config.detector_side))]
        if not quads:
            return [], []
        found, unread = [], []
        for quad, ok in zip(quads, self._recognise(image, quads, min_chars), strict=True):
            points = quad / self.config.upscale + (box[1].start, box[0].start)
            if ok:
                self._add(points, again=True)
                found.append(points)
                if frame is not None:
                    self.seeds.append((frame, points))
            else:
                unread.append(points)
        return found, unread

    def _add(self, points: np.ndarray, again: bool = False) -> None:
        """Count and keep a box read as text; a follow-up read's box (``again``) only when the
        boxes so far do not cover it already (the same word read again on the composite or in a
        neighbouring frame). Boxes of the sampled frames count as they always did."""
        if again and self.found:
            inside = self.mask_HW()[_region(points, 0, (self.h, self.w))]
            if inside.size and inside.all():
                return
        self.boxes += 1
        self.found.append(points)

    def _recognise(self, image: np.ndarray, quads: list[np.ndarray],
                   min_chars: int = 1) -> list[bool]:
        """Whether each box reads as text: as cropped, or (``orientations``) turned 180° or
        mirrored either way (a vertical box is turned 90° by the crop already)."""
        crops = self.engine.get_crop_img_list(image, quads)
        ok = self._reads([np.repeat(c[..., None], 3, axis=-1) for c in crops], min_chars)
        if self.config.orientations:
            again = [i for i, good in enumerate(ok) if not good and _line_like(crops[i], self.config.upscale)]
            if again:
                variants = [np.repeat(np.ascontiguousarray(flip(crops[i]))[..., None], 3, axis=-1)
                            for i in again for flip in _FLIPS]
                read = self._reads(variants, min_chars)
                for j, i in enumerate(again):
                    ok[i] = any(read[j * len(_FLIPS):(j + 1) * len(_FLIPS)])
        return ok

    def _reads(self, crops: list[np.ndarray], min_chars: int = 1) -> list[bool]:
        read, _ = self.engine.text_rec(crops)
        return [len("".join(str(text).split())) >= min_chars and float(score) >= self.config.min_score
                for text, score, *_ in read]

    def follow_each_frame(self, frame: int, points: np.ndarray, misses: int = 3) -> None:
        """Follow a box read in ``frame`` through every frame before and after it, for as long
        as the region around it (grown by ``track_context``) reads as text; up to ``misses``
        frames in a row may not (text over bright tissue), and the region moves on there as the
        box moved between its last two reads. For text that moves fast across its line (up to
        ~``track_context`` pixels a frame) or too slowly for `track`'s test (beyond the boxes so
        far) to follow it."""
        for direction in (-1, 1):
            t, missed = frame + direction, 0
            last, seen = (frame, points), (frame, points)  # the last two reads of the box
            while 0 <= t < len(self.frames_THW) and missed < misses \
                    and self.reads < self.config.max_reads:
                step = (last[1].mean(axis=0) - seen[1].mean(axis=0)) / (last[0] - seen[0]) \
                    if last[0] != seen[0] else 0.0
                guess = last[1] + step * (t - last[0])
                box = _region(guess, self.config.track_context, (self.h, self.w))
                found, _ = self.read_image(self.frames_THW[t], frame=None, box=box)
                if found:
                    seen, last = last, (t, min(found, key=lambda b: _distance(b, guess)))
                    missed = 0
                else:
                    missed += 1
                t += direction

    def track(self) -> None:
        """Follow each box read in a frame through the frames before and after it, every
        ``track_step`` frames, for as long as the same region reads as text that the boxes so far
        do not cover (moving text: a ticker; text that is not there in every frame)."""
        step, n = self.config.track_step, len(self.frames_THW)
        queue = [(frame, points, d) for frame, points in self.seeds for d in (-step, step)]
        self.seeds.clear()
        done: set[tuple[int, int, int, int]] = set()
        while queue and self.reads < self.config.max_reads:
            frame, points, direction = queue.pop(0)
            t = frame + direction
            box = _region(points, self.config.track_context, (self.h, self.w))
            key = (t, direction, box[0].start, box[1].start)
            if not 0 <= t < n or key in done:
                continue
            done.add(key)
            covered = self.mask_HW()
            found, _ = self.read_image(self.frames_THW[t], frame=None, box=box)
            for new in found:
                inside = covered[_region(new, -1, (self.h, self.w))]
                if inside.size and not inside.all():  # it reaches beyond the mask: follow it
                    queue.append((t, new, direction))
