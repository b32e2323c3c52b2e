"""Burned-in overlays, drawn the way ultrasound machines draw them on every exported frame.

A real clip is a screen capture: the patient's name, ID and the date in the header, the machine's
logo, acoustic output (MI/TIS) and settings text, a depth scale beside the fan, a grey bar, and the
ECG trace with a moving cursor along the bottom. Ingest has to crop and mask all of it, so the
generator puts it there: a fixed layer drawn once per clip with Pillow, plus a cursor per frame.
Colour machines draw the logo, ECG and cursor in colour; everything coloured stays outside the fan
(some grey settings text sits inside the fan's bounding box, so cropping to the box is not enough).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from echocmr.ingest.synth.sector import SectorGeometry
from echocmr.ingest.synth.vendors import Vendor

_WHITE = (235, 235, 235)
_GREY = (170, 170, 170)
_ECG_GREEN = (40, 220, 90)
_CURSOR_YELLOW = (250, 215, 40)


@dataclass(kw_only=True)
class ScreenText:
    """What the header shows (fake, but exactly what de-identification must not let through)."""

    patient_name: str  # "DOE, JANE"
    patient_id: str
    date: str  # as displayed, e.g. "03/14/2019"
    time: str  # "10:42:07"
    institution: str
    heart_rate: int
    fps: float


@functools.lru_cache(maxsize=8)
def screen_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


class Overlay:
    """The static layer of one clip and the per-frame ECG cursor."""

    def __init__(
        self,
        *,
        vendor: Vendor,
        geometry: SectorGeometry,
        text: ScreenText,
        ecg_trace: np.ndarray,
        n_frames: int,
        pixel_mode: str,
        colour_bar: bool = False,
    ) -> None:
        if pixel_mode not in ("L", "RGB", "YCbCr"):
            raise ValueError(f"pixel_mode must be 'L', 'RGB' or 'YCbCr', not {pixel_mode!r}")
        if (pixel_mode == "L") == vendor.colour:
            raise ValueError(f"pixel_mode {pixel_mode} does not fit {vendor.photometric}")
        self.pixel_mode = pixel_mode
        self.vendor = vendor
        self.geometry = geometry
        self.n_frames = n_frames
        rows, cols = vendor.rows, vendor.columns
        img = Image.new("RGB", (cols, rows), (0, 0, 0))
        draw = ImageDraw.Draw(img)
        colour = vendor.colour
        small = screen_font(max(10, rows // 48))
        large = screen_font(max(12, rows // 36))
        margin = max(6, cols // 100)
        # Header: who and when, left; machine and settings, right.
        draw.text((margin, margin), text.institution, fill=_WHITE, font=large)
        draw.text((margin, margin + large.size + 2),
                  f"{text.patient_name}   ID: {text.patient_id}", fill=_WHITE, font=small)
        draw.text((margin, margin + large.size + small.size + 5),
                  f"{text.date}  {text.time}", fill=_WHITE, font=small)
        self._logo(draw, vendor, cols - margin, margin, large, colour)
        # Settings text in the corners of the fan's box (inside the box, outside the fan).
        min_x, min_y, max_x, max_y = geometry.box
        settings_y = min_y + (max_y - min_y) // 4
        draw.text((min_x + 2, settings_y), "MI 1.1\nTIS 0.4", fill=_GREY, font=small)
        draw.text((max_x - 5 * small.size, settings_y),
                  f"{text.fps:.0f} Hz\n{geometry.depth_cm:.0f} cm", fill=_GREY, font=small)
        self._depth_scale(draw, geometry, small)
        self._grey_bar(img, geometry, colour_bar)
        # ECG along the bottom, the whole clip's trace; the cursor moves per frame.
        top = rows - int(round(0.11 * rows))
        self.ecg_y = (top, rows - margin)
        self.ecg_x = (min_x, max_x)
        xs = np.linspace(min_x, max_x, ecg_trace.size)
        mid, amp = top + 0.62 * (rows - margin - top), 0.45 * (rows - margin - top)
        points = list(zip(xs.tolist(), (mid - amp * ecg_trace).tolist(), strict=True))
        draw.line(points, fill=_ECG_GREEN if colour else _WHITE, width=2)
        draw.text((margin, top), f"HR {text.heart_rate} bpm", fill=_ECG_GREEN if colour else
                  _WHITE, font=small)
        # JPEG machines get their screen in YCbCr, the JPEG colour space: the grey fan is then
        # just the Y plane (Cb = Cr = 128 already), one third of the bytes to write per frame.
        cursor = Image.new("RGB", (1, 1), _CURSOR_YELLOW if colour else _WHITE)
        if pixel_mode == "YCbCr":
            img, cursor = img.convert("YCbCr"), cursor.convert("YCbCr")
        self.base = np.asarray(img) if colour else np.ascontiguousarray(np.asarray(img)[..., 0])
        self.cursor_value = np.asarray(cursor)[0, 0, : 3 if colour else 1].copy()
        pixels = geometry.sector_pixels
        if pixel_mode == "RGB":
            self._scatter = (3 * pixels[:, None] + np.arange(3)).ravel()
        elif pixel_mode == "YCbCr":
            self._scatter = 3 * pixels
        else:
            self._scatter = pixels
        self._frame = self.base.copy()
        self._cursor_x: int | None = None

    @staticmethod
    def _logo(draw: ImageDraw.ImageDraw, vendor: Vendor, right: int, top: int, font,
              colour: bool) -> None:
        name = vendor.manufacturer.split()[0].upper()
        width = int(draw.textlength(name, font=font))
        r = font.size // 2 + 2
        fill = (235, 120, 30) if colour else _WHITE  # the brand colour, when the screen has one
        draw.ellipse((right - width - 3 * r, top, right - width - r, top + 2 * r), fill=fill)
        draw.text((right - width, top), name, fill=fill, font=font)
        model_width = int(draw.textlength(vendor.model, font=font))
        draw.text((right - model_width, top + 2 * r + 2), vendor.model, fill=_GREY, font=font)

    @staticmethod
    def _depth_scale(draw: ImageDraw.ImageDraw, g: SectorGeometry, font) -> None:
        """Ticks every cm down the right of the fan; long ones every 5 cm, labelled."""
        _, _, max_x, _ = g.box
        x = min(max_x + 8, g.columns - 30)
        n_cm = int(g.depth_cm)
        for cm in range(0, n_cm + 1):
            y = g.apex_y + cm / g.cm_per_px
            if y < g.apex_y + g.near_px:
                continue
            long = cm % 5 == 0
            draw.line((x, y, x + (9 if long else 4), y), fill=_WHITE, width=1)
            if long and cm:
                draw.text((x + 12, y - font.size // 2), str(cm), fill=_WHITE, font=font)

    @staticmethod
    def _grey_bar(img: Image.Image, g: SectorGeometry, colour_bar: bool) -> None:
        """The grey map bar left of the fan (a velocity colour bar on colour-Doppler clips)."""
        min_x, min_y, _, _ = g.box
        height = int(0.3 * (g.rows - min_y))
        x0 = max(min_x - 26, 4)
        ramp = np.linspace(255, 0, height)[:, None].repeat(10, axis=1)
        bar = np.repeat(ramp[..., None], 3, axis=2)
        if colour_bar:
            top_half = ramp > 127
            bar[..., 0] = np.where(top_half, 2 * (ramp - 127), 0)
            bar[..., 1] = np.abs(ramp - 127) // 3
            bar[..., 2] = np.where(top_half, 0, 2 * (127 - ramp))
        img.paste(Image.fromarray(bar.astype(np.uint8)), (x0, min_y + int(0.4 * height)))

    def compose(self, index: int, sector_values: np.ndarray) -> np.ndarray:
        """Frame ``index`` in ``pixel_mode``: the layer, the fan's pixels (grey, or [N, 3] RGB),
        and the cursor.

        The returned array is a buffer reused by the next call (only the fan and the cursor
        change between frames): encode or copy it before asking for the next frame.
        """
        frame = self._frame
        if self.pixel_mode == "RGB":  # one scatter over the interleaved bytes: fastest in numpy
            values = sector_values.ravel() if sector_values.ndim == 2 else np.repeat(
                sector_values, 3)
        elif sector_values.ndim == 2:
            raise ValueError("colour sector values need pixel_mode 'RGB'")
        else:
            values = sector_values
        frame.reshape(-1)[self._scatter] = values
        top, bottom = self.ecg_y
        if self._cursor_x is not None:  # restore what the last cursor covered
            old = self._cursor_x
            frame[top:bottom, old : old + 2] = self.base[top:bottom, old : old + 2]
        x0, x1 = self.ecg_x
        x = int(round(x0 + (x1 - x0) * index / max(self.n_frames - 1, 1)))
        frame[top:bottom, x : x + 2] = self.cursor_value
        self._cursor_x = x
        return frame
