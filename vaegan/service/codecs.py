"""Messages <-> arrays: embedding values, image bytes in and out. Limits are checked by the
caller (``vaegan.service.limits``); these only convert."""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import numpy as np
import simplejpeg

from vaegan.errors import ImageRejected, InvalidInput
from vaegan.preprocess import CropPolicy, decode_cost, decode_side, open_image, preprocess
from vaegan.v1 import vaegan_pb2 as pb


def add_embeddings(field, arr: np.ndarray) -> None:
    """Appends each row of ``arr`` to a response's repeated ``Embedding`` field, built in
    place (a standalone message per row would be copied into the response again)."""
    for row in np.asarray(arr, np.float32):
        field.add(values=row.tolist())


def embedding(row: np.ndarray) -> pb.Embedding:
    return pb.Embedding(values=np.asarray(row, np.float32).tolist())


def header_cost(data: bytes, policy: CropPolicy, field: str, limits) -> tuple[int, int]:
    """(pixels, estimated peak decode bytes) of an encoded image, from its header alone."""
    try:
        im = open_image(bytes(data), max_pixels=limits.max_image_pixels)
    except ImageRejected as e:
        raise InvalidInput(f"{field}: {e}") from None
    return im.width * im.height, decode_cost(im, decode_side(policy))


def decode_image(data: bytes, policy: CropPolicy, field: str, max_pixels: int) -> np.ndarray:
    """Encoded PNG/JPEG -> the model's uint8 input, cut exactly as in training (images over
    ``max_pixels`` are refused from their header, before decoding)."""
    try:
        return preprocess(bytes(data), policy, max_pixels=max_pixels)
    except ImageRejected as e:
        raise InvalidInput(f"{field}: {e}") from None


RAW = pb.IMAGE_FORMAT_RAW
FORMATS = (pb.IMAGE_FORMAT_PNG, pb.IMAGE_FORMAT_JPEG, RAW)


def output_options(options: pb.OutputOptions) -> tuple[int, int]:
    """(format, JPEG quality) of a request's output options, checked before any work is
    done for it (a bad option must not cost an inference)."""
    fmt = options.format or pb.IMAGE_FORMAT_PNG
    quality = options.jpeg_quality or 90
    if fmt not in FORMATS:
        raise InvalidInput(f"output.format: unknown value {fmt}")
    if not 1 <= quality <= 100:
        raise InvalidInput(f"output.jpeg_quality: {quality}; expected 1..100")
    return fmt, quality


class Encoded(NamedTuple):
    """Response images: each one's bytes, and the format and size they share."""

    blobs: list[bytes]
    format: int
    width: int
    height: int

    def add_to(self, field) -> None:
        """Appends them to a response's repeated ``Image`` field, built in place: a
        standalone ``pb.Image`` per image would be copied into the response again, which
        costs more than writing RAW pixels."""
        for b in self.blobs:
            field.add(data=b, format=self.format, width=self.width, height=self.height)

    def image(self, i: int) -> pb.Image:
        return pb.Image(
            data=self.blobs[i], format=self.format, width=self.width, height=self.height
        )


def encode_images(pixels: np.ndarray, options: pb.OutputOptions) -> Encoded:
    """uint8 [n, h, w, 3] -> response images in the requested format."""
    fmt, quality = output_options(options)
    n, h, w = pixels.shape[:3]
    if fmt == RAW:
        flat = np.ascontiguousarray(pixels, np.uint8).reshape(n, -1)
        blobs = [row.tobytes() for row in flat]
    elif fmt == pb.IMAGE_FORMAT_JPEG:
        blobs = [encode_jpeg(px, quality) for px in pixels]
    else:
        blobs = encode_png(pixels)
    return Encoded(blobs, fmt, w, h)


def encode_jpeg(px: np.ndarray, quality: int) -> bytes:
    """One RGB image as a baseline JPEG with 4:2:0 chroma subsampling (Pillow's default),
    through libjpeg-turbo without an intermediate image object."""
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(px, np.uint8),
        quality=quality,
        colorspace="RGB",
        colorsubsampling="420",
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_SUB = 1  # PNG row filter type 1: each byte minus the same byte of the pixel on its left


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: np.ndarray) -> list[bytes]:
    """uint8 [n, h, w, 3] -> one standard 8-bit RGB PNG file per image, lossless.

    Written here rather than by Pillow, whose writer tries every row filter on every row and
    costs more CPU than the rest of a Generate call: one fixed filter (Sub, computed for the
    whole batch in one numpy operation) and zlib's run-length strategy at level 1 give files
    of about the same size for a fraction of the work. Any PNG decoder reads them."""
    pixels = np.ascontiguousarray(pixels, np.uint8)
    n, h, w, c = pixels.shape
    if c != 3:
        raise ValueError(f"expected RGB pixels [n, h, w, 3], got {pixels.shape}")
    rows = pixels.reshape(n, h, w * c)
    filtered = np.empty((n, h, 1 + w * c), np.uint8)
    filtered[:, :, 0] = _PNG_SUB
    filtered[:, :, 1 : 1 + c] = rows[:, :, :c]
    # uint8 arithmetic wraps modulo 256, which is exactly the filter's definition.
    np.subtract(rows[:, :, c:], rows[:, :, :-c], out=filtered[:, :, 1 + c :])
    head = _PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    tail = _png_chunk(b"IEND", b"")
    out = []
    for image in filtered:
        z = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        out.append(head + _png_chunk(b"IDAT", z.compress(image.data) + z.flush()) + tail)
    return out
