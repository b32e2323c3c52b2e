"""A JPEG lossless encoder (process 14, selection value 1: first-order prediction) for 8-bit grey.

Some echo machines export JPEG lossless, and ingest must decode it; no installed library writes
it (pydicom decodes it through pylibjpeg/libjpeg but has no encoder), so the synthetic files are
made with this small one. One Huffman table of DC categories 0..11, point transform 0; output is
a complete JPEG stream (SOI .. EOI) for one frame.
"""

from __future__ import annotations

import numpy as np

_DC_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]  # codes of lengths 1..16
_DC_VALS = list(range(12))


def _huffman_codes() -> dict[int, tuple[int, int]]:
    codes, code, k = {}, 0, 0
    for length, count in enumerate(_DC_BITS, start=1):
        for _ in range(count):
            codes[_DC_VALS[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


def jpeg_lossless_encode(frame_HW: np.ndarray) -> bytes:
    """Encode a uint8 grey frame as a lossless JPEG (SOF3, predictor 1, Pt 0)."""
    h, w = frame_HW.shape
    x = frame_HW.astype(np.int32)
    pred = np.empty_like(x)
    pred[0, 0] = 128
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    diffs = (x - pred).ravel()
    codes = _huffman_codes()
    acc, n_bits, out = 0, 0, bytearray()
    for d in diffs.tolist():
        mag = abs(d)
        cat = mag.bit_length()
        code, length = codes[cat]
        acc = (acc << length) | code
        n_bits += length
        if cat:
            extra = d if d > 0 else d + (1 << cat) - 1
            acc = (acc << cat) | extra
            n_bits += cat
        while n_bits >= 8:
            n_bits -= 8
            byte = (acc >> n_bits) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0)
        acc &= (1 << n_bits) - 1
    if n_bits:
        byte = ((acc << (8 - n_bits)) | ((1 << (8 - n_bits)) - 1)) & 0xFF
        out.append(byte)
        if byte == 0xFF:
            out.append(0)

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    sof = bytes([8]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    dht = bytes([0x00]) + bytes(_DC_BITS) + bytes(_DC_VALS)
    sos = bytes([1, 1, 0x00, 1, 0, 0])
    return (b"\xff\xd8" + segment(0xC3, sof) + segment(0xC4, dht) + segment(0xDA, sos)
            + bytes(out) + b"\xff\xd9")
