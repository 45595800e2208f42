"""Client verbs against a running gateway: ``generate``, ``encode``, ``interpolate``,
``batch`` and ``info``. They share one set of connection flags and one error line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vaegan.errors import VaeganError


def connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target", default="localhost:50051", help="gateway address (default localhost:50051)"
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="call deadline in seconds (default 30)"
    )
    p.add_argument("--token", default=None, help="bearer token (default: $VAEGAN_TOKEN)")
    p.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    p.add_argument("--tls-ca", default=None, help="TLS, trusting this CA bundle (PEM)")
    p.add_argument("--tls-cert", default=None, help="client certificate for mutual TLS (PEM)")
    p.add_argument("--tls-key", default=None, help="its private key (PEM)")


def register(sub) -> None:
    g = sub.add_parser("generate", help="images from random or given embeddings, as a PNG grid")
    connection_flags(g)
    g.add_argument(
        "--random",
        type=int,
        default=16,
        metavar="N",
        help="draw N vectors from the prior (default 16)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the drawn vectors (default 0)")
    g.add_argument(
        "--temperature", type=float, default=None, help="scale of the drawn vectors (default 1)"
    )
    g.add_argument(
        "--prior",
        choices=["standard", "fitted"],
        default="standard",
        help="draw from N(0, I) (standard) or from the mixture fitted to the training codes at "
        "export (fitted: recognisable images from small models; needs export --data)",
    )
    g.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="STEPS",
        help="re-encode each drawn image and decode its code again, STEPS times (0..16, "
        "default 0): moves the draws toward the codes of real images",
    )
    g.add_argument(
        "--embeddings", default=None, metavar="Z.npy", help="decode these vectors instead"
    )
    g.add_argument("--out", required=True, help="PNG grid to write")
    g.set_defaults(func=generate)

    en = sub.add_parser("encode", help="embeddings (mu) of image files, as a .npy array")
    connection_flags(en)
    en.add_argument("images", nargs="+", help="PNG or JPEG files")
    en.add_argument("--out", required=True, help=".npy file to write")
    en.add_argument(
        "--reconstruction-error",
        action="store_true",
        help="also print each image's reconstruction MSE",
    )
    en.set_defaults(func=encode)

    ip = sub.add_parser(
        "interpolate", help="a path between keyframes (images or .npy vectors), as a PNG strip"
    )
    connection_flags(ip)
    ip.add_argument("keyframes", nargs="+", help="two or more PNG/JPEG files or .npy vectors")
    ip.add_argument(
        "--steps", type=int, default=8, help="frames between consecutive keyframes (default 8)"
    )
    ip.add_argument(
        "--method",
        choices=["spherical", "linear"],
        default="spherical",
        help="default spherical (slerp)",
    )
    ip.add_argument(
        "--out",
        required=True,
        help="a .png grid (one row per segment), or a .gif / .webp animation (frames streamed)",
    )
    ip.add_argument("--fps", type=float, default=12.0, help="animation frame rate (default 12)")
    ip.add_argument(
        "--bounce", action="store_true", help="animation plays forward then back, looping smoothly"
    )
    ip.add_argument("--quiet", action="store_true", help="no progress bar")
    ip.set_defaults(func=interpolate)

    bj = sub.add_parser(
        "batch",
        help="run a JSONL batch job (embeddings -> images, images -> embeddings)",
        description='Each input line is {"embeddings": [...], "key": K} or '
        '{"image_bytes": {"b64": ...}, "key": K}; each output line has the key and the result '
        "or an error. Errors do not stop the job. Embedding lines go out over GenerateStream "
        "(a stream per 8 lines in flight), image lines as Encode calls.",
    )
    connection_flags(bj)
    bj.add_argument("--input", required=True, help="JSONL file of instances")
    bj.add_argument("--output", required=True, help="JSONL file of results, in input order")
    bj.add_argument("--concurrency", type=int, default=16, help="lines in flight (default 16)")
    bj.add_argument("--quiet", action="store_true", help="no progress bar")
    bj.set_defaults(func=batch)

    inf = sub.add_parser("info", help="the served model's facts, versions and limits, as JSON")
    connection_flags(inf)
    inf.set_defaults(func=info)


def token(a: argparse.Namespace) -> str | None:
    return a.token or os.environ.get("VAEGAN_TOKEN") or None


def tls(a: argparse.Namespace) -> dict:
    """The connection flags' TLS material, as LatentClient takes it (empty: plaintext)."""

    def read(path):
        return Path(path).read_bytes() if path else None

    if not (a.tls or a.tls_ca or a.tls_cert):
        return {}
    return dict(
        tls=True, tls_ca=read(a.tls_ca), client_cert=read(a.tls_cert), client_key=read(a.tls_key)
    )


