"""8-bit JPEG, the codec of most echo exports: a fast luma-only decode that is strict about damage.

`decode_jpeg_luma` asks libjpeg-turbo for greyscale output (see its docstring for the speed and the
damage checks); `ingest.dicom_pixels` uses it for JPEG baseline and extended and falls back to
pydicom's general path when it returns None.
"""

from __future__ import annotations

import numpy as np

from echocmr.ingest.colour import CHROMA_FRAMES, chroma_rgb, sample_frames, upsample
from echocmr.ingest.dicom_header import extended_offsets
from echocmr.ingest.reasons import RejectedInput

# 8-bit JPEG (baseline, extended): most echo exports. See `decode_jpeg_luma`.
JPEG_LUMA_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
_CHROMA_SCALE = 4  # the chroma map is decoded at 1/4 size (DCT scaling): Doppler is not subtle


def decode_jpeg_luma(ds, strict_frames: int = CHROMA_FRAMES
                     ) -> tuple[np.ndarray, np.ndarray | None, str] | None:
    """The fast path for 8-bit JPEG: ask libjpeg-turbo (through simplejpeg) for greyscale output.

    libjpeg then decodes the Y component only and skips chroma upsampling and colour conversion
    (~15x faster than pydicom's YCbCr->RGB array for a 600x800 clip). libjpeg reads the colour
    space from the codestream (JFIF/Adobe markers, component IDs), so an RGB codestream is turned
    into luma correctly too. The one case it cannot know, RGB samples without any marker, follows
    the header: when the header says RGB we return None and pydicom's general path decodes it.
    The chroma map comes from a few frames decoded at 1/4 size (DCT scaling).

    Damage: baseline JPEG has no checksum, and libjpeg decodes corrupt entropy-coded data to
    garbage with only a warning. Every frame is decoded in libjpeg-turbo's strict mode, which turns
    its "Corrupt JPEG data: ..." warnings (Huffman data out of sync, premature end of a segment,
    extraneous bytes) into errors, so a damaged frame makes the clip `decode_failed`; a frame
    with another warning (an unknown JFIF revision, a bogus ICC profile: not damage to the pixels)
    is decoded leniently by Pillow's libjpeg instead. Every frame's marker structure is checked too
    (`_jpeg_frame_problem`), and ``strict_frames`` evenly spaced frames
    (``preprocess.read.strict_jpeg_check_frames``; 32 by default) are decoded once more by
    pylibjpeg-libjpeg, a second, independent decoder that catches some damage turbo decodes
    without a warning (only its read pass, `_strict_decode_problem`: ~0.9 ms a 600x800 frame,
    so only sampled frames; 0 turns it off).
    Strict turbo decoding costs nothing over the plain decode (~1 ms a frame).
    """
    from io import BytesIO

    from PIL import Image
    from pydicom.encaps import generate_frames

    samples = int(ds.get("SamplesPerPixel", 1))
    if int(ds.get("BitsStored", 8)) != 8 or samples not in (1, 3) or "PixelData" not in ds:
        return None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, cols = int(ds.Rows), int(ds.Columns)
    header_pi = str(ds.get("PhotometricInterpretation", ""))
    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=n_frames,
                                      extended_offsets=extended_offsets(ds)))
    except Exception as exc:
        raise RejectedInput("decode_failed", f"cannot split JPEG frames: {exc}") from None
    if len(frames) < n_frames:
        raise RejectedInput("truncated", f"{len(frames)} JPEG frames for {n_frames}")
    photometric = "MONOCHROME2"
    if samples == 3:
        colour = _jpeg_colour(frames[0])
        if colour is None:
            if header_pi == "RGB":
                return None
            colour = "ycbcr"
        photometric = "RGB" if colour == "rgb" else (header_pi if "YBR" in header_pi else "YBR_FULL")
    elif header_pi == "MONOCHROME1":
        return None  # rare; the general path inverts it

    def open_frame(data: bytes):
        image = Image.open(BytesIO(data), formats=("JPEG",))
        if image.size != (cols, rows):
            raise RejectedInput("decode_failed", f"JPEG frame is {image.size}, header {cols}x{rows}")
        return image

    sampled = set(sample_frames(n_frames, strict_frames).tolist()) if strict_frames else set()
    for i, data in enumerate(frames[:n_frames]):
        problem = _jpeg_frame_problem(data)
        if problem is None and i in sampled:
            problem = _strict_decode_problem(data)
        if problem is not None:
            raise RejectedInput("decode_failed", f"JPEG frame {i}: {problem}")
    luma = np.empty((n_frames, rows, cols), dtype=np.uint8)
    for i, data in enumerate(frames[:n_frames]):
        luma[i] = _turbo_luma(data, i, rows, cols)
    chroma = None
    if samples == 3:
        try:
            small = []
            size = (max(cols // _CHROMA_SCALE, 1), max(rows // _CHROMA_SCALE, 1))
            for i in sample_frames(n_frames):
                with open_frame(frames[i]) as image:
                    image.draft("RGB", size)
                    small.append(np.asarray(image.convert("RGB")))
            chroma = upsample(chroma_rgb(np.stack(small)), rows, cols)
        except RejectedInput:
            raise
        except Exception as exc:  # Pillow: OSError("image file is truncated"), SyntaxError, ...
            reason = "truncated" if "truncated" in str(exc).lower() else "decode_failed"
            raise RejectedInput(reason, f"JPEG frame: {type(exc).__name__}: {exc}") from None
    return luma, chroma, photometric


def _turbo_luma(data: bytes, i: int, rows: int, cols: int) -> np.ndarray:
    """Frame ``i``'s luma, decoded strictly by libjpeg-turbo (see `decode_jpeg_luma`)."""
    import simplejpeg

    try:
        return _right_size(simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True), i,
                           rows, cols)
    except ValueError as exc:
        text = str(exc)
    if text.startswith("Premature end of JPEG file"):
        raise RejectedInput("truncated", f"JPEG frame {i}: {text}")
    if not text.startswith("Corrupt JPEG data"):
        # A warning that is not damage (simplejpeg raises on header warnings even when not
        # strict), or a codestream turbo's API refuses: Pillow's libjpeg decodes it leniently.
        from io import BytesIO

        from PIL import Image

        try:
            with Image.open(BytesIO(data), formats=("JPEG",)) as image:
                image.draft("L", image.size)
                return _right_size(np.asarray(image.convert("L"))[..., None], i, rows, cols)
        except RejectedInput:
            raise
        except Exception as exc:  # Pillow: OSError("image file is truncated"), SyntaxError, ...
            reason = "truncated" if "truncated" in str(exc).lower() else "decode_failed"
            raise RejectedInput(reason, f"JPEG frame {i}: {type(exc).__name__}: {exc}") from None
    raise RejectedInput("decode_failed", f"JPEG frame {i}: corrupt codestream ({text})")


def _right_size(decoded_HW1: np.ndarray, i: int, rows: int, cols: int) -> np.ndarray:
    h, w = decoded_HW1.shape[:2]
    if (h, w) != (rows, cols):
        raise RejectedInput("decode_failed", f"JPEG frame {i} is {w}x{h}, header {cols}x{rows}")
    return decoded_HW1[..., 0]


# Markers that may follow an entropy-coded segment before the next scan (tables, restart interval,
# number of lines, comments, application data); anything else there, or bytes after EOI, is damage.
_BETWEEN_SCANS = {0xC4, 0xCC, 0xDB, 0xDC, 0xDD, 0xFE, *range(0xE0, 0xF0)}


def _jpeg_frame_problem(data: bytes) -> str | None:
    """What is wrong with one frame's JPEG marker structure, or None when it is sound.

    SOI first; header segments whose lengths fit; then each scan's entropy-coded data, where a
    0xFF byte must be stuffing (``FF 00``), fill (``FF FF``) or the next restart marker in turn
    (``RST0..7`` cyclically); the data ends with one EOI (a DICOM pad byte of 0 may follow).
    A flipped or overwritten run of bytes almost always breaks one of these.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    end = len(buf) - 1 if len(buf) and buf[-1] == 0 else len(buf)  # a fragment's pad byte
    if end < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return "no SOI marker"
    if buf[end - 2] != 0xFF or buf[end - 1] != 0xD9:
        return "does not end with an EOI marker"
    i, scans = 2, 0
    while i < end - 2:
        if buf[i] != 0xFF:
            return f"no marker at byte {i}"
        marker = int(buf[i + 1])
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xD9:
            return f"EOI at byte {i}, before the end of the frame"
        if i + 4 > end:
            return f"marker segment cut off at byte {i}"
        length = int(buf[i + 2]) << 8 | int(buf[i + 3])
        if length < 2 or i + 2 + length > end - 2:
            return f"marker 0x{marker:02X} at byte {i} has an impossible length {length}"
        i += 2 + length
        if marker != 0xDA:
            if scans and marker not in _BETWEEN_SCANS:
                return f"unexpected marker 0x{marker:02X} at byte {i - 2 - length}"
            continue
        scans += 1
        ecs = buf[i:end - 2]  # entropy-coded data up to the final EOI at most
        ff = np.flatnonzero(ecs[:-1] == 0xFF) if len(ecs) > 1 else np.empty(0, dtype=np.intp)
        nxt = ecs[ff + 1]
        special = ff[nxt != 0x00]
        expected_rst, stop = 0xD0, len(ecs)
        for pos in special.tolist():
            code = int(ecs[pos + 1])
            if code == 0xFF:
                continue  # fill: the byte after it is judged in turn
            if 0xD0 <= code <= 0xD7:
                if code != expected_rst:
                    return f"restart marker RST{code - 0xD0} out of order in scan {scans}"
                expected_rst = 0xD0 + (code - 0xD0 + 1) % 8
                continue
            if code in _BETWEEN_SCANS or code == 0xDA:
                stop = pos
                break
            return f"invalid marker 0x{code:02X} in the entropy-coded data of scan {scans}"
        i += stop
    if scans == 0:
        return "no SOS marker (no image data)"
    return None


def _strict_decode_problem(data: bytes) -> str | None:
    """The error pylibjpeg-libjpeg gives a frame's codestream, or None (also when the plugin is
    not installed).

    Only libjpeg's read pass runs (``_libjpeg.get_parameters``): it parses every marker segment
    and decodes all the entropy-coded data into coefficients, which is where libjpeg finds
    damage. ``libjpeg.decode`` runs that same pass first and then reconstructs the pixels
    (another read pass, IDCT, chroma upsampling, output), ~10x the time (0.90 against 8.66 ms
    CPU a frame on the bench cohort's JPEG clips), with the same verdict and message on every
    damaged frame tried: 900 runs of `bench.bench_ingest` ``--decode``'s damage (300 on each of three
    clip sizes) and 1200 single-bit flips, truncations, header-byte changes and swapped runs of
    scan data; ``--decode`` counts the two ways against each other on every run. Should the
    private read-pass call be missing or change, the full decode is used.
    """
    try:
        import _libjpeg
        import libjpeg
        from libjpeg.utils import LIBJPEG_ERROR_CODES
    except ImportError:
        return None
    try:
        status, _ = _libjpeg.get_parameters(bytes(data))
        code_text, msg = status.decode("utf-8").split("::::")
        code = int(code_text)
    except Exception:  # not the API this was written against: decode in full
        return _full_decode_problem(libjpeg, data)
    if code == 0:
        return None
    # What libjpeg.decode raises when its read pass fails, cut as `_full_decode_problem` cuts it.
    if code in LIBJPEG_ERROR_CODES:
        text = (f"libjpeg error code '{code}' returned from Decode(): "
                f"{LIBJPEG_ERROR_CODES[code]} - {msg}")
    else:
        text = f"Unknown error code '{code}' returned from Decode(): {msg}"
    return f"corrupt codestream ({text.rsplit(': ', 1)[-1]})"


def _full_decode_problem(libjpeg, data: bytes) -> str | None:
    """The error ``libjpeg.decode`` raises on a frame's codestream (read pass and pixel
    reconstruction), or None."""
    try:
        libjpeg.decode(bytes(data))
    except Exception as exc:  # RuntimeError("libjpeg error code ... returned from Decode(): ...")
        return f"corrupt codestream ({str(exc).rsplit(': ', 1)[-1]})"
    return None


def _jpeg_colour(data: bytes) -> str | None:
    """``"rgb"`` or ``"ycbcr"`` as libjpeg will read a 3-component codestream; None: no marker
    says (libjpeg then assumes YCbCr)."""
    i, jfif, adobe, ids = 2, False, None, None
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        segment = data[i + 4:i + 2 + length]
        if marker == 0xE0 and segment.startswith(b"JFIF"):
            jfif = True
        elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            adobe = segment[11]
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and len(segment) >= 6:
            ids = [segment[6 + 3 * k] for k in range(segment[5]) if 6 + 3 * k < len(segment)]
        elif marker == 0xDA:
            break
        i += 2 + length
    if adobe is not None:
        return "rgb" if adobe == 0 else "ycbcr"
    if jfif:
        return "ycbcr"
    if ids in ([82, 71, 66], [114, 103, 98]):
        return "rgb"
    return None
