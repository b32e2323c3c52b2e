"""Pixel data to grey frames: every transfer syntax the installed decoders cover.

Decoding goes through pydicom 3 and whichever plugins are installed (pylibjpeg-libjpeg, -openjpeg,
-rle, pyjpegls, Pillow), so every transfer syntax they cover is read: implicit/explicit little
endian, explicit big endian, RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000; 8-bit JPEG
takes the fast path of `ingest.jpeg`.

We ask the decoder for the *raw* colour space (``as_array(raw=True)``) and read the photometric
interpretation the decoder reports back, because a JPEG codestream can contradict the header
(pydicom then corrects it, e.g. RGB component IDs in a "YBR_FULL_422" file):

* ``YBR_FULL`` / ``YBR_FULL_422``: the Y plane as is. No YCbCr->RGB->grey round trip: faster,
  and a wrong colour path (YCbCr taken as RGB) is what turns clips green.
* ``RGB`` (also what JPEG 2000 ICT/RCT decoders return): BT.601 luma in integer arithmetic.
* ``PALETTE COLOR``: the colour LUT, then as RGB. ``MONOCHROME1`` is inverted.
"""

from __future__ import annotations

import warnings

import numpy as np

from echocmr.ingest.colour import CHROMA_FRAMES, chroma_rgb, chroma_ybr, rgb_to_luma
from echocmr.ingest.jpeg import JPEG_LUMA_SYNTAXES, decode_jpeg_luma
from echocmr.ingest.reasons import RejectedInput, exception_detail


def decode_grey(ds, strict_jpeg_frames: int = CHROMA_FRAMES
                ) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Pixel data to ``(uint8[T, H, W] luma, chroma map or None, decoded photometric)``.

    ``strict_jpeg_frames``: see `decode_jpeg_luma`.
    """
    from pydicom.pixels import get_decoder

    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is None:
        raise RejectedInput("decode_failed", "no Transfer Syntax UID in the file meta")
    if tsyntax in JPEG_LUMA_SYNTAXES:
        fast = decode_jpeg_luma(ds, strict_frames=strict_jpeg_frames)
        if fast is not None:
            return fast
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise RejectedInput("decode_failed", f"transfer syntax {_syntax_name(tsyntax)} is not "
                            "supported") from None
    if not decoder.is_available:
        raise RejectedInput("decode_failed", f"no installed plugin decodes {_syntax_name(tsyntax)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # header/codestream disagreements are resolved below
        try:
            arr, changes = _as_array(decoder, ds, tsyntax)
        except Exception as exc:
            text = str(exc).lower()
            if "less than expected" in text or "end of file" in text or "missing" in text:
                raise RejectedInput("truncated", f"pixel data ends early: {exception_detail(exc)}") from None
            raise RejectedInput("decode_failed", exception_detail(exc)) from None
    photometric = str(changes.get("photometric_interpretation", ds.PhotometricInterpretation))
    samples = int(changes.get("samples_per_pixel", ds.get("SamplesPerPixel", 1)))
    bits_stored = int(changes.get("bits_stored", ds.get("BitsStored", 8)))
    n_frames = int(changes.get("number_of_frames", ds.get("NumberOfFrames", 1)) or 1)
    if n_frames == 1:
        arr = arr[None]
    if samples == 1 and arr.ndim == 4:
        arr = arr[..., 0]

    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        grey = _to_uint8(arr, bits_stored, ds)
        if photometric == "MONOCHROME1":
            np.subtract(255, grey, out=grey)
        return grey, None, photometric
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        bits = 16 if rgb.dtype.itemsize > 1 and int(rgb.max(initial=0)) > 255 else 8
        rgb = _to_uint8(rgb, bits, None)
        return rgb_to_luma(rgb), chroma_rgb(rgb), photometric
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise RejectedInput("decode_failed", f"unexpected pixel array {arr.shape} for {photometric}")
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        ybr = _to_uint8(arr, bits_stored, None)
        return np.ascontiguousarray(ybr[..., 0]), chroma_ybr(ybr), photometric
    if photometric in ("YBR_PARTIAL_422", "YBR_PARTIAL_420"):
        ybr = _to_uint8(arr, bits_stored, None)
        luma = np.clip((ybr[..., 0].astype(np.int16) - 16) * 255 // 219, 0, 255).astype(np.uint8)
        return luma, chroma_ybr(ybr), photometric
    if photometric == "RGB":
        rgb = _to_uint8(arr, bits_stored, None)
        return rgb_to_luma(rgb), chroma_rgb(rgb), photometric
    raise RejectedInput("decode_failed", f"photometric interpretation {photometric!r} not supported")


# JPEG-LS lossless / near-lossless: pydicom tries pylibjpeg-libjpeg first, then pyjpegls (CharLS).
_JPEG_LS_SYNTAXES = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}


def _as_array(decoder, ds, tsyntax):
    """``decoder.as_array(ds, raw=True)``, with JPEG-LS decoded by CharLS (pyjpegls) first.

    JPEG-LS decoding is defined to the sample (lossless and near-lossless alike), so both plugins
    give the same pixels; CharLS takes ~1.6 ms for a 640x480 frame where pylibjpeg-libjpeg takes
    ~5.7 ms. When CharLS refuses a frame, the clip is decoded again the way pydicom does it by
    default (pylibjpeg first, each frame falling back to pyjpegls), so a damaged file gets exactly
    the verdict and message it got before.
    """
    if tsyntax in _JPEG_LS_SYNTAXES and "pyjpegls" in decoder.available_plugins:
        try:
            return decoder.as_array(ds, raw=True, decoding_plugin="pyjpegls")
        except Exception:
            pass
    return decoder.as_array(ds, raw=True)


def _to_uint8(arr: np.ndarray, bits_stored: int, ds) -> np.ndarray:
    """Scale decoded samples to uint8; 8-bit data passes through untouched.

    Deeper data keeps its stored range (``value >> (bits_stored - 8)``, signed data offset to
    unsigned first) so brightness does not depend on the clip's content; a VOI window in a
    monochrome header (``ds``) is applied first, as a viewer would.
    """
    if arr.dtype == np.uint8:
        return arr
    bits = min(max(int(bits_stored), 8), 32)
    if arr.dtype.kind == "f":
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return np.clip(np.rint((arr - lo) * scale), 0, 255).astype(np.uint8)
    if ds is not None and "WindowCenter" in ds and "WindowWidth" in ds:
        from pydicom.pixels import apply_voi_lut

        arr = apply_voi_lut(arr, ds)  # output spans 0 .. 2^bits - 1 (or the signed range)
        if arr.dtype.kind == "f":
            arr = np.rint(arr)
    # int32 holds any 8/16-bit sample plus the signed offset; deeper or float data needs int64.
    narrow = arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2 and bits <= 16
    wide = arr.astype(np.int32 if narrow else np.int64)
    if arr.dtype.kind == "i" or (ds is not None and int(ds.get("PixelRepresentation", 0)) == 1):
        wide += 1 << (bits - 1)
    return np.clip(wide >> (bits - 8), 0, 255).astype(np.uint8)


def _syntax_name(tsyntax) -> str:
    """A transfer syntax's registered name; never the header's own text for one DICOM does not
    know (pydicom's ``UID.name`` is then the value itself, which a hostile header can fill)."""
    from pydicom.uid import UID_dictionary

    return tsyntax.name if str(tsyntax) in UID_dictionary else "(an unregistered UID)"
