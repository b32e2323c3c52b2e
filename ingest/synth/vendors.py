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


# The table, one row per machine. Who made it: key, manufacturer, model, software version.
_MAKERS = (
    ("elara", "Elara Sonics", "EchoStar 5", "5.1.0"),
    ("aurelia", "Aurelia Medical", "Vista E9", "203.87.1"),
    ("delphi", "Delphi Echo Systems", "Apex HD", "11.3"),
    ("halcyon", "Halcyon Diagnostics", "H-Cardio 3", "3.9.2"),
    ("borealis", "Borealis Imaging", "CardioView 7", "7.2.4"),
    ("corvid", "Corvid Ultrasound", "Sonus 400", "4.0.12"),
)
# How it writes clips, in `Vendor` field order: rows, columns, transfer syntax, photometric,
# timing, has_regions, share, fps_range, file_style, jpeg_quality, scan_conversion. Delphi writes
# no region sequence: ingest must find the sector from the pixels.
_JPEG, _JLS, _RLE, _RAW = JPEG_BASELINE_8BIT, JPEG_LS_LOSSLESS, RLE_LOSSLESS, EXPLICIT_VR_LITTLE_ENDIAN
_HABITS = {  # one row a machine: a table reads better than the 100-column limit
    "elara":    (480, 640,  _JPEG, "YBR_FULL_422", "cine_rate",  True,  0.46, (30, 60), "uid",      72, "bilinear"),
    "aurelia":  (600, 800,  _JPEG, "YBR_FULL_422", "frame_time", True,  0.22, (40, 60), "numbered", 72, "bilinear"),
    "delphi":   (768, 1024, _JPEG, "YBR_FULL_422", "cine_rate",  False, 0.10, (30, 50), "uid",      70, "bilinear"),
    "halcyon":  (480, 640,  _JLS,  "MONOCHROME2",  "frame_time", True,  0.12, (30, 40), "numbered", 0,  "nearest"),
    "borealis": (480, 640,  _RLE,  "RGB",          "cine_rate",  True,  0.05, (30, 36), "uid",      0,  "nearest"),
    "corvid":   (480, 640,  _RAW,  "MONOCHROME2",  "frame_time", True,  0.05, (30, 33), "numbered", 0,  "bilinear"),
}
_HABIT_FIELDS = ("rows", "columns", "transfer_syntax", "photometric", "timing", "has_regions",
                 "share", "fps_range", "file_style", "jpeg_quality", "scan_conversion")


def _vendor(key: str, manufacturer: str, model: str, software: str) -> Vendor:
    habits = dict(zip(_HABIT_FIELDS, _HABITS[key], strict=True))
    habits["fps_range"] = tuple(float(f) for f in habits["fps_range"])
    return Vendor(key=key, manufacturer=manufacturer, model=model, software=software, **habits)


VENDORS: tuple[Vendor, ...] = tuple(_vendor(*row) for row in _MAKERS)

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
