"""Small clips for tests and benchmarks, drawn by the cohort's own phantom.

``small_clip(n_frames, rows, columns, seed=...)`` puts the cohort's beating heart (``EchoPhantom``
on a ``SectorGeometry``, scan-converted the same way) on a tiny canvas in milliseconds, and says
where everything is instead of leaving tests to hard-code pixel positions: the fan's pixels, the
burned-in text in the top-left corner, a static marker inside the fan, and a thin ECG trace that
sweeps below the fan (its waveform is the cycle's, ``Cycle.ecg``). ``beating=False`` freezes the
heart at one instant (only speckle and noise change between frames): a wall motion signal a tiny
network learns from a few dozen clips. ``overlays=False`` gives the fan alone, filling the canvas,
as clips look after ingest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from echocmr.ingest.synth.anatomy import HeartParams, draw_heart
from echocmr.ingest.synth.cycle import Cycle
from echocmr.ingest.synth.overlays import screen_font
from echocmr.ingest.synth.phantom import EchoPhantom, PhantomConfig
from echocmr.ingest.synth.sector import SectorGeometry

# Clean images: little electronic noise and speckle change, no rib shadows.
QUIET = PhantomConfig(noise_sigma=(0.005, 0.01), speckle_decorrelation=(0.02, 0.05), p_shadow=0.0)
ECG_BAND = 6  # rows at the bottom of the canvas for the ECG trace


@dataclass(frozen=True)
class SmallClip:
    """A clip and where its parts are (boolean masks of the canvas)."""

    frames: np.ndarray  # uint8 [T, H, W]
    sector: np.ndarray  # [H, W]: the fan
    text: np.ndarray  # [H, W]: burned-in text (outside the fan)
    marker: np.ndarray  # [H, W]: a static bright marker inside the fan
    ecg: np.ndarray  # [T, H, W]: the ECG trace of each frame


def small_clip(
    n_frames: int = 20,
    rows: int = 72,
    columns: int = 96,
    *,
    seed: int = 0,
    fps: float = 30.0,
    view: str = "A4C",
    beating: bool = True,
    overlays: bool = True,
    ecg_gap: int = 8,
    heart: HeartParams | None = None,
    depth_cm: float = 11.0,
    config: PhantomConfig = QUIET,
) -> SmallClip:
    """One clip ``uint8[n_frames, rows, columns]`` (see the module docstring).

    ``ecg_gap`` is the number of rows between the fan's far edge and the top of the ECG trace (0:
    the trace touches the fan); ``heart`` is a normal one drawn from the seed unless given, and
    ``depth_cm`` the imaging depth at the fan's far edge.
    """
    rng = np.random.default_rng(seed)
    top = 3 if overlays else 0
    far = rows - ECG_BAND + 1 - ecg_gap if overlays else rows - 1  # the fan's last row
    geometry = SectorGeometry(
        rows=rows, columns=columns, apex_x=columns // 2, apex_y=top - 1, near_px=2,
        radius_px=far - top + 1, half_angle_deg=38 if overlays else 45, depth_cm=depth_cm,
    )
    cycle = Cycle(heart_rate=float(rng.uniform(60, 100)))
    heart = heart or draw_heart(rng, territory="", severity=0.0, extent=1.0)
    phantom = EchoPhantom(view=view, geometry=geometry, heart=heart, cycle=cycle, rng=rng,
                          config=config)
    pixels = geometry.sector_pixels
    sector = np.zeros(rows * columns, dtype=bool)
    sector[pixels] = True
    sector = sector.reshape(rows, columns)
    frames = np.zeros((n_frames, rows, columns), dtype=np.uint8)
    times = np.arange(n_frames) / fps
    for t, frame in zip(times, frames, strict=True):
        frame.reshape(-1)[pixels] = geometry.scan_convert(phantom.frame(t if beating else 0.0))
    empty = np.zeros((rows, columns), dtype=bool)
    if not overlays:
        return SmallClip(frames=frames, sector=sector, text=empty, marker=empty.copy(),
                         ecg=np.zeros(frames.shape, dtype=bool))
    # Burned-in text in the top-left corner, beside the fan.
    layer = Image.new("L", (columns // 2, rows // 3), 0)
    font = screen_font(max(8, rows // 9))
    ImageDraw.Draw(layer).text((2, 1), "ID 4711\nDOE J", fill=230, font=font)
    text = empty.copy()
    text[: layer.height, : layer.width] = np.asarray(layer) > 100
    text &= ~sector
    frames[:, text] = 230
    # A static marker (the orientation dot) a fifth of the way down the fan, right of its axis.
    marker = empty.copy()
    y, x = top + geometry.radius_px // 5, geometry.apex_x + 2
    marker[y : y + 3, x : x + 3] = True
    frames[:, marker] = 240
    # The ECG sweeps along the bottom: each frame shows the next stretch of the trace.
    ecg = np.zeros(frames.shape, dtype=bool)
    cols = np.arange(columns)
    base = rows - 3
    for t, frame, trace in zip(times, frames, ecg, strict=True):
        wave = cycle.ecg(cycle.phase(t + cols / (2.0 * columns), 0.0))
        ys = base - np.round(2 * np.clip(wave, -0.5, 1.0)).astype(int)
        trace[ys, cols] = True
        frame[trace] = 200
    return SmallClip(frames=frames, sector=sector, text=text, marker=marker, ecg=ecg)
