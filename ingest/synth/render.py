"""One clip from request to screen frames: sector geometry, phantom, scan conversion, overlays.

``ClipRenderer`` is what the DICOM writer consumes: it yields the frames one at a time in the
machine's pixel layout (``uint8[rows, columns]`` for monochrome machines, ``[rows, columns, 3]`` RGB
for colour ones), so a clip is never held whole in memory. Everything random comes from the
request's seed, so a clip renders to the same pixels in any process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from echocmr.ingest.synth.anatomy import HeartParams
from echocmr.ingest.synth.cycle import Cycle
from echocmr.ingest.synth.overlays import Overlay, ScreenText
from echocmr.ingest.synth.phantom import EchoPhantom, PhantomConfig
from echocmr.ingest.synth.sector import SectorGeometry, draw_geometry
from echocmr.ingest.synth.vendors import JPEG_BASELINE_8BIT, Vendor

# Imaging depth (cm) a sonographer picks for each view.
DEPTH_RANGE_CM = {"A4C": (10.0, 14.0), "A2C": (10.0, 14.0), "PLAX": (10.0, 13.0),
                  "PSAX": (10.0, 13.0)}


@dataclass(kw_only=True)
class ClipRequest:
    """Everything that decides a clip's pixels."""

    view: str
    vendor: Vendor
    heart: HeartParams
    heart_rate: float
    fps: float
    n_frames: int
    text: ScreenText
    seed: tuple[int, ...]
    colour_doppler: bool = False

    def __post_init__(self) -> None:
        if self.colour_doppler and not self.vendor.colour:
            raise ValueError(f"colour Doppler needs a colour vendor, not {self.vendor.key}")
        if self.n_frames < 1:
            raise ValueError("a clip needs at least one frame")


class ClipRenderer:
    """Builds a clip's phantom and overlay once, then renders its frames in order."""

    def __init__(self, request: ClipRequest, config: PhantomConfig | None = None) -> None:
        self.request = request
        rng = np.random.default_rng(list(request.seed))
        vendor = request.vendor
        self.geometry: SectorGeometry = draw_geometry(
            rng, rows=vendor.rows, columns=vendor.columns,
            depth_range=DEPTH_RANGE_CM[request.view],
        )
        self.cycle = Cycle(heart_rate=request.heart_rate)
        self.phantom = EchoPhantom(
            view=request.view, geometry=self.geometry, heart=request.heart, cycle=self.cycle,
            rng=rng, config=config,
        )
        min_x, _, max_x, _ = self.geometry.box
        t = np.linspace(0.0, request.n_frames / request.fps, max(max_x - min_x, 2))
        ecg = self.cycle.ecg(self.cycle.phase(t, self.phantom.start_phase))
        self.overlay = Overlay(
            vendor=vendor, geometry=self.geometry, text=request.text, ecg_trace=ecg,
            n_frames=request.n_frames, pixel_mode=self.pixel_mode,
            colour_bar=request.colour_doppler,
        )

    @property
    def pixel_mode(self) -> str:
        """Layout of the yielded frames: "L" (grey), "RGB", or "YCbCr" for JPEG machines (whose
        encoder then skips the colour conversion; colour-Doppler clips stay RGB)."""
        vendor = self.request.vendor
        if not vendor.colour:
            return "L"
        if vendor.transfer_syntax == JPEG_BASELINE_8BIT and not self.request.colour_doppler:
            return "YCbCr"
        return "RGB"

    def times(self) -> np.ndarray:
        """Acquisition time (s) of every frame from the clip's start."""
        return np.arange(self.request.n_frames) / self.request.fps

    def frames(self) -> Iterator[np.ndarray]:
        """The clip's frames as the machine's screen shows them, in ``pixel_mode`` layout.

        Each frame is a buffer that the next one overwrites: use it (or copy it) before asking
        for the next.
        """
        for index, t in enumerate(self.times()):
            polar = self.phantom.frame(float(t))
            mode = self.request.vendor.scan_conversion
            if self.request.colour_doppler:
                rgb = self.phantom.doppler(float(t), polar)
                values = np.stack(
                    [self.geometry.scan_convert(np.ascontiguousarray(rgb[..., c]),
                                                interpolation=mode)
                     for c in range(3)], axis=1)
            else:
                values = self.geometry.scan_convert(polar, interpolation=mode)
            yield self.overlay.compose(index, values)
