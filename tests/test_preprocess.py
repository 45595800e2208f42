"""The shared crop/resize module: what training stores is what serving computes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import encode, pattern, png_header_only
from PIL import Image

from vaegan.errors import ImageRejected
from vaegan.preprocess import CropPolicy, canvas, crop_box, preprocess, random_window

CENTER = CropPolicy("center", 0.75, 64)


def test_center_crop_takes_the_centred_box_of_three_quarters_the_short_side():
    # 400x200: the box is 150x150 at (125, 25). Paint it green, everything else red.
    arr = np.zeros((200, 400, 3), np.uint8)
    arr[..., 0] = 255
    arr[25:175, 125:275] = (0, 255, 0)
    out = preprocess(encode(Image.fromarray(arr), "PNG"), CENTER)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    inner = out[1:-1, 1:-1].astype(int)
    assert (inner[..., 1] > 240).all() and (inner[..., 0] < 15).all()


def test_crop_box_is_centred_without_rng_and_anywhere_with_one():
    assert crop_box(400, 200, 0.75) == (125.0, 25.0, 275.0, 175.0)
    rng = np.random.default_rng(0)
    lefts = {round(crop_box(400, 200, 0.75, rng)[0]) for _ in range(50)}
    assert min(lefts) < 60 and max(lefts) > 190  # spans most of [0, 250]


def test_random_windows_of_a_canvas_vary_and_match_the_crop_side():
    policy = CropPolicy("random", 0.75, 64)
    c = canvas(pattern(300, 200), policy)
    assert min(c.shape[:2]) == policy.canvas_side == 85
    a = random_window(c, 64, np.random.default_rng(1))
    b = random_window(c, 64, np.random.default_rng(2))
    assert a.shape == b.shape == (64, 64, 3)
    assert not np.array_equal(a, b)


def test_rgba_is_composited_on_white():
    im = Image.new("RGBA", (100, 100), (255, 0, 0, 0))  # fully transparent red
    out = preprocess(encode(im, "PNG"), CENTER)
    assert (out == 255).all()


def test_greyscale_palette_and_cmyk_become_rgb():
    base = pattern(96, 96, 3)
    for im, fmt in [
        (base.convert("L"), "PNG"),
        (base.convert("P"), "PNG"),
        (base.convert("CMYK"), "JPEG"),
    ]:
        out = preprocess(encode(im, fmt), CENTER)
        assert out.shape == (64, 64, 3)
    grey = preprocess(encode(base.convert("L"), "PNG"), CENTER)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    arr = np.full((64, 64), 32896, np.uint16)  # 128 * 257: mid-grey in 16 bits
    out = preprocess(encode(Image.fromarray(arr), "PNG"), CENTER)
    assert np.abs(out.astype(int) - 128).max() <= 1


def test_tiny_image_is_upsampled():
    out = preprocess(encode(pattern(10, 10), "PNG"), CENTER)
    assert out.shape == (64, 64, 3)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"hello, not an image", "not_an_image"),
        (encode(pattern(32, 32), "GIF"), "unsupported_format"),
        (encode(pattern(32, 32), "BMP"), "unsupported_format"),
        (png_header_only(20000, 20000), "too_large"),
        (encode(pattern(200, 200), "JPEG")[:1500], "truncated"),
        (encode(pattern(200, 200), "PNG")[:1500], "truncated"),
    ],
    ids=["empty", "text", "gif", "bmp", "png-bomb-header", "truncated-jpeg", "truncated-png"],
)
def test_bad_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageRejected) as e:
        preprocess(data, CENTER)
    assert e.value.reason == reason
    assert e.value.grpc_code == "INVALID_ARGUMENT"


def test_malformed_png_header_found_by_fuzzing_is_rejected_not_raised():
    # Regression (make fuzz): a 5-byte IHDR made Pillow raise ValueError, which would have
    # reached a caller as INTERNAL.
    import struct
    import zlib

    body = b"IHDR" + bytes(5)
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 5) + body + struct.pack(">I", zlib.crc32(body))
    with pytest.raises(ImageRejected) as e:
        preprocess(data, CENTER)
    assert e.value.reason == "unreadable"


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageRejected, match="limit is 5000") as e:
        preprocess(encode(pattern(100, 100), "PNG"), CENTER, max_pixels=5000)
    assert e.value.reason == "too_large"


def test_jpeg_draft_decoding_stays_close_to_a_full_decode():
    data = encode(pattern(1600, 1200, 4), "JPEG", quality=95)
    fast = preprocess(data, CENTER).astype(int)
    from vaegan.preprocess import RESAMPLE, crop_box, to_rgb

    im = to_rgb(Image.open(__import__("io").BytesIO(data)))
    full = np.asarray(im.resize((64, 64), RESAMPLE, box=crop_box(*im.size, 0.75))).astype(int)
    assert np.abs(fast - full).mean() < 2.0
