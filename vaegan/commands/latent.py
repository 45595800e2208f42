"""Latent-space tools on a model repository, offline: ``attributes add|list`` (named
directions stored with a version) and ``sweep`` (a grid along one direction)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
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
    aa.set_defaults(func=attributes_add)
    al.set_defaults(func=attributes_list)

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
    sw.set_defaults(func=sweep)


def attributes_add(a: argparse.Namespace) -> int:
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


def attributes_list(a: argparse.Namespace) -> int:
    import json

    from vaegan import repository as store

    version = store.resolve_version(Path(a.repository), a.version)
    found = store.load_directions(a.repository, version)
    rows = {n: {k: v for k, v in d.to_dict().items() if k != "vector"} for n, d in found.items()}
    print(json.dumps({"model_version": version, "directions": rows}, indent=2))
    return 0


def sweep(a: argparse.Namespace) -> int:
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
