"""Benchmark: the text detector's recall, false boxes and cost per clip, setting by setting.

The yardstick for `ingest.text_detector` (the OCR pass). Real prepared clips: the kept clips of
the synthetic cohort that `bench.bench_ingest` uses (``cohort-4``, 18 clips of 144x144 after
`ingest.preprocess`, cached under ``/tmp/echocmr-bench-text``). Into copies of them it plants
strings, static in every frame as burned-in text is, anti-aliased (drawn by Pillow's scalable
default font, blended by coverage), along four axes crossed in full:

* glyph height 5, 6, 8, 10, 12 output pixels (the height of a capital letter);
* contrast: ``bright`` (grey 200-255 on whatever lies below), ``dim`` (40-60) and ``dark``
  (0-40 on a bright label box of 190-220);
* position: ``inside`` the fan (every pixel of the string's box on the sector), on the fan's
  ``edge`` (20-80 % on it), in the black ``corner`` (none on it);
* content: a name (``DOE JANE``), a date (``12/03/1961``), an ID (``MRN 4471023``), digits.

Each combination twice (360 strings, fixed seed: the same set every run), up to five strings a
clip, kept apart by at least a glyph height plus the mask margin so one string's box cannot
cover another. A string is found when the returned mask covers >= 90 % of its glyph pixels
(coverage >= 0.5). False boxes: the boxes reported on clips with nothing planted (each cohort
clip three times: whole, without its first third, without its last third, so other frames are
sampled). Seconds per clip: CPU time of this process (one ONNX Runtime thread) over every call,
planted and clean, and the wall time beside it.

The first row is the yardstick: the old default (upscale 4, the detector resizing to a 736-pixel
short side, one call per frame, the whole frame); the row named ``default`` is today's
`TextDetectorConfig` (read as is, cropped to content). Each row's ratio is its speed-up over the
first, and
``worst bucket`` is the lowest (recall - the first row's recall) over the 15 glyph-height x
contrast buckets: a setting is as good as the first row when that is >= 0. Then the recall of
every bucket, setting by setting.

Then the text that is not still (`motion_set`: intermittent, scrolling, rotated, mirrored, dark
over tissue; names, dates, IDs; glyphs of 6-12 pixels; raw and JPEG-coded frames), one string a
clip: recall per mode x glyph height, per content and per codec, and CPU s per clip. Beside the
raw recall of the strings of 8 px and more, the **readable recall** (`readable`): a reader of its
own (RapidOCR's whole pipeline with its angle classifier, 4x, every frame a string is drawn in,
cropped to its path; turned and mirrored copies for those modes) reads each string in the
UNPROTECTED clip, and the readable recall is the share masked of the strings it reads. A string
no reader reads is not a leak; both figures are printed, and the strings not read are listed.
The reader is the stronger one (`readable_stronger`): what the plain pipeline does not read in
any frame is read again on the clip's temporal minimum, maximum, median and mean and on 8 of its
frames, each contrast-stretched, CLAHE-equalised and inverted (it reads dark strings the plain
pipeline does not: the readable recall must not rest on a reader weaker than the detector).

Then the dark set (`dark_set`, 48 strings): dark text over the blood pool and over dim tissue,
where the motion set's ``dark`` strings mostly are not; recall per ground x glyph height and
codec, and the stronger reader's readable recall (``--no-dark-set`` leaves it out).

Then the text that moves vertically or slowly (`sliding_set`: up or down 1-6 pixels a frame;
0.25-1 pixels a frame sideways, vertically or in steps; in none of the sampled frames), printed
the same way by `report_sliding`, with the strings each row misses.

Run: ``.venv/bin/python -m bench.bench_text_detector [--settings NAME ...] [--yardstick NAME]
[--repeats 2] [--no-motion] [--no-still] [--no-readable] [--no-sliding] [--no-dark-set]``.
About 1 CPU-minute per setting on the
still strings and 1-2 on the rest; the reader's pass 30 CPU minutes once on a loaded machine
(1791 CPU s, 2026-12-06; cached under ``/tmp/echocmr-bench-text``).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np

CACHE = "/tmp/echocmr-bench-text"
HEIGHTS = (5, 6, 8, 10, 12)
CONTRASTS = ("bright", "dim", "dark")
POSITIONS = ("inside", "edge", "corner")
CONTENTS = ("name", "date", "id", "digits")
NAMES = ("DOE JANE", "SMITH JOHN", "MULLER ANNA", "GARCIA M", "NGUYEN T", "KOWALSKI P")
PER_CLIP = 5
FOUND = 0.9  # share of a string's glyph pixels the mask must cover

# name -> TextDetectorConfig fields (every field that differs between rows, so a change of the
# defaults does not change a row); the first, the old default, is the yardstick.
_SAMPLED_ONLY = dict(composites=False, track_step=0, orientations=False, dark_composite=False,
                     line_extend=0.0, motion_bands=0, line_reads=False, stroke_reads=0,
                     dark_strokes=0)
_BEFORE_MOTION = dict(motion_bands=0, line_reads=False, stroke_reads=0,  # measured before these
                      dark_strokes=0)
SETTINGS = {
    "old default (4x, det 736)": dict(upscale=4, detector_side=736, crop_to_content=False,
                                      **_SAMPLED_ONLY),
    "4x, det as is": dict(upscale=4, detector_side=0, crop_to_content=False, **_SAMPLED_ONLY),
    "3x, det as is": dict(upscale=3, detector_side=0, crop_to_content=False, **_SAMPLED_ONLY),
    "5x, det as is": dict(upscale=5, detector_side=0, crop_to_content=False, **_SAMPLED_ONLY),
    "6x, det as is": dict(upscale=6, detector_side=0, crop_to_content=False, **_SAMPLED_ONLY),
    "2x, det as is": dict(upscale=2, detector_side=0, crop_to_content=False, **_SAMPLED_ONLY),
    "sampled only (4x, as is, crop)": dict(upscale=4, detector_side=0, crop_to_content=True, **_SAMPLED_ONLY),
    "3x, as is, crop": dict(upscale=3, detector_side=0, crop_to_content=True, **_SAMPLED_ONLY),
    "4x, as is, mosaic": dict(upscale=4, detector_side=0, crop_to_content=False, mosaic=True, **_SAMPLED_ONLY),
    "3x, as is, crop, mosaic": dict(upscale=3, detector_side=0, crop_to_content=True, mosaic=True, **_SAMPLED_ONLY),
    "4x, det 736, crop": dict(upscale=4, detector_side=736, crop_to_content=True, **_SAMPLED_ONLY),
    "first pass (composite, track, turn)": dict(upscale=4, detector_side=0, crop_to_content=True,
                                                dark_composite=False, line_extend=0.0,
                                                **_BEFORE_MOTION),
    "+ composite, track (no turn)": dict(upscale=4, detector_side=0, crop_to_content=True,
                                         orientations=False, dark_composite=False,
                                         line_extend=0.0, **_BEFORE_MOTION),
    "+ max composite, lines": dict(upscale=4, detector_side=0, crop_to_content=True,
                                   dark_composite=True, line_extend=2.0, dark_gamma=1.0,
                                   **_BEFORE_MOTION),
    "default (+ motion bands, line reads)": dict(upscale=4, detector_side=0, crop_to_content=True,
                                                 dark_composite=True, line_extend=2.0,
                                                 motion_bands=2, line_reads=True, stroke_reads=0,
                                                 dark_gamma=1.0, dark_strokes=0),
    "+ brightened maximum (gamma 0.5)": dict(upscale=4, detector_side=0, crop_to_content=True,
                                             dark_composite=True, line_extend=2.0, dark_gamma=0.5,
                                             motion_bands=2, line_reads=True, stroke_reads=0,
                                             dark_strokes=0),
    "+ stroke reads": dict(upscale=4, detector_side=0, crop_to_content=True,
                           dark_composite=True, line_extend=2.0, motion_bands=2,
                           line_reads=True, stroke_reads=1, dark_gamma=1.0, dark_strokes=0),
    "default (+ dark strokes)": dict(upscale=4, detector_side=0, crop_to_content=True,
                                     dark_composite=True, line_extend=2.0, motion_bands=2,
                                     line_reads=True, stroke_reads=1, dark_gamma=1.0,
                                     dark_strokes=2, dark_stroke_score=0.5),
}


@dataclass(frozen=True)
class Planted:
    clip: int  # index into the planted clips
    height: int
    contrast: str
    position: str
    content: str
    glyphs_HW: np.ndarray  # bool: pixels of the string's glyphs (coverage >= 0.5)


def prepared_clips(patients: int = 4) -> list[np.ndarray]:
    """The kept clips of the bench cohort after preprocessing (``uint8[T, H, W]``), cached."""
    path = os.path.join(CACHE, f"clips-{patients}.npz")
    if not os.path.exists(path):
        os.environ.setdefault("ECHOCMR_SPLIT_KEY", "bench-key")
        from bench.bench_ingest import _cohort
        from echocmr.ingest.config import IngestConfig
        from echocmr.ingest.dicom_header import check_cine, load_dataset
        from echocmr.ingest.dicom_io import clip_from_dataset
        from echocmr.ingest.preprocess import preprocess_clip
        from echocmr.ingest.reasons import RejectedInput

        root = os.path.join(_cohort(patients), "dicom")
        config = IngestConfig(site="bench")
        clips = []
        for dirpath, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                try:
                    ds = load_dataset(os.path.join(dirpath, name))
                    check_cine(ds, config.preprocess.read)
                    clip = clip_from_dataset(ds, config.preprocess.read)
                    clips.append(preprocess_clip(clip, config.preprocess).frames_THW)
                except RejectedInput:
                    continue
        os.makedirs(CACHE, exist_ok=True)
        np.savez(path + ".tmp.npz", *clips)
        os.replace(path + ".tmp.npz", path)
    with np.load(path) as data:
        return [data[key] for key in data.files]


def font_for_height(height: int):
    """Pillow's scalable default font at the size whose capital H is ``height`` pixels tall."""
    from PIL import Image, ImageDraw

    from echocmr.ingest.synth.overlays import screen_font

    for size in range(height, 4 * height):
        layer = Image.new("L", (8 * height, 8 * height), 0)
        ImageDraw.Draw(layer).text((height, height), "H", fill=255, font=screen_font(size))
        rows = np.flatnonzero((np.asarray(layer) >= 128).any(axis=1))
        if len(rows) and rows[-1] - rows[0] + 1 >= height:
            return screen_font(size)
    raise ValueError(f"no font size gives {height}-pixel capitals")