def connect(a: argparse.Namespace):
    from vaegan.client import LatentClient

    return LatentClient(a.target, timeout=a.timeout, token=token(a), **tls(a))


def _rpc(fn):
    """A gRPC error becomes one line with its status code."""

    def run(a: argparse.Namespace) -> int:
        import grpc

        try:
            return fn(a)
        except grpc.RpcError as e:
            raise VaeganError(f"{e.code().name}: {e.details()}") from None

    return run


@_rpc
def generate(a: argparse.Namespace) -> int:
    import numpy as np

    from vaegan.grid import save_grid

    with connect(a) as c:
        if a.embeddings:
            images, _ = c.generate(np.load(a.embeddings).reshape(-1, c.info().latent_dim))
        else:
            images, _ = c.generate(
                count=a.random,
                seed=a.seed,
                temperature=a.temperature,
                prior=a.prior,
                refine_steps=a.refine,
            )
    save_grid(images, a.out)
    print(f"wrote {len(images)} images to {a.out}")
    return 0


@_rpc
def encode(a: argparse.Namespace) -> int:
    import numpy as np

    with connect(a) as c:
        r = c.encode(
            [Path(p).read_bytes() for p in a.images], reconstruction_error=a.reconstruction_error
        )
    np.save(a.out, r.mu)
    print(
        f"wrote mu of {len(a.images)} images, shape {r.mu.shape}, to {a.out} (encoder v{r.encoder_version})"
    )
    if r.reconstruction_mse is not None:
        for path, v in zip(a.images, r.reconstruction_mse, strict=True):
            print(f"{path}\treconstruction_mse {v:.5f}")
    return 0


@_rpc
def interpolate(a: argparse.Namespace) -> int:
    import numpy as np

    from vaegan.grid import save_grid

    keys = [np.load(k).ravel() if k.endswith(".npy") else Path(k).read_bytes() for k in a.keyframes]
    spherical = a.method == "spherical"
    if Path(a.out).suffix.lower() not in (".gif", ".webp"):
        with connect(a) as c:
            images, _ = c.interpolate(keys, a.steps, spherical=spherical)
        save_grid(images, a.out, nrow=a.steps + 2)
        print(f"wrote {len(images)} frames to {a.out}")
        return 0
    from PIL import Image
    from tqdm import tqdm

    frames = []
    with connect(a) as c, tqdm(desc="frames", unit="frame", disable=a.quiet) as bar:
        for _, total, image, _ in c.interpolate_stream(keys, a.steps, spherical=spherical):
            bar.total = total
            bar.update(1)
            frames.append(Image.fromarray(image))
    if a.bounce:  # there and back again, for a loop without a jump
        frames += frames[-2:0:-1]
    frames[0].save(
        a.out, save_all=True, append_images=frames[1:], duration=round(1000 / a.fps), loop=0
    )
    print(f"wrote {len(frames)} frames to {a.out} ({a.fps} fps)")
    return 0


def batch(a: argparse.Namespace) -> int:
    from vaegan.batch_job import run_job

    with connect(a) as client:  # the same TLS, token and deadline as the other verbs
        counts = run_job(client, a.input, a.output, concurrency=a.concurrency, progress=not a.quiet)
    print(f"wrote {a.output}: {counts['ok']} results, {counts['errors']} errors")
    return 0


@_rpc
def info(a: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with connect(a) as c:
        print(json_format.MessageToJson(c.info(), preserving_proto_field_name=True))
    return 0
