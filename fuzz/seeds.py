"""Seed corpora for the fuzzers, written at run time (nothing binary is committed).

python -m fuzz.seeds DIR   -> DIR/image/*, DIR/requests/*
"""

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vaegan.v1 import vaegan_pb2 as pb


def _image(fmt: str, size=(24, 20), mode="RGB") -> bytes:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def bombs(side: int) -> dict[str, bytes]:
    """Small files that decode expensively at ``side`` x ``side`` (the fuzzers' pixel cap at
    2000): 16-bit greyscale, RGBA, a palette with a transparent colour."""
    out = {}
    for name, im, extra in (
        ("bomb_16bit", Image.new("I;16", (side, side)), {}),
        ("bomb_rgba", Image.new("RGBA", (side, side)), {}),
        ("bomb_palette_transparency", Image.new("P", (side, side)), {"transparency": 0}),
    ):
        buf = io.BytesIO()
        im.save(buf, format="PNG", **extra)
        out[name] = buf.getvalue()
    return out


def write_seeds(root: str | Path) -> tuple[Path, Path]:
    root = Path(root)
    images, requests = root / "image", root / "requests"
    images.mkdir(parents=True, exist_ok=True)
    requests.mkdir(parents=True, exist_ok=True)
    pics = {
        "png": _image("PNG"),
        "jpeg": _image("JPEG"),
        "grey": _image("PNG", mode="L"),
        "rgba": _image("PNG", mode="RGBA"),
        "palette": _image("PNG", mode="P"),
        "cmyk": _image("JPEG", mode="CMYK"),
    }
    for name, data in {**pics, **bombs(2000)}.items():
        (images / name).write_bytes(data)
    emb = pb.Embedding(values=[0.5] * 8)
    seeds = {
        "generate_embeddings": (
            0,
            pb.GenerateRequest(embeddings=pb.EmbeddingList(items=[emb, emb])),
        ),
        "generate_sample": (
            0,
            pb.GenerateRequest(
                sample=pb.Sample(count=3, seed=1, temperature=0.7),
                output=pb.OutputOptions(format=pb.IMAGE_FORMAT_JPEG, jpeg_quality=50),
            ),
        ),
        "encode": (
            1,
            pb.EncodeRequest(
                images=[pics["png"], pics["jpeg"]], sample=True, reconstruction_error=True
            ),
        ),
        "interpolate": (
            2,
            pb.InterpolateRequest(
                keyframes=[pb.Keyframe(embedding=emb), pb.Keyframe(image=pics["png"])],
                steps=3,
                method=pb.INTERPOLATION_METHOD_LINEAR,
            ),
        ),
    }
    for name, (kind, msg) in seeds.items():
        (requests / name).write_bytes(bytes([kind]) + msg.SerializeToString())
    return images, requests


if __name__ == "__main__":
    write_seeds(sys.argv[1])
