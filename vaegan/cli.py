"""The ``vaegan`` command. Parsers are built in ``main()``; heavy imports (torch) happen
only inside the subcommand that needs them, so ``vaegan --help`` is instant."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

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


def _train(a: argparse.Namespace) -> int:
    from pathlib import Path

    from vaegan.training.checkpoint import LAST
    from vaegan.training.config import apply_overrides, preset
    from vaegan.training.train import config_from_checkpoint, train

    if a.resume:
        cfg = config_from_checkpoint(Path(a.out) / "checkpoints" / LAST)
        cfg = apply_overrides(cfg, a.set, allow_model=False)
    else:
        cfg = apply_overrides(preset(a.preset), a.set)
    if a.steps is not None:
        cfg = apply_overrides(cfg, [f"steps={a.steps}"])
    m = train(cfg, a.data, a.out, resume=a.resume, progress=not a.quiet)
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


def build_parser() -> argparse.ArgumentParser:
    from vaegan.preprocess import DEFAULT_MAX_PIXELS

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
        help="cpu-demo: narrow nets, a few minutes on 2 CPU cores; gpu: the seed settings "
        "(width 64, batch 64, latent 100); smoke: seconds, for CI (default gpu)",
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
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

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
        print(f"vaegan {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vaegan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
