"""Data commands: ``prepare`` (a folder of images -> a training dataset) and ``demo-data``."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from vaegan.preprocess import DEFAULT_MAX_PIXELS

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
    s.set_defaults(func=prepare)

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
    d.set_defaults(func=demo_data)


def prepare(a: argparse.Namespace) -> int:
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


def demo_data(a: argparse.Namespace) -> int:
    from vaegan.training.demo_data import render

    n = render(a.out, a.font, a.limit, progress=not a.quiet)
    print(f"rendered {n} emoji images into {a.out}")
    return 0
