"""Image decoding, cropping and resizing: the one place training and serving share.

Torch-free on purpose: the gateway's ``Encode`` and ``vaegan prepare`` both call
:func:`preprocess`, so a model is always fed images cut the way it was trained on
(the original tool cropped differently in training and serving; see the tests).

The crop follows the original tool: a square box of side ``fraction * min(h, w)``
(0.75 by default), centred or at a random position, resized to ``size`` x ``size``
with Pillow's antialiased bilinear filter.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vaegan.errors import ImageRejected, InvalidInput

#: Containers accepted anywhere in the project. Other formats are refused by what the
#: bytes are, not by the file name.
ALLOWED_FORMATS = ("JPEG", "PNG")
#: Refuse images above this many pixels before decoding them (decompression bombs).
DEFAULT_MAX_PIXELS = 40_000_000
#: Canvases kept for train-time random crops never exceed this aspect ratio.
MAX_CANVAS_ASPECT = 4
RESAMPLE = Image.Resampling.BILINEAR
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class CropPolicy:
    """How an image becomes a model input. Saved in checkpoints and model facts."""

    mode: str = "center"  # "center" or "random" (random = train-time augmentation only)
    fraction: float = 0.75  # side of the crop box as a fraction of min(height, width)
    size: int = 64  # output side in pixels

    def __post_init__(self) -> None:
        if self.mode not in ("center", "random"):
            raise InvalidInput(f"crop mode must be 'center' or 'random', got {self.mode!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise InvalidInput(f"crop fraction must be in (0, 1], got {self.fraction}")
        if self.size < 1:
            raise InvalidInput(f"crop size must be positive, got {self.size}")

    @property
    def canvas_side(self) -> int:
        """Short side of a stored canvas so that a ``size`` window is ``fraction`` of it."""
        return max(self.size, round(self.size / self.fraction))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CropPolicy:
        return cls(mode=str(d["mode"]), fraction=float(d["fraction"]), size=int(d["size"]))


def open_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image lazily and check what it is before any pixel is decoded."""
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    if isinstance(source, bytes | bytearray) and not source:
        raise ImageRejected("empty", "image bytes are empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own threshold; the explicit cap below decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", "not a PNG or JPEG image") from None
    except Image.DecompressionBombError:
        raise ImageRejected("too_large", f"image exceeds {max_pixels} pixels") from None
    except OSError as e:  # unreadable file, truncated header
        raise ImageRejected("unreadable", f"cannot read image: {e}") from None
    except Exception as e:
        # Pillow's parsers raise ValueError, SyntaxError, struct.error... on malformed
        # headers (found by fuzzing): untrusted bytes that fail to parse are refused.
        raise ImageRejected(
            "unreadable", f"malformed image header ({type(e).__name__}: {e})"
        ) from None
    if im.format not in ALLOWED_FORMATS:
        raise ImageRejected(
            "unsupported_format",
            f"image format {im.format} is not accepted; send {' or '.join(ALLOWED_FORMATS)}",
        )
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageRejected("empty", f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageRejected(
            "too_large", f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}"
        )
    return im


