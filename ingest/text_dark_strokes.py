"""Where a clip holds thin dark strokes that stay dark in every frame, as lines of text: the text
detector's proposals for dark burned-in text over the blood pool and dim tissue
(`ingest.text_detector`, ``dark_strokes``).

Dark text in every frame is dark in the clip's per-pixel temporal maximum while what surrounds
it is at its brightest (`ingest.text_dark`). The detector model boxes little of it where that
surround is dim (the blood pool, a dim wall: a few tens of grey levels at the bottom of the
range), although the strokes are plain to see. So the strokes are found by arithmetic and only
the recogniser reads them:

1. a pixel of a **dark stroke** lies at least `MIN_DEPTH` grey levels, and at least `MIN_RATIO`
   of the level, below the maximum's grey closing over `CLOSING` x `CLOSING` (a black top-hat:
   strokes up to 2 pixels wide; the relative test keeps the pool's dark strokes, whose depth is
   small, and drops speckle's shallow pits over tissue);
2. the share of such pixels in a `WINDOW` (a line of text: 10 rows x 40 columns) is the
   window's density; the densest windows, one a line, are grown along their rows while strokes
   follow within `GAP` pixels (`dark_lines`);
3. each line's crop is divided by its local bright level (a `LEVEL` x `LEVEL` grey closing:
   `dark_view`), so the text is dark on white whatever the ground, and read by the recogniser
   alone; a read of two characters or more is text, and the detector masks the line's rows
   across the content (the read often holds part of the line);
4. (``dark_stroke_rereads``) a line that reads as two characters or more, but below the score,
   is read again on its **core rows** (`core_rows`: the rows holding at least `CORE_SHARE` of
   its fullest row's strokes, the glyphs' band without the rows of dark texture the box takes
   in above and below: the recogniser scales a crop to a fixed height, so in a box twice the
   text's height it reads glyphs half their size), in the maximum and then in the clip's
   temporal median (each frame's codec ringing averaged out, where the maximum keeps the
   brightest of it over the glyphs).

Weighed on `bench/bench_text_detector.py`'s 54 dark strings of 8 px and more (the motion set's
``dark`` bucket over tissue, the dark set over blood and dim tissue; throwaway scripts calling
the bench's sets, 2026-12-06, docs/benchmarks.md "Dark text, fourth pass"): the densest window
lies on the string for 52 of them and one of the 2 densest for 53 (a 5 x 5 closing: 44 and 49;
7 x 7: 36 and 43). The detector model on those lines' crops (the maximum as it is, stretched or
inverted) read 13-14 of the 54; the recogniser alone on `dark_view` of the 3 densest lines,
a read at confidence 0.5 or more masking the line, 47 (17, 15 and 15 of 18), with no read of
two characters at more than 0.44 on the 54 clean clips. What it does not see: a string whose
strokes are not `MIN_RATIO` below their surround's maximum (the pool's speckle peaking at the
text's level: one 8-px JPEG string of the dark set has density 0.05 on its glyphs), a line that
is not among the densest ``dark_strokes`` (a clip with more dark lines than that, or tissue
with denser dark texture), and text dark in some frames only (the maximum takes the frames
without it).

JPEG (the dark set's strings of 8 px and more, per-miss diagnostics, 2026-12-06): of the 6
the steps above missed, 5 JPEG, 5 (4 JPEG, 1 raw) had a line among the 2 densest over the
string, read in part (two characters or more at 0.26-0.49: a box of 17-20 rows round an 8-10 px
string; the codec's ringing peaking over the glyphs in the maximum); their core rows in the
maximum or the median read at 0.5 or more. The clean
clips' best read of two characters or more there stays 0.44. The fifth, an 8 px name at grey ~6
in the maximum over a pool whose maximum is ~11, is 5 levels deep: under `MIN_DEPTH`, no line
(at a depth of 4 it is the second densest line, but reads at 0.45; one or two more lines from
depths 4-6 give the clean clips reads of up to 0.76).

Cost: a closing and a box filter of one 144 x 144 image (< 1 ms), then one recogniser call a
line (~0.02-0.03 CPU s on this bench's machine; the calls are made one by one: a batch pads
every crop to the widest and cost ~1.4x as much), and two more for a line read in part: 2 of
the 108 lines of the bench's 54 clean clips (+0.001 CPU s a clip), 6 of the 96 of its dark set
(+0.003 s; /tmp script timing `find_text` with and without, clip by clip, 2026-12-06).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW = (10, 40)  # rows x columns: the window the dark-stroke density is taken over
CLOSING = 3  # output pixels: the black top-hat's square (strokes up to 2 pixels wide)
MIN_DEPTH = 10  # grey levels a stroke pixel lies below the closing of the maximum
MIN_RATIO = 0.4  # ... and at least this share of that closing's level
GAP = 12  # output pixels: a line's strokes lie at most this far apart along it
PAD = 2  # output pixels around a line's strokes in the box read and masked
LEVEL = 7  # output pixels: the square of the closing a line's local bright level is taken over
MIN_LEVEL = 8  # grey levels: the least local bright level divided by (the black outside the fan)
DARK_SHARE = 0.6  # a line is dark when its strokes' median is below this share of its box's
CORE_SHARE = 0.35  # a line's core rows hold at least this share of its fullest row's strokes


@dataclass(frozen=True)
class DarkLine:
    """A line of dark strokes: its box (output pixels) and the density of its densest window."""

    rows: slice
    cols: slice
    density: float
    # its strokes' median level is below `DARK_SHARE` of its box's median level: dark marks on
    # a lighter ground (dark text), not the gaps between bright strokes (bright text's letters
    # and spaces are dark thin strokes too, at the level of the ground around them)
    dark: bool = True
    # its core rows (`core_rows`): its box's rows holding `CORE_SHARE` of its fullest row's
    # strokes or more (plus `PAD`); its box's rows when not given
    core: slice | None = None


def core_rows(strokes_HW: np.ndarray, line: DarkLine) -> slice:
    """The rows of ``line``'s box that hold at least `CORE_SHARE` of its fullest row's stroke
    pixels (from the first such row to the last, plus `PAD`): the glyphs' band without the rows
    of dark texture the box takes in above and below them (the recogniser scales a crop to a
    fixed height: in a box twice the text's height the glyphs are read at half the size)."""
    counts = strokes_HW[line.rows, line.cols].sum(axis=1)
    if not counts.any():
        return line.rows
    full = np.flatnonzero(counts >= CORE_SHARE * counts.max())
    return slice(max(line.rows.start + int(full[0]) - PAD, line.rows.start),
                 min(line.rows.start + int(full[-1]) + 1 + PAD, line.rows.stop))


def dark_strokes(maximum_HW: np.ndarray) -> np.ndarray:
    """``bool[H, W]``: pixels of thin dark strokes in the temporal maximum (a black top-hat:
    at least `MIN_DEPTH` levels and `MIN_RATIO` of its level below the maximum's grey closing
    over `CLOSING` x `CLOSING`)."""
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (CLOSING, CLOSING))
    closed = cv2.morphologyEx(np.ascontiguousarray(maximum_HW), cv2.MORPH_CLOSE, kernel)
    depth = closed.astype(np.int16) - maximum_HW.astype(np.int16)
    return (depth >= MIN_DEPTH) & (depth >= MIN_RATIO * closed)