def _text(content: str, rng: np.random.Generator) -> str:
    if content == "name":
        return NAMES[rng.integers(len(NAMES))]
    if content == "date":
        return f"{rng.integers(1, 29):02d}/{rng.integers(1, 13):02d}/{rng.integers(1930, 2010)}"
    if content == "id":
        return f"MRN {rng.integers(1_000_000, 10_000_000)}"
    return str(rng.integers(100_000, 100_000_000))


def _coverage(text: str, font, hw: tuple[int, int]) -> np.ndarray:
    """float32 [0, 1] coverage of ``text`` drawn at the origin, cropped to its ink."""
    from PIL import Image, ImageDraw

    layer = Image.new("L", (hw[1] * 2, hw[0]), 0)
    ImageDraw.Draw(layer).text((4, 4), text, fill=255, font=font)
    alpha = np.asarray(layer, dtype=np.float32) / 255
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    return alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _position_of(fan_HW: np.ndarray, y: int, x: int, h: int, w: int) -> str | None:
    share = fan_HW[y:y + h, x:x + w].mean()
    if share >= 0.95:
        return "inside"
    if share <= 0.05:
        return "corner"
    return "edge" if 0.2 <= share <= 0.8 else None


def planted_set(clips: list[np.ndarray], repeats: int = 2, seed: int = 16,
                margin: int = 2) -> tuple[list[np.ndarray], list[Planted]]:
    """Clips with strings planted in every frame, and what was planted where (deterministic)."""
    rng = np.random.default_rng(seed)
    combos = [(h, c, p, t) for _ in range(repeats) for h in HEIGHTS for c in CONTRASTS
              for p in POSITIONS for t in CONTENTS]
    order = rng.permutation(len(combos))
    fonts = {h: font_for_height(h) for h in HEIGHTS}
    out: list[np.ndarray] = []
    planted: list[Planted] = []
    pending = [int(i) for i in order]
    misses: dict[int, int] = {}  # combination -> clips it found no room in
    base = 0
    while pending:
        frames = clips[base % len(clips)].astype(np.float32)
        base += 1
        hgt, wid = frames.shape[1:]
        fan = frames.max(axis=0) > 0
        taken = np.zeros((hgt, wid), dtype=bool)
        here, left = [], []
        for key in pending:
            height, contrast, position, content = combos[key]
            if len(here) == PER_CLIP:
                left.append(key)
                continue
            alpha = _coverage(_text(content, rng), fonts[height], (4 * height, wid))
            pad = 2 if contrast == "dark" else 0  # the label box around dark text
            h, w = alpha.shape[0] + 2 * pad, alpha.shape[1] + 2 * pad
            spot = None
            for _ in range(300):
                y, x = int(rng.integers(0, hgt - h + 1)), int(rng.integers(0, wid - w + 1))
                if _position_of(fan, y, x, h, w) == position and not taken[y:y + h, x:x + w].any():
                    spot = y, x
                    break
            if spot is None:
                misses[key] = misses.get(key, 0) + 1
                if misses[key] < 2 * len(clips):  # else: it fits in no clip; left out
                    left.append(key)
                continue
            y, x = spot
            gap = height + margin + 1
            taken[max(y - gap, 0):y + h + gap, max(x - gap, 0):x + w + gap] = True
            if contrast == "dark":
                frames[:, y:y + h, x:x + w] = float(rng.integers(190, 221))
                level = float(rng.integers(0, 41))
            else:
                level = float(rng.integers(200, 256) if contrast == "bright" else rng.integers(40, 61))
            a = np.zeros((hgt, wid), dtype=np.float32)
            a[y + pad:y + pad + alpha.shape[0], x + pad:x + pad + alpha.shape[1]] = alpha
            frames = frames * (1 - a) + level * a
            here.append(Planted(len(out), height, contrast, position, content, a >= 0.5))
        if not here:
            pending = left
            continue
        out.append(np.clip(np.round(frames), 0, 255).astype(np.uint8))
        planted.extend(here)
        pending = left
    return out, planted


