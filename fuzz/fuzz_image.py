"""Fuzz the image path every Encode request takes: byte cap, format allow-list, pixel cap,
the header's decode-cost estimate, decode, crop, resize (seeds include decompression bombs
at the pixel cap). Anything but ``InvalidInput`` is a crash.

    python -m fuzz.fuzz_image [CORPUS_DIR] -atheris_runs=N   (libFuzzer flags work)
"""

import sys

import atheris

with atheris.instrument_imports():
    from vaegan.errors import InvalidInput
    from vaegan.preprocess import CropPolicy
    from vaegan.service.codecs import decode_image, header_cost
    from vaegan.service.limits import Limits

POLICY = CropPolicy("center", 0.75, 64)
LIMITS = Limits(
    max_items=1,
    max_image_bytes=1 << 20,
    max_image_pixels=4_000_000,
    max_request_pixels=4_000_000,
    max_steps=1,
    max_frames=1,
    max_message_bytes=1 << 21,
    max_stream_pending=1,
    max_stream_message_bytes=1 << 18,
)


def test_one(data: bytes) -> None:
    try:
        # What LatentCore checks before decoding: bytes, then the header's pixels and cost.
        LIMITS.image_bytes(len(data), "images[0]")
        header_cost(data, POLICY, "images[0]", LIMITS)
        out = decode_image(data, POLICY, "images[0]", LIMITS.max_image_pixels)
    except InvalidInput:
        return
    assert out.shape == (64, 64, 3) and out.dtype.name == "uint8", (out.shape, out.dtype)


def main() -> None:
    # libFuzzer ends the process itself; its own status lines report runs and peak RSS.
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