def dark_lines(maximum_HW: np.ndarray, n: int) -> list[DarkLine]:
    """The ``n`` densest windows of dark strokes, one a line, each grown along its rows into
    the line its strokes form (densest first; fewer when the image holds fewer strokes)."""
    import cv2

    strokes = dark_strokes(maximum_HW)
    density = cv2.boxFilter(strokes.astype(np.float32), -1, WINDOW[::-1], normalize=True,
                            borderType=cv2.BORDER_CONSTANT)
    height, width = density.shape
    half_h, half_w = WINDOW[0] // 2, WINDOW[1] // 2
    lines = []
    for _ in range(n):
        y, x = np.unravel_index(int(density.argmax()), density.shape)
        value = float(density[y, x])
        if value == 0:
            break
        line = _line(strokes, int(y), int(x), half_h, half_w, value)
        box = maximum_HW[line.rows, line.cols]
        inked = box[strokes[line.rows, line.cols]]
        line = DarkLine(line.rows, line.cols, line.density, bool(
            inked.size and np.median(inked) < DARK_SHARE * np.median(box)))
        line = DarkLine(line.rows, line.cols, line.density, line.dark, core_rows(strokes, line))
        # no window centred on this line or next to it is proposed again
        density[max(min(y - half_h, line.rows.start - half_h), 0):
                max(y + half_h, line.rows.stop + half_h) + 1,
                max(min(x - half_w, line.cols.start - half_w), 0):
                max(x + half_w, line.cols.stop + half_w) + 1] = 0
        lines.append(line)
    return lines