MODES = ("intermittent", "scrolling", "rotated", "mirrored", "dark")
MOTION_HEIGHTS = (6, 8, 10, 12)
MOTION_CONTENTS = ("name", "date", "id")
CODECS = ("raw", "jpeg")
SCROLL_PX = 1.5  # output pixels a frame: 5 source pixels a frame in a ~480-pixel sector
DARK_ON = 90  # dark text is planted where the tissue's median temporal mean is at least this
SCROLL_FRAMES = 16  # frames a scrolling string is shown (half the clip when shorter)


@dataclass(frozen=True)
class Moving:
    clip: int  # index into the motion clips
    mode: str
    height: int
    content: str
    codec: str
    glyphs_HW: np.ndarray  # bool: every pixel a glyph covers in any frame (coverage >= 0.5)
    text: str = ""  # what was planted (the readable-recall check looks for it)
    shown: tuple[int, ...] = ()  # the frames it is drawn in


def _shown_frames(n: int, rng: np.random.Generator) -> np.ndarray:
    """A run of 15 % of the frames (at least 2) that holds neither the first, the middle nor
    the last frame (`ingest.text_detector.sample_indices` with 3 frames)."""
    length = max(2, round(0.15 * n))
    avoid = {0, (n - 1) // 2, n // 2, n - 1}
    starts = [s for s in range(1, n - length) if not avoid & set(range(s, s + length))]
    start = starts[rng.integers(len(starts))]
    shown = np.zeros(n, dtype=bool)
    shown[start:start + length] = True
    return shown


def motion_set(clips: list[np.ndarray], seed: int = 22) -> tuple[list[np.ndarray], list[Moving]]:
    """One string a clip, for every mode x glyph height x content x codec (deterministic):

    * ``intermittent``: bright (200-255), in a run of 15 % of the frames away from the frames
      the detector samples;
    * ``scrolling``: bright, moving `SCROLL_PX` a frame to the left, shown in a run of half the frames
      (at most `SCROLL_FRAMES`);
    * ``rotated``: turned 90° (either way) or 180°, in every frame, its level alternating
      frame by frame (230 / 150);
    * ``mirrored``: mirrored left-right or top-bottom, in every frame, alternating level;
    * ``dark``: grey 0-25 straight over bright tissue (no label box; the median of the
      temporal mean under it at least `DARK_ON`), in every frame.

    ``jpeg``: every frame then JPEG-coded (Pillow, quality 75) as a lossy export would be."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    fonts = {h: font_for_height(h) for h in MOTION_HEIGHTS}
    out, planted = [], []
    combos = [(m, h, c, k) for m in MODES for h in MOTION_HEIGHTS for c in MOTION_CONTENTS
              for k in CODECS]
    for i, (mode, height, content, codec) in enumerate(combos):
        base = clips[i % len(clips)]
        frames = base.astype(np.float32)
        n, hgt, wid = frames.shape
        fan = base.max(axis=0) > 0
        text = _text(content, rng)
        alpha = _coverage(text, fonts[height], (4 * height, wid))
        if mode == "rotated":
            alpha = np.rot90(alpha, k=int(rng.choice([1, 2, 3])))
        elif mode == "mirrored":
            alpha = alpha[:, ::-1] if rng.integers(2) else alpha[::-1, :]
        h, w = alpha.shape
        run = min(n // 2, SCROLL_FRAMES)
        travel = min(int(np.ceil(SCROLL_PX * run)), wid - w) if mode == "scrolling" else 0
        mean = base.mean(axis=0)
        for _ in range(2000):  # a spot whose whole path lies mostly on the fan (dark text: on
            y, x = int(rng.integers(0, hgt - h + 1)), int(rng.integers(0, wid - w - travel + 1))
            if fan[y:y + h, x:x + w + travel].mean() >= 0.9 and (  # tissue, not blood, where
                    mode != "dark" or np.median(mean[y:y + h, x:x + w]) >= DARK_ON):  # it shows)
                break
        shown = _shown_frames(n, rng) if mode == "intermittent" else np.ones(n, dtype=bool)
        if mode == "scrolling":
            shown[:] = False
            start = int(rng.integers(0, n - run + 1))
            shown[start:start + run] = True
        glyphs = np.zeros((hgt, wid), dtype=bool)
        for t in np.flatnonzero(shown):
            dx = max(travel - int(round(SCROLL_PX * (t - np.flatnonzero(shown)[0]))), 0)
            a = np.zeros((hgt, wid), dtype=np.float32)
            a[y:y + h, x + dx:x + dx + w] = alpha
            if mode == "dark":
                level = float(rng.integers(0, 26))
            elif mode in ("rotated", "mirrored"):
                level = 230.0 if t % 2 else 150.0
            else:
                level = float(rng.integers(200, 256))
            frames[t] = frames[t] * (1 - a) + level * a
            glyphs |= a >= 0.5
        frames = np.clip(np.round(frames), 0, 255).astype(np.uint8)
        if codec == "jpeg":
            for t in range(n):
                buf = io.BytesIO()
                Image.fromarray(frames[t]).save(buf, format="JPEG", quality=75)
                frames[t] = np.asarray(Image.open(buf).convert("L"))
        planted.append(Moving(len(out), mode, height, content, codec, glyphs, text,
                              tuple(int(t) for t in np.flatnonzero(shown))))
        out.append(frames)
    return out, planted


SLIDING_MODES = ("vertical", "slow")
VERTICAL_PX = (1.0, 6.0)  # output pixels a frame, up or down
SLOW_PX = (0.25, 1.0)  # output pixels a frame, sideways or vertically, or in steps
SLOW_PATHS = ("sideways", "vertical", "steps")
SLIDE_TRAVEL = 60  # output pixels: a string is shown while it moves at most this far


@dataclass(frozen=True)
class Sliding(Moving):
    """A string of `sliding_set`: how it moves (``path``) and how fast (output px a frame)."""

    path: str = ""  # up, down (vertical); sideways, vertical, steps (slow)
    speed: float = 0.0


def _away_run(n: int, run: int, rng: np.random.Generator) -> tuple[int, int]:
    """(start, length) of a run of ``run`` frames (fewer when it does not fit) that holds
    neither the first, the middle nor the last frame, the frames the detector samples."""
    avoid = {0, (n - 1) // 2, n // 2, n - 1}
    while run > 2:
        starts = [s for s in range(1, n - run) if not avoid & set(range(s, s + run))]
        if starts:
            return int(starts[rng.integers(len(starts))]), run
        run -= 1
    return 1, 2


def sliding_set(clips: list[np.ndarray], seed: int = 23) -> tuple[list[np.ndarray], list[Sliding]]:
    """Text that moves vertically or slowly (issue 22), one string a clip, for every mode x
    glyph height x content x codec (deterministic), bright (200-255), shown in a run of up to
    `SCROLL_FRAMES` frames (while it moves at most `SLIDE_TRAVEL` pixels) that holds none of the
    frames the detector samples (the first, middle and last):

    * ``vertical``: up or down (in turn), 1-6 output pixels a frame (credits);
    * ``slow``: 0.25-1 output pixels a frame, sideways (left or right), vertically (up or down),
      or in ``steps`` (1-4 pixels every 3-6 frames, sideways or vertically).

    Sub-pixel positions are drawn by bilinear interpolation of the glyphs' coverage (as a
    resampled video shows them). ``jpeg``: every frame then JPEG-coded (quality 75)."""
    import io

    from PIL import Image
    from scipy.ndimage import shift as subpixel_shift

    rng = np.random.default_rng(seed)
    fonts = {h: font_for_height(h) for h in MOTION_HEIGHTS}
    out, planted = [], []
    combos = [(m, h, c, k) for m in SLIDING_MODES for h in MOTION_HEIGHTS
              for c in MOTION_CONTENTS for k in CODECS]
    for i, (mode, height, content, codec) in enumerate(combos):
        base = clips[i % len(clips)]
        frames = base.astype(np.float32)
        n, hgt, wid = frames.shape
        fan = base.max(axis=0) > 0
        text = _text(content, rng)
        alpha = _coverage(text, fonts[height], (4 * height, wid))
        h, w = alpha.shape
        sign = 1 if (i // 2) % 2 else -1  # up/left, down/right in turn (raw and JPEG alike)
        if mode == "vertical":
            path, speed = ("down" if sign > 0 else "up"), float(rng.uniform(*VERTICAL_PX))
        else:
            path, speed = SLOW_PATHS[(i // 2) % 3], float(rng.uniform(*SLOW_PX))
        vertical = path in ("up", "down") or path == "vertical" or (
            path == "steps" and (i // 6) % 2 == 1)
        every = int(rng.integers(3, 7)) if path == "steps" else 1
        jump = max(1, int(round(speed * every))) if path == "steps" else speed
        offset = [float(jump * (k // every)) for k in range(n)]  # pixels moved k frames in
        run = min(n // 2, SCROLL_FRAMES, 1 + int(SLIDE_TRAVEL / speed))
        start, run = _away_run(n, run, rng)
        travel = int(np.ceil(offset[run - 1])) + 1
        ph, pw = (h + travel, w) if vertical else (h, w + travel)
        best, spot = -1.0, (0, 0)
        for _ in range(2000):  # a spot whose whole path lies on the fan, or the best one tried
            y, x = int(rng.integers(0, max(hgt - ph, 0) + 1)), int(rng.integers(0, max(wid - pw, 0) + 1))
            share = fan[y:y + ph, x:x + pw].mean()
            if share > best:
                best, spot = share, (y, x)
            if share >= 0.9:
                break
        y, x = spot
        glyphs = np.zeros((hgt, wid), dtype=bool)
        shown = range(start, start + run)
        for k, t in enumerate(shown):
            d = offset[k] if sign > 0 else travel - 1 - offset[k]
            a = np.zeros((hgt, wid), dtype=np.float32)
            a[y:y + h, x:x + w] = alpha
            a = np.clip(subpixel_shift(a, (d, 0) if vertical else (0, d), order=1), 0, 1)
            frames[t] = frames[t] * (1 - a) + float(rng.integers(200, 256)) * a
            glyphs |= a >= 0.5
        frames = np.clip(np.round(frames), 0, 255).astype(np.uint8)
        if codec == "jpeg":
            for t in range(n):
                buf = io.BytesIO()
                Image.fromarray(frames[t]).save(buf, format="JPEG", quality=75)
                frames[t] = np.asarray(Image.open(buf).convert("L"))
        planted.append(Sliding(len(out), mode, height, content, codec, glyphs, text,
                               tuple(shown), path=path, speed=speed))
        out.append(frames)
    return out, planted


READ_MIN = 4  # characters of a planted string a read must hold, in order, to count as reading it


def readable(motion_clips: list[np.ndarray], motion: list[Moving], seed: int = 22) -> list[bool]:
    """Whether a reader of its own reads each planted string in the UNPROTECTED clip: RapidOCR's
    whole pipeline (angle classifier on, as the privacy tests' reader), every frame the string
    is drawn in, 4x bicubic, cropped to the string's path grown by 8 pixels; turned and mirrored
    copies too for the turned and mirrored modes. Read = the read text (letters and digits,
    upper case) holds `READ_MIN` consecutive characters of the planted string. A string no
    reader reads is not a leak: ``readable recall`` counts the others. Cached (~30 CPU min)."""
    import json
    import logging
    import re

    from PIL import Image
    from rapidocr_onnxruntime import RapidOCR

    path = os.path.join(CACHE, f"readable-{seed}-{len(motion)}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    logging.getLogger("RapidOCR").setLevel(logging.ERROR)
    ocr = RapidOCR(use_cls=True)
    out = []
    for p in motion:
        want = re.sub(r"[^A-Z0-9]", "", p.text.upper())
        parts = {want[i:i + READ_MIN] for i in range(max(len(want) - READ_MIN + 1, 1))}
        ys, xs = np.nonzero(p.glyphs_HW)
        frames = motion_clips[p.clip]
        rows = slice(max(ys.min() - 8, 0), ys.max() + 9)
        cols = slice(max(xs.min() - 8, 0), xs.max() + 9)
        turned = p.mode in ("rotated", "mirrored")
        hit = False
        for t in p.shown:
            crop = frames[t, rows, cols]
            big = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(
                (crop.shape[1] * 4, crop.shape[0] * 4), Image.Resampling.BICUBIC))
            for image in (big, big[::-1, ::-1], big[:, ::-1], big[::-1, :]) if turned else (big,):
                result, _ = ocr(np.repeat(np.ascontiguousarray(image)[..., None], 3, axis=-1))
                read = re.sub(r"[^A-Z0-9]", "", "".join(str(r[1]) for r in result or []).upper())
                if any(part in read for part in parts):
                    hit = True
                    break
            if hit:
                break
        out.append(hit)
    os.makedirs(CACHE, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace(path + ".tmp", path)
    return out


STRONGER_FRAMES = 8  # frames the stronger reader reads stretched (evenly spaced over the shown)


def sample_frames(n: int, k: int) -> np.ndarray:
    """``k`` evenly spaced indices of ``n`` (all when ``n`` <= ``k``)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def stretched_views(crop_HW: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Contrast-stretched copies of a 4x crop, as a reader would try on a faint string: the
    1st-99th percentile stretched to 0-255, that inverted, and a local histogram equalisation
    (CLAHE, 8x8 tiles, clip 3) of the crop, inverted too."""
    import cv2

    crop = crop_HW.astype(np.float32)
    lo, hi = np.percentile(crop, (1, 99))
    stretched = np.clip((crop - lo) * 255 / max(hi - lo, 1.0), 0, 255).astype(np.uint8)
    clahe = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(crop_HW)
    return [("stretch", stretched), ("stretch inverted", 255 - stretched),
            ("clahe", clahe), ("clahe inverted", 255 - clahe)]


def stronger_reads(frames_THW: np.ndarray, glyphs_HW: np.ndarray, text: str,
                   shown: tuple[int, ...], turned: bool, ocr) -> tuple[str, str] | None:
    """(image, what was read) of the first read of ``text`` by the stronger reader, or None.

    Images, cropped to the string's path grown by 8 pixels and enlarged 4x (bicubic): the
    clip's per-pixel temporal minimum, maximum, median and mean over the frames the string is
    drawn in, each as it is and in each of `stretched_views`; then every frame it is drawn in,
    in each of `stretched_views` (the frames as they are: `readable`). ``turned``: each image
    turned 180° and mirrored either way as well."""
    import re

    from PIL import Image

    want = re.sub(r"[^A-Z0-9]", "", text.upper())
    parts = {want[i:i + READ_MIN] for i in range(max(len(want) - READ_MIN + 1, 1))}
    ys, xs = np.nonzero(glyphs_HW)
    rows = slice(max(ys.min() - 8, 0), ys.max() + 9)
    cols = slice(max(xs.min() - 8, 0), xs.max() + 9)
    clip = frames_THW[list(shown), rows, cols]

    def big(image):
        image = np.ascontiguousarray(np.clip(np.round(image), 0, 255).astype(np.uint8))
        return np.asarray(Image.fromarray(image).resize(
            (image.shape[1] * 4, image.shape[0] * 4), Image.Resampling.BICUBIC))

    def images():
        for name, image in (("min", clip.min(axis=0)), ("max", clip.max(axis=0)),
                            ("median", np.median(clip, axis=0)), ("mean", clip.mean(axis=0))):
            yield f"temporal {name}", big(image)
            for how, view in stretched_views(big(image)):
                yield f"temporal {name}, {how}", view
        picks = sample_frames(len(shown), STRONGER_FRAMES)
        for t, frame in zip(np.asarray(shown)[picks], clip[picks], strict=True):
            for how, view in stretched_views(big(frame)):
                yield f"frame {t}, {how}", view

    for name, image in images():
        for flip in (image, image[::-1, ::-1], image[:, ::-1], image[::-1, :]) if turned \
                else (image,):
            result, _ = ocr(np.repeat(np.ascontiguousarray(flip)[..., None], 3, axis=-1))
            read = "".join(str(r[1]) for r in result or [])
            if any(part in re.sub(r"[^A-Z0-9]", "", read.upper()) for part in parts):
                return name, read
    return None


def readable_stronger(motion_clips: list[np.ndarray], motion: list[Moving],
                      seed: int = 22, plain_first: bool = True) -> list[bool]:
    """`readable`, and for each string it does not read, the stronger reader's passes
    (`stronger_reads`: temporal minimum, maximum, median and mean, and every frame the string
    is drawn in, contrast-stretched, CLAHE-equalised and inverted; RapidOCR's whole pipeline
    with its angle classifier, 4x), for strings of 8 px and more (the readable recall's;
    ``plain_first`` False: the stronger reader's passes alone, on every such string). A
    string is readable when either reads it. Cached; prints
    what the stronger reader read, and where, for each string only it reads."""
    import json
    import logging

    from rapidocr_onnxruntime import RapidOCR

    plain = readable(motion_clips, motion, seed) if plain_first else [False] * len(motion)
    path = os.path.join(CACHE, f"readable-stronger-{seed}-{len(motion)}"
                               f"{'' if plain_first else '-alone'}.json")
    if os.path.exists(path):
        with open(path) as f:
            extra = {int(k): v for k, v in json.load(f).items()}
    else:
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        ocr = RapidOCR(use_cls=True)
        extra = {j: stronger_reads(motion_clips[p.clip], p.glyphs_HW, p.text, p.shown,
                                   p.mode in ("rotated", "mirrored"), ocr)
                 for j, p in enumerate(motion) if not plain[j] and p.height >= 8}
        os.makedirs(CACHE, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(extra, f)
        os.replace(path + ".tmp", path)
    for j, hit in sorted(extra.items()):
        if hit:
            p = motion[j]
            print(f"  read by the stronger reader only: clip {p.clip} {p.mode} {p.height} px "
                  f"{p.content} {p.codec}: {hit[1]!r} ({hit[0]})")
    return [bool(plain[j] or extra.get(j)) for j in range(len(motion))]


DARK_GROUNDS = {"blood": (0, 30), "dim tissue": (30, DARK_ON)}  # median temporal mean under it


def dark_set(clips: list[np.ndarray], seed: int = 23) -> tuple[list[np.ndarray], list[Moving]]:
    """Dark text where the motion set's ``dark`` strings mostly are not: one string a clip, grey
    0-25 in every frame (as ``dark``), over the blood pool (the median of the temporal mean
    under its box below 30) or over dim tissue (30 to `DARK_ON`), every glyph height x content
    x codec x ground (48 strings; mode ``dark <ground>``). A combination with no such spot on
    its clip is tried on the next clips; one that fits none is left out (listed). Deterministic."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    fonts = {h: font_for_height(h) for h in MOTION_HEIGHTS}
    out, planted, start = [], [], 0
    for ground, (low, high) in DARK_GROUNDS.items():
        for height in MOTION_HEIGHTS:
            for content in MOTION_CONTENTS:
                for codec in CODECS:
                    text = _text(content, rng)
                    alpha = _coverage(text, fonts[height], (4 * height, 144))
                    h, w = alpha.shape
                    spot = None
                    for k in range(len(clips)):
                        base = clips[(start + k) % len(clips)]
                        n, hgt, wid = base.shape
                        fan, mean = base.max(axis=0) > 0, base.mean(axis=0)
                        for _ in range(400):
                            y = int(rng.integers(0, hgt - h + 1))
                            x = int(rng.integers(0, wid - w + 1))
                            if fan[y:y + h, x:x + w].mean() >= 0.9 and \
                                    low <= np.median(mean[y:y + h, x:x + w]) < high:
                                spot = base, y, x
                                break
                        if spot:
                            break
                    start += 1
                    if spot is None:
                        print(f"  dark set: no spot for {ground} {height} px {content} {codec}")
                        continue
                    base, y, x = spot
                    a = np.zeros(base.shape[1:], dtype=np.float32)
                    a[y:y + h, x:x + w] = alpha
                    level = float(rng.integers(0, 26))
                    frames = np.clip(np.round(base * (1 - a) + level * a), 0, 255).astype(np.uint8)
                    if codec == "jpeg":
                        for t in range(len(frames)):
                            buf = io.BytesIO()
                            Image.fromarray(frames[t]).save(buf, format="JPEG", quality=75)
                            frames[t] = np.asarray(Image.open(buf).convert("L"))
                    planted.append(Moving(len(out), f"dark {ground}", height, content, codec,
                                          a >= 0.5, text, tuple(range(len(frames)))))
                    out.append(frames)
    return out, planted


def report_dark_set(rows: list[dict], dark: list[Moving], legible: list[bool] | None) -> None:
    """Recall on `dark_set` (row key ``dark``): per ground x glyph height, per codec, and for
    8 px and more raw and readable (the stronger reader, `readable_stronger`)."""
    if not dark:
        return

    def share(row, idx):
        return sum(row["dark"][j] for j in idx) / len(idx) if idx else float("nan")

    print(f"\ndark text over blood and dim tissue (`dark_set`): {len(dark)} strings, one a clip")
    print(f"{'setting':<36} {'CPU s/clip':>10} {'recall':>7} {'recall >= 8 px':>14}")
    big = [j for j, p in enumerate(dark) if p.height >= 8]
    for row in rows:
        print(f"{row['name']:<36} {row['dark_cpu']:>10.3f} {share(row, range(len(dark))):>7.1%} "
              f"{share(row, big):>14.1%}")
    groups = ([(f"{g} h{h}", dict(mode=f"dark {g}", height=h)) for g in DARK_GROUNDS
               for h in MOTION_HEIGHTS] + [(k, dict(codec=k)) for k in CODECS])
    print(f"{'bucket':<17} {'n':>3} " + " ".join(f"{i:>5}" for i in range(len(rows))))
    for label, where in groups:
        idx = [j for j, p in enumerate(dark) if all(getattr(p, k) == v for k, v in where.items())]
        print(f"{label:<17} {len(idx):>3} " + " ".join(f"{share(r, idx):>5.0%}" for r in rows))
    if legible is not None:
        read = [j for j in big if legible[j]]
        print(f"8 px and more: {len(big)} strings, {len(read)} read by the stronger reader in the "
              f"unprotected clip; readable recall " + ", ".join(
                  f"{i}: {share(r, read):.1%}" for i, r in enumerate(rows)))
    for i, row in enumerate(rows):
        for j in big:
            if not row["dark"][j]:
                p = dark[j]
                print(f"  {i} misses: dark-set clip {p.clip} {p.mode} {p.height} px {p.content} "
                      f"{p.codec}" + ("" if legible is None else
                                      f" ({'readable' if legible[j] else 'not read by the reader'})"))
    print("columns: " + "; ".join(f"{i} = {r['name']}" for i, r in enumerate(rows)))


def measure_dark(row: dict, fields: dict, dark_clips: list[np.ndarray],
                 dark: list[Moving]) -> None:
    """Add the dark set's masks (``dark``: found or not per string) and CPU s per clip to a
    `measure` row."""
    from echocmr.ingest.config import TextDetectorConfig
    from echocmr.ingest.text_detector import find_text

    config = TextDetectorConfig(**fields)
    cpu = time.process_time()
    masks = [find_text(frames, config).mask_HW for frames in dark_clips]
    row["dark_cpu"] = (time.process_time() - cpu) / max(len(dark_clips), 1)
    row["dark"] = [bool(masks[p.clip][p.glyphs_HW].mean() >= FOUND) for p in dark]


def clean_set(clips: list[np.ndarray]) -> list[np.ndarray]:
    """Each clip whole, without its first third and without its last third."""
    return [v for c in clips for v in (c, c[len(c) // 3:], c[:len(c) - len(c) // 3])]


def measure(name: str, fields: dict, planted_clips, planted, clean, motion_clips=(),
            motion=(), sliding_clips=(), sliding=()) -> dict:
    from echocmr.ingest.config import TextDetectorConfig
    from echocmr.ingest.text_detector import find_text

    config = TextDetectorConfig(**fields)
    find_text(clean[0], config)  # load the model, warm the shapes
    cpu, wall = time.process_time(), time.perf_counter()
    masks = [find_text(frames, config).mask_HW for frames in planted_clips]
    false_boxes = sum(find_text(frames, config).boxes for frames in clean)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    motion_cpu = time.process_time()
    moving = [find_text(frames, config).mask_HW for frames in motion_clips]
    motion_cpu = time.process_time() - motion_cpu
    sliding_cpu = time.process_time()
    slid_masks = [find_text(frames, config).mask_HW for frames in sliding_clips]
    sliding_cpu = time.process_time() - sliding_cpu
    found = [bool(masks[p.clip][p.glyphs_HW].mean() >= FOUND) for p in planted]
    moved = [bool(moving[p.clip][p.glyphs_HW].mean() >= FOUND) for p in motion]
    n = len(planted_clips) + len(clean)
    return dict(name=name, found=found, moved=moved, false_boxes=false_boxes, cpu=cpu / n,
                wall=wall / n, motion_cpu=motion_cpu / max(len(motion_clips), 1),
                slid=[bool(slid_masks[p.clip][p.glyphs_HW].mean() >= FOUND) for p in sliding],
                sliding_cpu=sliding_cpu / max(len(sliding_clips), 1))


def _recall(row: dict, planted: list[Planted], **where) -> tuple[int, int]:
    hits = [f for f, p in zip(row["found"], planted, strict=True)
            if all(getattr(p, k) == v for k, v in where.items())]
    return sum(hits), len(hits)


def report(rows: list[dict], planted: list[Planted], n_clean: int) -> None:
    base = rows[0]
    buckets = [dict(height=h, contrast=c) for h in HEIGHTS for c in CONTRASTS]

    def share(row, **where):
        hit, n = _recall(row, planted, **where)
        return hit / n

    print(f"\n{len(planted)} planted strings in {1 + max(p.clip for p in planted)} clips; "
          f"false boxes over {n_clean} clean clips; found = mask covers >= {FOUND:.0%} of glyphs")
    head = (f"{'setting':<26} {'CPU s/clip':>10} {'wall':>6} {'speed-up':>8} {'recall':>7} "
            f"{'worst bucket':>12} {'false boxes':>11}")
    print(head)
    print("-" * len(head))
    for row in rows:
        worst = min(share(row, **b) - share(base, **b) for b in buckets)
        print(f"{row['name']:<26} {row['cpu']:>10.3f} {row['wall']:>6.3f} "
              f"{base['cpu'] / row['cpu']:>7.2f}x {sum(row['found']) / len(planted):>7.1%} "
              f"{worst:>+12.1%} {row['false_boxes']:>11d}")
    print("\nrecall by glyph height x contrast (and by position, content), setting by setting:")
    groups = ([(f"h{b['height']} {b['contrast']}", b) for b in buckets]
              + [(p, dict(position=p)) for p in POSITIONS] + [(c, dict(content=c)) for c in CONTENTS])
    print(f"{'bucket':<12} {'n':>3} " + " ".join(f"{i:>5}" for i in range(len(rows))))
    for label, where in groups:
        n = _recall(base, planted, **where)[1]
        print(f"{label:<12} {n:>3} " + " ".join(f"{share(r, **where):>5.0%}" for r in rows))
    print("columns: " + "; ".join(f"{i} = {r['name']}" for i, r in enumerate(rows)))


def _readable_table(rows: list[dict], found: str, strings: list, modes, legible: list[bool]
                    ) -> None:
    """Per mode and over all, the strings of 8 px and more: how many, how many the reader read
    unprotected, and per row the raw recall (``row[found]``) and the recall among those read."""
    print(f"{'bucket':<13} {'n':>3} {'readable':>8} " + " ".join(
        f"{f'{i} raw':>6} {f'{i} read':>6}" for i in range(len(rows))))
    for label, where in [(m, dict(mode=m)) for m in modes] + [("all", {})]:
        idx = [j for j, p in enumerate(strings) if p.height >= 8
               and all(getattr(p, k) == v for k, v in where.items())]
        read = [j for j in idx if legible[j]]
        cells = []
        for r in rows:
            raw = sum(r[found][j] for j in idx) / len(idx)
            ok = sum(r[found][j] for j in read) / len(read) if read else float("nan")
            cells.append(f"{raw:>6.1%} {ok:>6.1%}")
        print(f"{label:<13} {len(idx):>3} {len(read):>8} " + " ".join(cells))


def report_motion(rows: list[dict], motion: list[Moving], legible: list[bool] | None = None) -> None:
    """Recall on the text that is not still, by mode x glyph height, then by content and codec;
    with ``legible`` (`readable`), the readable recall beside it: of the strings of 8 px and
    more that a reader of its own reads in the unprotected clip, the share masked."""
    if not motion:
        return

    def share(row, **where):
        hits = [f for f, p in zip(row["moved"], motion, strict=True)
                if all(getattr(p, k) == v for k, v in where.items())]
        return sum(hits) / len(hits), len(hits)

    print(f"\ntext that is not still: {len(motion)} strings, one a clip "
          f"(found = the mask covers >= {FOUND:.0%} of the pixels its glyphs cover in any frame)")
    print(f"{'setting':<36} {'CPU s/clip':>10} {'recall':>7} {'recall >= 8 px':>14}")
    for row in rows:
        big = [f for f, p in zip(row["moved"], motion, strict=True) if p.height >= 8]
        print(f"{row['name']:<36} {row['motion_cpu']:>10.3f} "
              f"{sum(row['moved']) / len(motion):>7.1%} {sum(big) / len(big):>14.1%}")
    groups = ([(f"{m} h{h}", dict(mode=m, height=h)) for m in MODES for h in MOTION_HEIGHTS]
              + [(m, dict(mode=m)) for m in MODES] + [(c, dict(content=c)) for c in MOTION_CONTENTS]
              + [(k, dict(codec=k)) for k in CODECS])
    print(f"{'bucket':<17} {'n':>3} " + " ".join(f"{i:>5}" for i in range(len(rows))))
    for label, where in groups:
        print(f"{label:<17} {share(rows[0], **where)[1]:>3} "
              + " ".join(f"{share(r, **where)[0]:>5.0%}" for r in rows))
    print("columns: " + "; ".join(f"{i} = {r['name']}" for i, r in enumerate(rows)))
    if legible is None:
        return
    print("\nraw recall and readable recall, 8 px and more (readable: strings a reader of its own "
          "reads in the unprotected clip: `readable`, then the stronger reader, "
          "`readable_stronger`: temporal min/max/median/mean and frames, stretched, "
          "CLAHE-equalised, inverted):")
    _readable_table(rows, "moved", motion, MODES, legible)
    unread = [p for j, p in enumerate(motion) if p.height >= 8 and not legible[j]]
    for p in unread:
        print(f"  not read by the reader: clip {p.clip} {p.mode} {p.height} px {p.content} {p.codec}")


def report_sliding(rows: list[dict], sliding: list[Sliding],
                   legible: list[bool] | None = None) -> None:
    """Recall on the text that moves vertically or slowly (`sliding_set`), by mode x glyph
    height, path, content and codec; with ``legible``, the raw and readable recall of the
    strings of 8 px and more, as `report_motion` prints them."""
    if not sliding:
        return

    def share(row, **where):
        hits = [f for f, p in zip(row["slid"], sliding, strict=True)
                if all(getattr(p, k) == v for k, v in where.items())]
        return sum(hits) / max(len(hits), 1), len(hits)

    print(f"\ntext that moves vertically or slowly: {len(sliding)} strings, one a clip, in none "
          f"of the sampled frames (found = the mask covers >= {FOUND:.0%} of the pixels its "
          f"glyphs cover in any frame)")
    print(f"{'setting':<36} {'CPU s/clip':>10} {'recall':>7} {'recall >= 8 px':>14}")
    for row in rows:
        big = [f for f, p in zip(row["slid"], sliding, strict=True) if p.height >= 8]
        print(f"{row['name']:<36} {row['sliding_cpu']:>10.3f} "
              f"{sum(row['slid']) / len(sliding):>7.1%} {sum(big) / len(big):>14.1%}")
    paths = ("up", "down") + SLOW_PATHS
    groups = ([(f"{m} h{h}", dict(mode=m, height=h)) for m in SLIDING_MODES for h in MOTION_HEIGHTS]
              + [(m, dict(mode=m)) for m in SLIDING_MODES]
              + [(f"{'slow ' if p in SLOW_PATHS else ''}{p}",
                  dict(path=p, mode="slow" if p in SLOW_PATHS else "vertical")) for p in paths]
              + [(c, dict(content=c)) for c in MOTION_CONTENTS] + [(k, dict(codec=k)) for k in CODECS])
    print(f"{'bucket':<17} {'n':>3} " + " ".join(f"{i:>5}" for i in range(len(rows))))
    for label, where in groups:
        print(f"{label:<17} {share(rows[0], **where)[1]:>3} "
              + " ".join(f"{share(r, **where)[0]:>5.0%}" for r in rows))
    print("columns: " + "; ".join(f"{i} = {r['name']}" for i, r in enumerate(rows)))
    for r in rows:
        missed = [p for f, p in zip(r["slid"], sliding, strict=True) if not f and p.height >= 8]
        for p in missed:
            print(f"  missed by {r['name']}: clip {p.clip} {p.mode} {p.path} {p.speed:.2f} px/frame "
                  f"{p.height} px {p.content} {p.codec}")
    if legible is None:
        return
    print("\nraw recall and readable recall, 8 px and more (readable: strings a reader of its own "
          "reads in the unprotected clip, `readable`):")
    _readable_table(rows, "slid", sliding, SLIDING_MODES, legible)
    for j, p in enumerate(sliding):
        if p.height >= 8 and not legible[j]:
            print(f"  not read by the reader: clip {p.clip} {p.mode} {p.path} {p.height} px "
                  f"{p.content} {p.codec}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="*", default=None,
                        help="names of settings to run after the first (default: all)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="times each height x contrast x position x content combination is planted")
    parser.add_argument("--yardstick", default=None,
                        help="the setting the others are compared with (default: the first)")
    parser.add_argument("--no-motion", action="store_true",
                        help="leave out the text that is not still (intermittent, scrolling, ...)")
    parser.add_argument("--no-readable", action="store_true",
                        help="leave out the readable recall (its reader's pass, cached, ~2 CPU min)")
    parser.add_argument("--no-dark-set", action="store_true",
                        help="leave out the dark text over blood and dim tissue (`dark_set`)")
    parser.add_argument("--no-still", action="store_true",
                        help="leave out the still strings (the clean clips' false boxes stay)")
    parser.add_argument("--no-sliding", action="store_true",
                        help="leave out the text that moves vertically or slowly")
    args = parser.parse_args(argv)
    clips = prepared_clips()
    planted_clips, planted = planted_set(clips, repeats=args.repeats) if not args.no_still \
        else ([], [])
    clean = clean_set(clips)
    motion_clips, motion = motion_set(clips) if not args.no_motion else ([], [])
    sliding_clips, sliding = sliding_set(clips) if not args.no_sliding else ([], [])
    dark_clips, dark = dark_set(clips) if not args.no_dark_set else ([], [])
    names = list(SETTINGS)
    first = args.yardstick or names[0]
    unknown = set(args.settings or []) - set(names) | ({first} - set(names))
    if unknown:
        raise SystemExit(f"unknown setting(s) {sorted(unknown)}; known: {names}")
    names = [first] + [n for n in names if n != first
                       and (not args.settings or n in args.settings)]
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the start", flush=True)
    rows = []
    for name in names:
        rows.append(measure(name, SETTINGS[name], planted_clips, planted, clean, motion_clips,
                            motion, sliding_clips, sliding))
        if dark:
            measure_dark(rows[-1], SETTINGS[name], dark_clips, dark)
        print(f"  {name}: {rows[-1]['cpu']:.3f} CPU s/clip, recall "
              f"{sum(rows[-1]['found']) / max(len(planted), 1):.1%}, false boxes "
              f"{rows[-1]['false_boxes']} on {len(clean)} clean clips", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end")
    if planted:
        report(rows, planted, len(clean))
    legible = readable_stronger(motion_clips, motion) if motion and not args.no_readable else None
    report_motion(rows, motion, legible)
    legible = readable_stronger(sliding_clips, sliding, seed=23) \
        if sliding and not args.no_readable else None
    report_sliding(rows, sliding, legible)
    legible = readable_stronger(dark_clips, dark, seed=23, plain_first=False) \
        if dark and not args.no_readable else None
    report_dark_set(rows, dark, legible)


if __name__ == "__main__":
    main()
