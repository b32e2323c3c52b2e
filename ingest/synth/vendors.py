"""The fictional ultrasound machines of the synthetic cohort: canvas, encoding and DICOM habits.

A hospital export mixes machines, and each writes its clips its own way: a different canvas size,
transfer syntax, colour model, frame-timing attribute, file naming, and whether it records where the
sector is (the ultrasound region sequence) at all. Ingest must cope with every one of them, so the
synthetic cohort draws each echo study's machine from this table.

The shares keep the cohort within its size and time budget: per 480x640 frame, JPEG costs ~20-25
KB, JPEG-LS ~40 KB, RLE colour ~200 KB and uncompressed 307 KB, and the large canvas costs the most
time, so those machines are the rarer ones (the planner still puts every machine in every cohort of
a few patients). No vendor is related to any label: the machine must not be a shortcut.
"""

from __future__ import annotations

from dataclasses import dataclass

# Transfer syntax UIDs (spelled out so this module imports nothing heavy).
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
JPEG_BASELINE_8BIT = "1.2.840.10008.1.2.4.50"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

# SOP classes written by the generator.
US_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"


@dataclass(frozen=True, kw_only=True)
class Vendor:
    """One machine model: how its clips look on disk."""

    key: str  # folder name under DIR/dicom/
    manufacturer: str
    model: str
    rows: int
    columns: int
    transfer_syntax: str
    photometric: str  # "YBR_FULL_422", "RGB" or "MONOCHROME2"
    timing: str  # "frame_time" (FrameTime in ms) or "cine_rate" (CineRate in frames/s)
    has_regions: bool  # writes SequenceOfUltrasoundRegions
    share: float  # probability that a study is done on this machine
    fps_range: tuple[float, float]
    file_style: str  # "numbered" (IMG00001.dcm) or "uid" (<SOPInstanceUID>.dcm)
    jpeg_quality: int = 0  # only for JPEG baseline
    scan_conversion: str = "bilinear"  # or "nearest": blocky, as older scan converters
    software: str = "1.0"

    @property
    def colour(self) -> bool:
        """True when the pixels carry three samples (colour overlays are possible)."""
        return self.photometric != "MONOCHROME2"

    @property
    def samples_per_pixel(self) -> int:
        return 3 if self.colour else 1


VENDORS: tuple[Vendor, ...] = (
    Vendor(
        key="elara",
        manufacturer="Elara Sonics",
        model="EchoStar 5",
        rows=480,
        columns=640,
        transfer_syntax=JPEG_BASELINE_8BIT,
        photometric="YBR_FULL_422",
        timing="cine_rate",
        has_regions=True,
        share=0.46,
        fps_range=(30.0, 60.0),
        file_style="uid",
        jpeg_quality=72,
        software="5.1.0",
    ),
    Vendor(
        key="aurelia",
        manufacturer="Aurelia Medical",
        model="Vista E9",
        rows=600,
        columns=800,
        transfer_syntax=JPEG_BASELINE_8BIT,
        photometric="YBR_FULL_422",
        timing="frame_time",
        has_regions=True,
        share=0.22,
        fps_range=(40.0, 60.0),
        file_style="numbered",
        jpeg_quality=72,
        software="203.87.1",
    ),
    Vendor(
        key="delphi",
        manufacturer="Delphi Echo Systems",
        model="Apex HD",
        rows=768,
        columns=1024,
        transfer_syntax=JPEG_BASELINE_8BIT,
        photometric="YBR_FULL_422",
        timing="cine_rate",
        has_regions=False,  # ingest must find the sector from the pixels
        share=0.10,
        fps_range=(30.0, 50.0),
        file_style="uid",
        jpeg_quality=70,
        software="11.3",
    ),
    Vendor(
        key="halcyon",
        manufacturer="Halcyon Diagnostics",
        model="H-Cardio 3",
        rows=480,
        columns=640,
        transfer_syntax=JPEG_LS_LOSSLESS,
        photometric="MONOCHROME2",
        timing="frame_time",
        has_regions=True,
        share=0.12,
        fps_range=(30.0, 40.0),
        file_style="numbered",
        scan_conversion="nearest",
        software="3.9.2",
    ),
    Vendor(
        key="borealis",
        manufacturer="Borealis Imaging",
        model="CardioView 7",
        rows=480,
        columns=640,
        transfer_syntax=RLE_LOSSLESS,
        photometric="RGB",
        timing="cine_rate",
        has_regions=True,
        share=0.05,
        fps_range=(30.0, 36.0),
        file_style="uid",
        scan_conversion="nearest",
        software="7.2.4",
    ),
    Vendor(
        key="corvid",
        manufacturer="Corvid Ultrasound",
        model="Sonus 400",
        rows=480,
        columns=640,
        transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN,
        photometric="MONOCHROME2",
        timing="frame_time",
        has_regions=True,
        share=0.05,
        fps_range=(30.0, 33.0),
        file_style="numbered",
        software="4.0.12",
    ),
)

VENDOR_BY_KEY: dict[str, Vendor] = {v.key: v for v in VENDORS}

TRANSFER_SYNTAX_NAMES: dict[str, str] = {
    EXPLICIT_VR_LITTLE_ENDIAN: "explicit_vr_little_endian",
    JPEG_BASELINE_8BIT: "jpeg_baseline",
    JPEG_LS_LOSSLESS: "jpeg_ls_lossless",
    RLE_LOSSLESS: "rle_lossless",
}


def vendor_shares() -> tuple[list[str], list[float]]:
    """Vendor keys and their normalised shares, in table order (for a seeded choice)."""
    total = sum(v.share for v in VENDORS)
    return [v.key for v in VENDORS], [v.share / total for v in VENDORS]
