"""Messages <-> arrays: embedding validation, image bytes in and out, latent paths."""

from __future__ import annotations

import io
import itertools

import numpy as np
from PIL import Image

from vaegan.errors import ImageRejected, InvalidInput
from vaegan.preprocess import CropPolicy, preprocess
from vaegan.v1 import vaegan_pb2 as pb


def embeddings(items, latent_dim: int, field: str, max_items: int) -> np.ndarray:
    """Repeated Embedding -> float32 [n, latent]; every bad value named by its field."""
    if not items:
        raise InvalidInput(f"{field}: at least one embedding is required")
    if len(items) > max_items:
        raise InvalidInput(f"{field}: {len(items)} embeddings; at most {max_items} per request")
    out = np.empty((len(items), latent_dim), np.float32)
    for i, e in enumerate(items):
        out[i] = embedding(e, latent_dim, f"{field}[{i}]")
    return out


def embedding(e, latent_dim: int, field: str) -> np.ndarray:
    n = len(e.values)
    if n != latent_dim:
        raise InvalidInput(f"{field}.values: length {n}; this model's latent size is {latent_dim}")
    arr = np.asarray(e.values, np.float32)
    if not np.isfinite(arr).all():
        raise InvalidInput(f"{field}.values: contains NaN or Inf")
    return arr


def to_embeddings(arr: np.ndarray) -> list[pb.Embedding]:
    return [pb.Embedding(values=row.tolist()) for row in np.asarray(arr, np.float32)]


def decode_image(
    data: bytes, policy: CropPolicy, field: str, max_bytes: int, max_pixels: int
) -> np.ndarray:
    """Encoded PNG/JPEG -> the model's uint8 input, cut exactly as in training."""
    if len(data) > max_bytes:
        raise InvalidInput(f"{field}: {len(data)} bytes; at most {max_bytes} per image")
    try:
        return preprocess(bytes(data), policy, max_pixels=max_pixels)
    except ImageRejected as e:
        raise InvalidInput(f"{field}: {e}") from None


def encode_images(pixels: np.ndarray, options: pb.OutputOptions) -> list[pb.Image]:
    fmt = options.format or pb.IMAGE_FORMAT_PNG
    quality = options.jpeg_quality or 90
    if not 1 <= quality <= 100:
        raise InvalidInput(f"output.jpeg_quality: {quality}; expected 1..100")
    out = []
    for px in pixels:
        h, w = px.shape[:2]
        if fmt == pb.IMAGE_FORMAT_RAW:
            data = np.ascontiguousarray(px, np.uint8).tobytes()
        else:
            buf = io.BytesIO()
            if fmt == pb.IMAGE_FORMAT_JPEG:
                Image.fromarray(px).save(buf, format="JPEG", quality=quality)
            elif fmt == pb.IMAGE_FORMAT_PNG:
                Image.fromarray(px).save(buf, format="PNG", compress_level=1)  # speed over size
            else:
                raise InvalidInput(f"output.format: unknown value {fmt}")
            data = buf.getvalue()
        out.append(pb.Image(data=data, format=fmt, width=w, height=h))
    return out


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation (Shoemake 1985; White 2016 for latent spaces): constant
    angular speed, magnitudes interpolated linearly. Near-parallel vectors, where the
    angle is numerically meaningless, fall back to linear interpolation."""
    t = t[:, None]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-8 or nb < 1e-8:
        return (1 - t) * a + t * b
    cos = float(np.clip(np.dot(a / na, b / nb), -1.0, 1.0))
    omega = np.arccos(cos)
    if np.sin(omega) < 1e-6:
        return (1 - t) * a + t * b
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def path(keys: np.ndarray, steps: int, spherical: bool) -> np.ndarray:
    """All frames through the keyframes: endpoints included, ``steps`` between each pair."""
    t = np.linspace(0.0, 1.0, steps + 2)[:-1]  # each segment without its end...
    segments = [
        slerp(a, b, t) if spherical else (1 - t[:, None]) * a + t[:, None] * b
        for a, b in itertools.pairwise(keys)
    ]
    return np.concatenate([*segments, keys[-1:]]).astype(
        np.float32
    )  # ...and the last keyframe once
