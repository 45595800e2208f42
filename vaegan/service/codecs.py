"""Messages <-> arrays: embedding values, image bytes in and out. Limits are checked by the
caller (``vaegan.service.limits``); these only convert."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vaegan.errors import ImageRejected, InvalidInput
from vaegan.preprocess import CropPolicy, decode_cost, decode_side, open_image, preprocess
from vaegan.v1 import vaegan_pb2 as pb


def to_embeddings(arr: np.ndarray) -> list[pb.Embedding]:
    return [pb.Embedding(values=row.tolist()) for row in np.asarray(arr, np.float32)]


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


def encode_images(pixels: np.ndarray, options: pb.OutputOptions) -> list[pb.Image]:
    fmt, quality = output_options(options)
    out = []
    for px in pixels:
        h, w = px.shape[:2]
        if fmt == pb.IMAGE_FORMAT_RAW:
            data = np.ascontiguousarray(px, np.uint8).tobytes()
        else:
            buf = io.BytesIO()
            if fmt == pb.IMAGE_FORMAT_JPEG:
                Image.fromarray(px).save(buf, format="JPEG", quality=quality)
            else:
                Image.fromarray(px).save(buf, format="PNG", compress_level=1)  # speed over size
            data = buf.getvalue()
        out.append(pb.Image(data=data, format=fmt, width=w, height=h))
    return out
