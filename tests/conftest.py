"""Shared fixtures: real image files of every kind the tools must handle."""

from __future__ import annotations

import datetime
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def png_header_only(width: int, height: int) -> bytes:
    """A 45-byte PNG whose header claims width x height: signature, IHDR, empty IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def pattern(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth colourful RGB image (smooth so JPEG keeps it close)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    c = rng.uniform(0.5, 4, size=(3, 2))
    arr = np.stack([np.sin(c[i, 0] * xx * 6 + c[i, 1] * yy * 6) for i in range(3)], -1)
    return Image.fromarray(((arr + 1) * 127.5).astype(np.uint8), "RGB")


@pytest.fixture
def image_zoo(tmp_path: Path) -> Path:
    """A folder with every kind of file `vaegan prepare` meets; names say what they are."""
    d = tmp_path / "zoo"
    (d / "nested" / "deeper").mkdir(parents=True)
    pattern(120, 90, 1).save(d / "photo.jpg", quality=95)
    pattern(90, 120, 2).save(d / "nested" / "UPPER.JPG", quality=95)
    pattern(100, 100, 3).save(d / "plain.png")
    rgba = pattern(80, 80, 4).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((80, 80)))
    rgba.save(d / "nested" / "deeper" / "rgba.png")
    pattern(96, 96, 5).convert("L").save(d / "grey.png")
    pattern(96, 96, 6).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    pattern(96, 96, 7).convert("P", palette=Image.Palette.ADAPTIVE).save(d / "palette.png")
    arr16 = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(arr16).save(d / "sixteen.png")
    pattern(10, 10, 8).save(d / "tiny.png")
    full = encode(pattern(200, 200, 9), "JPEG", quality=95)
    (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    fullpng = encode(pattern(200, 200, 10), "PNG")
    (d / "truncated.png").write_bytes(fullpng[: len(fullpng) // 2])
    (d / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    pattern(64, 64, 11).save(d / "animated.png", format="GIF")  # a GIF behind a .png name
    (d / "bomb.png").write_bytes(png_header_only(20000, 20000))
    pattern(400, 300, 12).save(d / "large.png")  # refused when max_pixels < 120000
    (d / "readme.txt").write_text("ignored: not an image extension\n")
    return d


def shapes_folder(root: Path, n: int = 48, side: int = 48, seed: int = 0) -> Path:
    """Generated training data: one coloured disc or square per image on white."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.new("RGB", (side, side), "white")
        r = int(rng.integers(side // 6, side // 3))
        cx, cy = (int(v) for v in rng.integers(r, side - r, 2))
        colour = tuple(int(v) for v in rng.integers(0, 200, 3))
        draw = ImageDraw.Draw(im)
        (draw.ellipse if i % 2 else draw.rectangle)((cx - r, cy - r, cx + r, cy + r), fill=colour)
        im.save(root / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> Path:
    """A prepared 32x32 dataset of generated shapes (shared: tests only read it)."""
    from vaegan.training.prepare import prepare

    base = tmp_path_factory.mktemp("shapes")
    prepare(
        shapes_folder(base / "images", n=64),
        base / "data",
        center_crop=True,
        val_fraction=0.25,
        size=32,
        workers=1,
        progress=False,
    )
    return base / "data"


@pytest.fixture(scope="session")
def tiny_checkpoint(shapes_dataset, tmp_path_factory) -> Path:
    """A checkpoint of a tiny model trained for a few steps on the generated shapes."""
    from vaegan.training.config import ModelConfig, TrainConfig
    from vaegan.training.train import train

    run = tmp_path_factory.mktemp("tiny_run")
    cfg = TrainConfig(
        model=ModelConfig(width=8, latent_dim=16),
        steps=6,
        batch_size=16,
        eval_every=6,
        checkpoint_every=6,
        num_samples=8,
        pixel_weight=1.0,
    )
    train(cfg, shapes_dataset, run, progress=False)
    return run / "checkpoints" / "last.pt"


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its content, to show a folder was left untouched."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="session")
def repo(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny model exported as the python flavour: it carries model.onnx too, so the same
    repository serves the embedded backend and the real local Triton. Tests only read it."""
    import sys

    from vaegan.export.export import export
    from vaegan.export.options import ExportOptions

    path = tmp_path_factory.mktemp("repo")
    export(
        tiny_checkpoint,
        path,
        ExportOptions(backend="python", execution_env=sys.prefix + "-triton"),
        log=lambda *_: None,
    )
    return path


@pytest.fixture(scope="session")
def latent_repo(repo, tmp_path_factory) -> Path:
    """(Latent tools) A copy of the exported tiny model with a 'round' attribute (discs vs squares),
    pc1..pc3 and a 3-component fitted prior stored beside version 1."""
    import shutil

    from vaegan import prior
    from vaegan import repository as store
    from vaegan.export.latent_tools import add_attribute
    from vaegan.latent import principal_directions

    base = tmp_path_factory.mktemp("latent_rpc")
    copy = Path(shutil.copytree(repo, base / "repo"))
    shapes = shapes_folder(base / "all", n=40, seed=3)
    discs, squares = base / "discs", base / "squares"
    discs.mkdir(), squares.mkdir()
    for i, p in enumerate(sorted(shapes.iterdir())):
        shutil.copy(p, (discs if i % 2 else squares) / p.name)
    add_attribute(copy, "round", discs, squares)
    found = store.load_directions(copy, "1")
    z = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    found.update({d.name: d for d in principal_directions(z, 3)})
    store.save_directions(copy, "1", found)
    store.save_prior(copy, "1", prior.fit(z, 3))
    return copy


def _cert(name, issuer_name=None, issuer_key=None, ca=False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert, key


def _pem(cert, key):
    from cryptography.hazmat.primitives import serialization

    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A throwaway CA, a server certificate for localhost, a client certificate it signed
    and a rogue one from another CA: PEM bytes by name, and the folder they are in."""
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = _cert("vaegan test CA", ca=True)
    server, server_key = _cert("localhost", ca.subject, ca_key)
    client, client_key = _cert("a-client", ca.subject, ca_key)
    rogue_ca, rogue_key = _cert("someone else's CA", ca=True)
    rogue, rogue_client_key = _cert("rogue", rogue_ca.subject, rogue_key)
    files = {}
    for name, (c, k) in {
        "ca": (ca, ca_key),
        "server": (server, server_key),
        "client": (client, client_key),
        "rogue": (rogue, rogue_client_key),
    }.items():
        cert_pem, key_pem = _pem(c, k)
        (d / f"{name}.pem").write_bytes(cert_pem)
        (d / f"{name}.key").write_bytes(key_pem)
        files[name] = (cert_pem, key_pem)
    files["dir"] = d
    return files


def mutual_tls(pki) -> dict[str, str]:
    """Gateway settings for ``pki``'s server certificate, requiring client certificates
    signed by its CA."""
    d = pki["dir"]
    return {
        "tls_cert": str(d / "server.pem"),
        "tls_key": str(d / "server.key"),
        "tls_client_ca": str(d / "ca.pem"),
    }