def _line(strokes: np.ndarray, y: int, x: int, half_h: int, half_w: int,
          density: float) -> DarkLine:
    """The box of the line of strokes through the window centred on (``y``, ``x``): its band of
    rows (the window's, grown by a few rows), columns grown while strokes follow within
    `GAP`, rows trimmed to those holding strokes."""
    height, width = strokes.shape
    band = slice(max(y - half_h - 3, 0), min(y + half_h + 3, height))
    cols_with = strokes[band].any(axis=0)
    x0, x1 = max(x - half_w, 0), min(x + half_w, width)
    while True:  # grow left and right while a stroke column lies within GAP
        left = np.flatnonzero(cols_with[max(x0 - GAP, 0):x0])
        right = np.flatnonzero(cols_with[x1:x1 + GAP])
        if not len(left) and not len(right):
            break
        if len(left):
            x0 = max(x0 - GAP, 0) + int(left[0])
        if len(right):
            x1 = x1 + int(right[-1]) + 1
    inside = np.flatnonzero(cols_with[x0:x1])
    if len(inside):
        x0, x1 = x0 + int(inside[0]), x0 + int(inside[-1]) + 1
    rows_with = np.flatnonzero(strokes[band, x0:x1].any(axis=1))
    y0, y1 = (band.start + int(rows_with[0]), band.start + int(rows_with[-1]) + 1) \
        if len(rows_with) else (band.start, band.stop)
    return DarkLine(slice(max(y0 - PAD, 0), min(y1 + PAD, height)),
                    slice(max(x0 - PAD, 0), min(x1 + PAD, width)), density)


def dark_view(maximum_HW: np.ndarray, line: DarkLine, core: bool = False) -> np.ndarray:
    """``uint8``: the crop of ``line`` (its core rows only: ``core``) the recogniser reads: the
    image (the maximum, or another temporal statistic) divided by its local bright level (a
    7 x 7 grey closing, taken with a few pixels of context): dark text over the blood pool and
    over bright tissue alike turns dark on white."""
    import cv2

    if core and line.core is not None:
        line = DarkLine(line.core, line.cols, line.density, line.dark, line.core)
    rows = slice(max(line.rows.start - 4, 0), line.rows.stop + 4)
    cols = slice(max(line.cols.start - 4, 0), line.cols.stop + 4)
    crop = np.ascontiguousarray(maximum_HW[rows, cols])
    closed = cv2.morphologyEx(crop, cv2.MORPH_CLOSE,
                              cv2.getStructuringElement(cv2.MORPH_RECT, (LEVEL, LEVEL)))
    view = 255 * crop.astype(np.float32) / np.maximum(closed.astype(np.float32), MIN_LEVEL)
    return np.clip(view, 0, 255).astype(np.uint8)[line.rows.start - rows.start:
                                                  line.rows.stop - rows.start,
                                                  line.cols.start - cols.start:
                                                  line.cols.stop - cols.start]
