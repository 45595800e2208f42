"""The ``vaegan`` command. Parsers are built in ``main()``; heavy imports (torch) happen
only inside the subcommand that needs them, so ``vaegan --help`` is instant."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vaegan.errors import VaeganError


def _prepare(a: argparse.Namespace) -> int:
    from vaegan.training.prepare import prepare

    m = prepare(
        a.images_dir,
        a.out,
        center_crop=a.center_crop,
        val_fraction=a.val_fraction,
        seed=a.seed,
        size=a.size,
        max_pixels=a.max_pixels,
        workers=a.workers,
        overwrite=a.overwrite,
        progress=not a.quiet,
    )
    c = m["counts"]
    print(
        f"prepared {a.out}: {c['train']} train, {c['val']} val, {c['skipped']} skipped of {c['found']} files"
        + (f" {m['skipped_by_reason']}" if m["skipped_by_reason"] else "")
        + f"; crop {m['crop']['mode']} {m['crop']['fraction']} -> {m['crop']['size']}px"
    )
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _train(a: argparse.Namespace) -> int:
    from pathlib import Path

    from vaegan.training.checkpoint import LAST
    from vaegan.training.config import apply_overrides, preset
    from vaegan.training.train import config_from_checkpoint, train

    if a.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from vaegan.training.distributed import launch

        return launch(a.nproc, _without_nproc(sys.argv[1:]))
    if a.resume:
        cfg = config_from_checkpoint(Path(a.out) / "checkpoints" / LAST)
        cfg = apply_overrides(cfg, a.set, allow_model=False)
    else:
        cfg = apply_overrides(preset(a.preset), a.set)
    if a.steps is not None:
        cfg = apply_overrides(cfg, [f"steps={a.steps}"])
    m = train(cfg, a.data, a.out, resume=a.resume, progress=not a.quiet)
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(
        f"done: {a.out}/checkpoints/last.pt"
        + (
            f"; val_mse {m['val_mse']:.4f} vs mean-image baseline {m['baseline_mse']:.4f}"
            if m.get("val_mse") is not None
            else ""
        )
    )
    return 0


def _demo_data(a: argparse.Namespace) -> int:
    from vaegan.training.demo_data import render

    n = render(a.out, a.font, a.limit, progress=not a.quiet)
    print(f"rendered {n} emoji images into {a.out}")
    return 0


def _export(a: argparse.Namespace) -> int:
    from vaegan.export.export import ExportOptions, export
    from vaegan.export.repository import BatchingOptions
    from vaegan.export.tensorrt import Profile

    opts = ExportOptions(
        backend=a.backend,
        fp16=a.fp16,
        encoder_name=a.encoder_name,
        decoder_name=a.decoder_name,
        batching=BatchingOptions(
            max_batch_size=a.max_batch_size,
            preferred_batch_sizes=tuple(a.preferred_batch_size),
            max_queue_delay_us=a.max_queue_delay_us,
            instance_kind=a.instance_kind,
            instance_count=a.instances,
        ),
        trt_profile=Profile(a.trt_min_batch, a.trt_opt_batch, a.trt_max_batch),
        execution_env=a.execution_env,
        intra_op_threads=a.intra_op_threads,
        data=a.data,
        principal_directions=a.principal_directions,
        prior_components=a.prior_components,
    )
    export(a.checkpoint, a.repository, opts)
    return 0


def _evaluate(a: argparse.Namespace) -> int:
    import json

    from vaegan.export import evaluate as ev

    if bool(a.repository) == bool(a.checkpoint):
        raise VaeganError("give one of --repository (an exported version) or --checkpoint")
    model = (
        ev.from_repository(a.repository, a.version)
        if a.repository
        else ev.from_checkpoint(a.checkpoint, a.data, a.prior_components)
    )
    result = ev.evaluate(model, a.data, n=a.n, seed=a.seed, progress=not a.quiet)
    text = json.dumps(result, indent=2)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    else:
        print(text)
    print(ev.summary(result))
    return 0


def _triton(a: argparse.Namespace) -> int:
    import signal
    import threading

    from vaegan.export.local_triton import LocalTriton

    server = LocalTriton(
        a.repository,
        grpc_port=a.grpc_port,
        http_port=a.http_port,
        metrics_port=a.metrics_port,
        log_path=a.log,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        print(
            f"Triton ready: gRPC {server.grpc_url}, HTTP 127.0.0.1:{server.http_port}, "
            f"metrics {server.metrics_url}; log {server.log_path}. Ctrl-C stops it.",
            flush=True,
        )
        while not stop.wait(1.0):
            if server.process is None or server.process.poll() is not None:
                raise VaeganError(f"tritonserver stopped: {server.errors()}")
    return 0


def _serve(a: argparse.Namespace) -> int:
    import asyncio
    import logging

    from vaegan.service.server import serve
    from vaegan.service.settings import from_args

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = from_args(a)
    print(f"vaegan serve: {settings.describe()}", flush=True)
    asyncio.run(serve(settings))
    return 0


def _client(a: argparse.Namespace):
    import os

    from vaegan.client import LatentClient

    def read(path):
        return Path(path).read_bytes() if path else None

    return LatentClient(
        a.target,
        timeout=a.timeout,
        token=a.token or os.environ.get("VAEGAN_TOKEN") or None,
        tls=a.tls,
        tls_ca=read(a.tls_ca),
        client_cert=read(a.tls_cert),
        client_key=read(a.tls_key),
    )


def _rpc(fn):
    """Client verbs: a gRPC error becomes one line with its status code."""

    def run(a: argparse.Namespace) -> int:
        import grpc

        try:
            return fn(a)
        except grpc.RpcError as e:
            raise VaeganError(f"{e.code().name}: {e.details()}") from None

    return run


@_rpc
def _generate(a: argparse.Namespace) -> int:
    import numpy as np

    from vaegan.grid import save_grid

    with _client(a) as c:
        if a.embeddings:
            images, _ = c.generate(np.load(a.embeddings).reshape(-1, c.info().latent_dim))
        else:
            images, _ = c.generate(
                count=a.random, seed=a.seed, temperature=a.temperature, prior=a.prior
            )
    save_grid(images, a.out)
    print(f"wrote {len(images)} images to {a.out}")
    return 0


@_rpc
def _encode(a: argparse.Namespace) -> int:
    import numpy as np

    with _client(a) as c:
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
def _interpolate(a: argparse.Namespace) -> int:
    import numpy as np

    from vaegan.grid import save_grid

    keys = [np.load(k).ravel() if k.endswith(".npy") else Path(k).read_bytes() for k in a.keyframes]
    spherical = a.method == "spherical"
    if Path(a.out).suffix.lower() not in (".gif", ".webp"):
        with _client(a) as c:
            images, _ = c.interpolate(keys, a.steps, spherical=spherical)
        save_grid(images, a.out, nrow=a.steps + 2)
        print(f"wrote {len(images)} frames to {a.out}")
        return 0
    from PIL import Image
    from tqdm import tqdm

    frames = []
    with _client(a) as c, tqdm(desc="frames", unit="frame", disable=a.quiet) as bar:
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


def _batch(a: argparse.Namespace) -> int:
    from vaegan.batch_job import run_job

    with _client(a) as client:  # the same TLS, token and deadline as the other verbs
        counts = run_job(client, a.input, a.output, concurrency=a.concurrency, progress=not a.quiet)
    print(f"wrote {a.output}: {counts['ok']} results, {counts['errors']} errors")
    return 0


def _attributes_add(a: argparse.Namespace) -> int:
    from vaegan.export.latent_tools import add_attribute

    d, held, path = add_attribute(
        a.repository, a.name, a.with_dir, a.without_dir, version=a.version, holdout=a.holdout
    )
    print(
        f"{d.name}: {d.counts['with']} images with, {d.counts['without']} without; gap between "
        f"the means {d.scale:.3f}; separation (ROC AUC of the projection) {d.auc:.3f}"
    )
    if held is not None:
        print(
            f"held out: {held.images} images without it, +1 x {d.name}: {held.moved_towards_with:.0%} "
            f"moved closer to the 'with' mean (mean distance {held.distance_before:.3f} -> "
            f"{held.distance_after:.3f}); projection gain {held.projection_gain:.2f} x the gap; "
            f"held-out ROC AUC {held.auc:.3f}"
        )
    print(f"wrote {path}")
    return 0


def _attributes_list(a: argparse.Namespace) -> int:
    import json

    from vaegan.export import directions as store

    version = store.resolve_version(Path(a.repository), a.version)
    found = store.load(a.repository, version)
    rows = {n: {k: v for k, v in d.to_dict().items() if k != "vector"} for n, d in found.items()}
    print(json.dumps({"model_version": version, "directions": rows}, indent=2))
    return 0


def _sweep(a: argparse.Namespace) -> int:
    from vaegan.export.latent_tools import sweep_grid

    out = sweep_grid(
        a.repository,
        a.direction,
        a.images,
        a.out,
        version=a.version,
        low=a.range[0],
        high=a.range[1],
        steps=a.steps,
    )
    rows = int(a.direction) if a.direction.isdigit() else len(a.images)
    print(f"wrote {out}: {rows} rows x {a.steps} weights of {a.direction}")
    return 0


def _playground(a: argparse.Namespace) -> int:
    from vaegan.service.playground import run

    run(a.target, a.host, a.port, token=a.token or os.environ.get("VAEGAN_TOKEN"))
    return 0


@_rpc
def _info(a: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with _client(a) as c:
        print(json_format.MessageToJson(c.info(), preserving_proto_field_name=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from vaegan.preprocess import DEFAULT_MAX_PIXELS
    from vaegan.prior import DEFAULT_COMPONENTS

    p = argparse.ArgumentParser(
        prog="vaegan",
        description="Train a VAE-GAN on your own images, export it to Triton, serve its latent space.",
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser(
        "prepare",
        help="turn a folder of .jpg/.png images into a training dataset",
        description="Crop (a square of side 0.75*min(h, w)), resize and split a folder of images into "
        "memory-mappable uint8 arrays with a JSON manifest. Unreadable, truncated, non-image and "
        "oversize files are skipped and listed in the manifest.",
    )
    s.add_argument(
        "images_dir", metavar="IMAGES_DIR", help="folder searched recursively for .jpg/.jpeg/.png"
    )
    s.add_argument("--out", required=True, metavar="DATA_DIR", help="dataset folder to write")
    s.add_argument(
        "--center-crop",
        action="store_true",
        help="crop the centre box; without it training crops a random box each epoch "
        "(serving and validation always use the centre box)",
    )
    s.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="fraction of images held out for validation (default 0.1)",
    )
    s.add_argument(
        "--seed", type=int, default=0, help="seed of the train/validation split (default 0)"
    )
    s.add_argument("--size", type=int, default=64, help="output side in pixels (default 64)")
    s.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images with more pixels than this, unread (default {DEFAULT_MAX_PIXELS})",
    )
    s.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: CPU count)"
    )
    s.add_argument("--overwrite", action="store_true", help="replace DATA_DIR if it exists")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_prepare)

    from vaegan.training.config import PRESETS, describe_fields

    t = sub.add_parser(
        "train",
        help="train (or resume) a VAE-GAN on a prepared dataset",
        description="Train the VAE-GAN. Writes RUN_DIR/checkpoints/{last,step_N}.pt, RUN_DIR/metrics.jsonl, "
        "RUN_DIR/samples/*.png and TensorBoard logs in RUN_DIR/tb.",
        epilog="fields for --set (default of the gpu preset, then meaning):\n" + describe_fields(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "--data", required=True, metavar="DATA_DIR", help="dataset folder from 'vaegan prepare'"
    )
    t.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="run folder (checkpoints, samples, metrics)"
    )
    t.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="gpu",
        help="cpu-demo: narrow nets, ~10 minutes on 2 CPU cores at 32 px; cpu-quality: the same "
        "recipe at 64 px, ~45 minutes; gpu: the seed settings (width 64, batch 64, latent 100) "
        "with FID every 5,000 steps; smoke: seconds, for CI (default gpu)",
    )
    t.add_argument(
        "--steps", type=int, default=None, help="total steps (on --resume: the new total)"
    )
    t.add_argument(
        "--resume", action="store_true", help="continue RUN_DIR exactly from checkpoints/last.pt"
    )
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one config field (repeatable); see the list below",
    )
    t.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train on N ranks of this machine (one per GPU, or CPU processes with gloo) by "
        "re-running this command under torchrun; batch_size stays the global batch",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    from vaegan import interface as api

    e = sub.add_parser(
        "export",
        help="export a checkpoint's encoder and decoder into a Triton model repository",
        description="Export encoder and decoder to ONNX (dynamic batch, uint8 pixel interface), check them "
        "against PyTorch, and add them as a new version to a Triton model repository. "
        "Nothing is written unless every check passes.",
    )
    e.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help="a training checkpoint (RUN_DIR/checkpoints/last.pt)",
    )
    e.add_argument(
        "--repository",
        required=True,
        metavar="REPO",
        help="model repository folder (created if missing)",
    )
    e.add_argument(
        "--backend",
        choices=["onnxruntime", "tensorrt", "python"],
        default="onnxruntime",
        help="onnxruntime: Triton's ONNX Runtime backend (GPU instances); tensorrt: plan files "
        "built here (needs a GPU and the tensorrt package); python: model.py running the same "
        "ONNX file, for CPU Tritons without onnxruntime, like the local one (default onnxruntime)",
    )
    e.add_argument(
        "--fp16",
        action="store_true",
        help="half-precision networks (checked with a looser tolerance)",
    )
    e.add_argument(
        "--encoder-name",
        default=api.ENCODER_MODEL,
        help=f"encoder model name (default {api.ENCODER_MODEL})",
    )
    e.add_argument(
        "--decoder-name",
        default=api.DECODER_MODEL,
        help=f"decoder model name (default {api.DECODER_MODEL})",
    )
    e.add_argument(
        "--max-batch-size", type=int, default=64, help="Triton max_batch_size (default 64)"
    )
    e.add_argument(
        "--preferred-batch-size",
        type=int,
        nargs="+",
        default=[16, 32, 64],
        help="dynamic batcher's preferred sizes (default 16 32 64)",
    )
    e.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=2000,
        help="how long the dynamic batcher waits to fill a batch, in microseconds (default 2000)",
    )
    e.add_argument(
        "--instance-kind",
        choices=["auto", "gpu", "cpu"],
        default="auto",
        help="instance_group kind; auto: GPU for onnxruntime/tensorrt, CPU for python",
    )
    e.add_argument("--instances", type=int, default=1, help="instances per model (default 1)")
    e.add_argument(
        "--trt-min-batch", type=int, default=1, help="TensorRT profile minimum batch (default 1)"
    )
    e.add_argument(
        "--trt-opt-batch", type=int, default=16, help="TensorRT profile optimal batch (default 16)"
    )
    e.add_argument(
        "--trt-max-batch", type=int, default=64, help="TensorRT profile maximum batch (default 64)"
    )
    e.add_argument(
        "--execution-env",
        default=None,
        metavar="PATH",
        help="python backend: the environment model.py runs in (needs onnxruntime and numpy<2); "
        "default $VAEGAN_TRITON_ENV, else .venv-triton beside this venv; '' leaves it to the server",
    )
    e.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="python backend: ONNX Runtime threads per instance (default 0 = its own choice)",
    )
    e.add_argument(
        "--data",
        default=None,
        metavar="DATA_DIR",
        help="the prepared training set: store the principal directions (pc1..pcK) of its "
        "encodings with the version, as sliders that need no labelled images",
    )
    e.add_argument(
        "--principal-directions",
        type=int,
        default=8,
        metavar="K",
        help="how many principal directions with --data (default 8)",
    )
    e.add_argument(
        "--prior-components",
        type=int,
        default=DEFAULT_COMPONENTS,
        metavar="K",
        help="Gaussians in the latent prior fitted with --data, served as Generate's "
        f"PRIOR_FITTED (0 = none; default {DEFAULT_COMPONENTS})",
    )
    e.set_defaults(func=_export)

    tr = sub.add_parser(
        "triton",
        help="run the local Triton server (from nvidia-pytriton) on a model repository",
        description="Start the real tritonserver from the nvidia-pytriton wheel with the python backend "
        "for this Python, wait until every model is ready, and run until Ctrl-C or SIGTERM.",
    )
    tr.add_argument("--repository", required=True, metavar="REPO", help="model repository folder")
    tr.add_argument(
        "--grpc-port", type=int, default=8001, help="KServe v2 gRPC port (default 8001)"
    )
    tr.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    tr.add_argument(
        "--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002)"
    )
    tr.add_argument("--log", default=None, help="server log file (default: a temporary file)")
    tr.set_defaults(func=_triton)

    from vaegan.service.settings import add_arguments

    sv = sub.add_parser(
        "serve",
        help="run the gRPC gateway",
        description="Serve vaegan.v1.LatentService over gRPC with health, reflection and Prometheus metrics. "
        "With --triton-url the models run on Triton; otherwise the model repository runs in-process "
        "with ONNX Runtime. Every flag can also be set as an environment variable VAEGAN_<FLAG>.",
    )
    add_arguments(sv)
    sv.set_defaults(func=_serve)

    def client_args(p: argparse.ArgumentParser) -> None:
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

    g = sub.add_parser("generate", help="images from random or given embeddings, as a PNG grid")
    client_args(g)
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
        "--embeddings", default=None, metavar="Z.npy", help="decode these vectors instead"
    )
    g.add_argument("--out", required=True, help="PNG grid to write")
    g.set_defaults(func=_generate)

    en = sub.add_parser("encode", help="embeddings (mu) of image files, as a .npy array")
    client_args(en)
    en.add_argument("images", nargs="+", help="PNG or JPEG files")
    en.add_argument("--out", required=True, help=".npy file to write")
    en.add_argument(
        "--reconstruction-error",
        action="store_true",
        help="also print each image's reconstruction MSE",
    )
    en.set_defaults(func=_encode)

    ip = sub.add_parser(
        "interpolate", help="a path between keyframes (images or .npy vectors), as a PNG strip"
    )
    client_args(ip)
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
    ip.set_defaults(func=_interpolate)

    bj = sub.add_parser(
        "batch",
        help="run a JSONL batch job (embeddings -> images, images -> embeddings)",
        description='Each input line is {"embeddings": [...], "key": K} or '
        '{"image_bytes": {"b64": ...}, "key": K}; each output line has the key and the result '
        "or an error. Errors do not stop the job.",
    )
    client_args(bj)
    bj.add_argument("--input", required=True, help="JSONL file of instances")
    bj.add_argument("--output", required=True, help="JSONL file of results, in input order")
    bj.add_argument("--concurrency", type=int, default=16, help="lines in flight (default 16)")
    bj.add_argument("--quiet", action="store_true", help="no progress bar")
    bj.set_defaults(func=_batch)

    at = sub.add_parser(
        "attributes",
        help="named latent directions stored with a model version (add, list)",
    )
    at_sub = at.add_subparsers(dest="action", required=True)
    aa = at_sub.add_parser(
        "add",
        help="a direction from images with and without an attribute",
        description="Encode both folders with the version's encoder (ONNX Runtime, offline), "
        "store the normalised difference of their mean mu as NAME beside that version, with the "
        "counts and the ROC AUC of the projection. Refuses sets under 8 images.",
    )
    aa.add_argument("name", help="direction name, e.g. smiling")
    aa.add_argument("--with", dest="with_dir", required=True, metavar="DIR", help="images with it")
    aa.add_argument(
        "--without", dest="without_dir", required=True, metavar="DIR", help="images without it"
    )
    aa.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="fraction of each set kept out of the direction to check it on (default 0)",
    )
    al = at_sub.add_parser("list", help="the directions of a model version, as JSON")
    for q in (aa, al):
        q.add_argument("--repository", required=True, help="model repository (vaegan export)")
        q.add_argument("--version", default="", help="model version (default: the newest)")
    aa.set_defaults(func=_attributes_add)
    al.set_defaults(func=_attributes_list)

    sw = sub.add_parser(
        "sweep",
        help="a PNG grid: each image moved along one direction over a range of weights",
    )
    sw.add_argument("images", nargs="+", help="PNG/JPEG files, one grid row each")
    sw.add_argument(
        "--direction",
        required=True,
        help="an attribute, pc1..pcK, a latent axis dimN, or a number N: the first N latent "
        "dimensions, one row each, for the first image (a per-dimension grid)",
    )
    sw.add_argument("--repository", required=True, help="model repository (vaegan export)")
    sw.add_argument("--version", default="", help="model version (default: the newest)")
    sw.add_argument(
        "--range",
        type=float,
        nargs=2,
        default=(-2.0, 2.0),
        metavar=("LOW", "HIGH"),
        help="weights, in units of the direction's scale (default -2 2)",
    )
    sw.add_argument("--steps", type=int, default=7, help="columns (default 7)")
    sw.add_argument("--out", required=True, help="output PNG")
    sw.set_defaults(func=_sweep)

    pg = sub.add_parser(
        "playground",
        help="a web page for exploring the served model: reconstructions, sliders, walks",
    )
    pg.add_argument(
        "--target", default="localhost:50051", help="the gateway (default localhost:50051)"
    )
    pg.add_argument("--host", default="127.0.0.1", help="address to serve the page on")
    pg.add_argument("--port", type=int, default=8080, help="port of the page (default 8080)")
    pg.add_argument("--token", default=None, help="bearer token for the gateway (or VAEGAN_TOKEN)")
    pg.set_defaults(func=_playground)

    ev = sub.add_parser(
        "evaluate",
        help="FID and precision/recall of a model's samples and reconstructions",
        description="Score prior samples and reconstructions against every prepared image "
        "(train + val, centre crops) with the standard FID Inception: FID (lower is better) and "
        "precision/recall (k=3). An exported version is run through its ONNX graphs, what "
        "Triton serves. FID falls as n grows: compare figures only at equal n and real set. "
        "Prints JSON (or writes --out), then a one-line summary.",
    )
    ev.add_argument("--repository", metavar="REPO", help="a model repository written by export")
    ev.add_argument("--version", default="", help="model version (default: the newest)")
    ev.add_argument(
        "--checkpoint", metavar="CKPT", help="or a training checkpoint (its EMA decoder)"
    )
    ev.add_argument("--data", required=True, help="the prepared dataset the model was trained on")
    ev.add_argument(
        "--n", type=int, default=1000, help="samples and reconstructions (default 1000)"
    )
    ev.add_argument("--seed", type=int, default=0, help="seeds the prior draws and the picks")
    ev.add_argument(
        "--prior-components",
        type=int,
        default=DEFAULT_COMPONENTS,
        metavar="K",
        help="with --checkpoint: also score a K-Gaussian prior fitted to the training codes, as "
        f"export fits it (0 = no; default {DEFAULT_COMPONENTS}; a repository's version uses "
        "its stored prior)",
    )
    ev.add_argument("--out", default=None, help="write the JSON here instead of stdout")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=_evaluate)

    inf = sub.add_parser("info", help="the served model's facts, versions and limits, as JSON")
    client_args(inf)
    inf.set_defaults(func=_info)

    d = sub.add_parser(
        "demo-data",
        help="render the emoji demo image folder",
        description="Render every colour glyph of the Noto Color Emoji font into PNGs.",
    )
    d.add_argument("--out", required=True, help="folder to write the PNGs into")
    d.add_argument(
        "--font", default=None, help="path to NotoColorEmoji.ttf (default: the Debian package's)"
    )
    d.add_argument("--limit", type=int, default=None, help="render at most this many glyphs")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_demo_data)
    return p


def _version() -> str:
    from vaegan import __version__

    return f"vaegan {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except VaeganError as e:
        message = " ".join(str(e).split())  # one line, whatever a library put in it
        print(f"vaegan {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vaegan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