def to_rgb(im: Image.Image) -> Image.Image:
    """Decode and convert any accepted mode to 8-bit RGB; transparency goes onto white."""
    try:
        im.load()
        im = ImageOps.exif_transpose(im)  # phone photos: pixels as the user sees them
    except Exception as e:  # any decoder failure on untrusted bytes is a refusal
        raise ImageRejected("truncated", f"image data is truncated or corrupt: {e}") from None
    if im.mode.startswith("I"):  # 16-bit greyscale: Pillow's convert() clips, so scale
        # Integers throughout (a float64 copy would cost 8 bytes a pixel): round(v / 257).
        arr = np.asarray(im, dtype=np.int32)
        arr = np.clip((arr + 128) // 257, 0, 255)
        im = Image.fromarray(arr.astype(np.uint8), "L")
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return im.convert("RGB")


def load_rgb(
    source: str | Path | bytes,
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Open, check, decode and convert to RGB.

    ``min_side``: the smallest short side the caller needs; JPEGs are then decoded at a
    reduced scale (libjpeg's draft mode) that keeps at least that much, which makes large
    photos several times cheaper to decode. Training and serving pass the same value.
    """
    im = open_image(source, max_pixels=max_pixels)
    if min_side and im.format == "JPEG":
        w, h = im.size
        k = min_side / min(w, h)
        if k < 1:
            im.draft(im.mode, (math.ceil(w * k), math.ceil(h * k)))
    return to_rgb(im)


# Peak bytes a pixel costs through ``to_rgb``, by mode: the decoded image, the copies its
# conversion makes (16-bit: int32 + uint8; transparency: RGBA + a white RGBA + RGB), the RGB
# result. Measured shapes of the code above, rounded up.
_BYTES_PER_PIXEL = {"1": 4, "L": 4, "P": 4, "RGB": 7, "CMYK": 8, "YCbCr": 7, "LA": 14, "PA": 14}
_BYTES_TRANSPARENT = 15  # RGBA, or any mode with a transparency key
_BYTES_16BIT = 13


def decode_cost(im: Image.Image, min_side: int | None = None) -> int:
    """Bytes decoding ``im`` (opened, not yet loaded) will take at its peak, from its header:
    what a memory budget for decoding must reserve. JPEGs decode reduced (draft mode) when
    ``min_side`` allows, as ``load_rgb`` does."""
    w, h = im.size
    if im.format == "JPEG":
        scale = 1
        while scale < 8 and min_side and min(w, h) / (2 * scale) >= min_side:
            scale *= 2
        w, h = math.ceil(w / scale), math.ceil(h / scale)
    if im.mode.startswith("I") or im.mode == "F":
        per = _BYTES_16BIT
    elif im.mode in ("RGBA", "RGBa", "La") or "transparency" in im.info:
        per = _BYTES_TRANSPARENT
    else:
        per = _BYTES_PER_PIXEL.get(im.mode, _BYTES_TRANSPARENT)
    return w * h * per


def crop_box(
    width: int, height: int, fraction: float, rng: np.random.Generator | None = None
) -> tuple[float, float, float, float]:
    """The square box of side ``fraction*min(w, h)``: centred, or uniform if ``rng``."""
    side = fraction * min(width, height)
    if rng is None:
        left, top = (width - side) / 2, (height - side) / 2
    else:
        left, top = rng.uniform(0, width - side), rng.uniform(0, height - side)
    return (left, top, left + side, top + side)


def decode_side(policy: CropPolicy) -> int:
    # Decode at >= 2x the resolution the crop needs, so the antialiasing filter still
    # has real pixels to average (draft mode only reduces by 1/2, 1/4 or 1/8).
    return math.ceil(2 * policy.size / policy.fraction)


def preprocess(
    source: str | Path | bytes | Image.Image,
    policy: CropPolicy,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """The model input for one image: uint8 [size, size, 3], RGB.

    Always the centre box: serving must be deterministic, and random crops are a
    training-time augmentation whose positions average to the centre.
    """
    im = (
        source
        if isinstance(source, Image.Image)
        else load_rgb(source, min_side=decode_side(policy), max_pixels=max_pixels)
    )
    box = crop_box(im.width, im.height, policy.fraction)
    out = im.resize((policy.size, policy.size), RESAMPLE, box=box)
    return np.asarray(out, dtype=np.uint8)


def canvas(
    source: str | Path | bytes | Image.Image,
    policy: CropPolicy,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """The whole image scaled so its short side is ``policy.canvas_side``, for random crops.

    A ``size`` window anywhere in it is the original tool's random ``fraction`` box.
    Panoramas are trimmed to ``MAX_CANVAS_ASPECT`` around the centre to bound storage.
    """
    im = (
        source
        if isinstance(source, Image.Image)
        else load_rgb(source, min_side=decode_side(policy), max_pixels=max_pixels)
    )
    w, h = im.width, im.height
    short = min(w, h)
    keep_w, keep_h = min(w, MAX_CANVAS_ASPECT * short), min(h, MAX_CANVAS_ASPECT * short)
    box = ((w - keep_w) / 2, (h - keep_h) / 2, (w + keep_w) / 2, (h + keep_h) / 2)
    side = policy.canvas_side
    out_w, out_h = round(keep_w * side / short), round(keep_h * side / short)
    out = im.resize((max(out_w, side), max(out_h, side)), RESAMPLE, box=box)
    return np.asarray(out, dtype=np.uint8)


def random_window(arr: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` x ``size`` window of a canvas at a uniformly random position."""
    h, w = arr.shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return arr[top : top + size, left : left + size]
