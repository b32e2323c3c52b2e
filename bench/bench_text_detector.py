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

Run: ``.venv/bin/python -m bench.bench_text_detector [--settings NAME ...] [--repeats 2]``.
About 1 CPU-minute per setting.
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
SETTINGS = {
    "old default (4x, det 736)": dict(upscale=4, detector_side=736, crop_to_content=False),
    "4x, det as is": dict(upscale=4, detector_side=0, crop_to_content=False),
    "3x, det as is": dict(upscale=3, detector_side=0, crop_to_content=False),
    "5x, det as is": dict(upscale=5, detector_side=0, crop_to_content=False),
    "6x, det as is": dict(upscale=6, detector_side=0, crop_to_content=False),
    "2x, det as is": dict(upscale=2, detector_side=0, crop_to_content=False),
    "default (4x, as is, crop)": dict(upscale=4, detector_side=0, crop_to_content=True),
    "3x, as is, crop": dict(upscale=3, detector_side=0, crop_to_content=True),
    "4x, as is, mosaic": dict(upscale=4, detector_side=0, crop_to_content=False, mosaic=True),
    "3x, as is, crop, mosaic": dict(upscale=3, detector_side=0, crop_to_content=True, mosaic=True),
    "4x, det 736, crop": dict(upscale=4, detector_side=736, crop_to_content=True),
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


def clean_set(clips: list[np.ndarray]) -> list[np.ndarray]:
    """Each clip whole, without its first third and without its last third."""
    return [v for c in clips for v in (c, c[len(c) // 3:], c[:len(c) - len(c) // 3])]


def measure(name: str, fields: dict, planted_clips, planted, clean) -> dict:
    from echocmr.ingest.config import TextDetectorConfig
    from echocmr.ingest.text_detector import find_text

    config = TextDetectorConfig(**fields)
    find_text(clean[0], config)  # load the model, warm the shapes
    cpu, wall = time.process_time(), time.perf_counter()
    masks = [find_text(frames, config).mask_HW for frames in planted_clips]
    false_boxes = sum(find_text(frames, config).boxes for frames in clean)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    found = [bool(masks[p.clip][p.glyphs_HW].mean() >= FOUND) for p in planted]
    return dict(name=name, found=found, false_boxes=false_boxes,
                cpu=cpu / (len(planted_clips) + len(clean)),
                wall=wall / (len(planted_clips) + len(clean)))


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="*", default=None,
                        help="names of settings to run after the first (default: all)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="times each height x contrast x position x content combination is planted")
    args = parser.parse_args(argv)
    clips = prepared_clips()
    planted_clips, planted = planted_set(clips, repeats=args.repeats)
    clean = clean_set(clips)
    names = list(SETTINGS)
    if args.settings:
        unknown = set(args.settings) - set(names)
        if unknown:
            raise SystemExit(f"unknown setting(s) {sorted(unknown)}; known: {names}")
        names = [names[0]] + [n for n in names[1:] if n in args.settings]
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the start", flush=True)
    rows = []
    for name in names:
        rows.append(measure(name, SETTINGS[name], planted_clips, planted, clean))
        print(f"  {name}: {rows[-1]['cpu']:.3f} CPU s/clip, recall "
              f"{sum(rows[-1]['found']) / len(planted):.1%}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end")
    report(rows, planted, len(clean))


if __name__ == "__main__":
    main()
