"""Model commands: ``export`` (a checkpoint -> a Triton repository version) and ``evaluate``
(FID and precision/recall of a version or a checkpoint)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaegan.errors import VaeganError


def register(sub) -> None:
    from vaegan.export.options import BatchingOptions, ExportOptions, Profile
    from vaegan.flags import add_fields
    from vaegan.prior import DEFAULT_COMPONENTS

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
    for options in (ExportOptions, BatchingOptions, Profile):
        add_fields(e, options)
    e.set_defaults(func=export)

    ev = sub.add_parser(
        "evaluate",
        help="FID and precision/recall of a model's samples and reconstructions",
        description="Score prior samples and reconstructions against every prepared image "
        "(train + val, centre crops) with the standard FID Inception: FID (lower is better) and "
        "precision/recall (k=3). An exported version is run through its ONNX graphs, what "
        "Triton serves. FID falls as n grows: compare figures only at equal n and real set. "
        "Prior draws also get a nearest-training-code ratio: how far they land from the "
        "training images' codes against how far the validation images' codes do (below 1, the "
        "prior reproduces its training set). Prints JSON (or writes --out), then a one-line "
        "summary.",
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
        "--temperature",
        type=float,
        default=1.0,
        help="scale both priors' draws as Generate's sample.temperature does (default 1)",
    )
    ev.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="STEPS",
        help="re-encode both priors' draws STEPS times as Generate's sample.refine_steps does "
        "(default 0)",
    )
    ev.add_argument(
        "--prior-components",
        type=int,
        default=DEFAULT_COMPONENTS,
        metavar="K",
        help="with --checkpoint: also score a K-Gaussian prior fitted to the training codes, as "
        f"export fits it (0 = no; default {DEFAULT_COMPONENTS}; a repository's version uses "
        "its stored prior)",
    )
    ev.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="KIND",
        help="score only these: samples, samples_fitted, reconstructions, reconstructions_val "
        "(default all; the draws are the same either way)",
    )
    ev.add_argument("--out", default=None, help="write the JSON here instead of stdout")
    ev.add_argument(
        "--grids",
        default=None,
        metavar="DIR",
        help="also write the first 64 scored images of each kind as DIR/<kind>.png",
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=evaluate)


def options_from(a: argparse.Namespace):
    from vaegan.export.options import BatchingOptions, ExportOptions, Profile
    from vaegan.flags import values

    return ExportOptions(
        **values(a, ExportOptions),
        batching=BatchingOptions(**values(a, BatchingOptions)),
        trt_profile=Profile(**values(a, Profile)),
    )


def export(a: argparse.Namespace) -> int:
    from vaegan.export.export import export

    export(a.checkpoint, a.repository, options_from(a))
    return 0


def evaluate(a: argparse.Namespace) -> int:
    import json

    from vaegan.export import evaluate as ev

    if bool(a.repository) == bool(a.checkpoint):
        raise VaeganError("give one of --repository (an exported version) or --checkpoint")
    model = (
        ev.from_repository(a.repository, a.version)
        if a.repository
        else ev.from_checkpoint(a.checkpoint, a.data, a.prior_components)
    )
    kinds = tuple(a.only) if a.only else ev.KINDS
    result = ev.evaluate(
        model,
        a.data,
        n=a.n,
        seed=a.seed,
        progress=not a.quiet,
        kinds=kinds,
        grids=a.grids,
        temperature=a.temperature,
        refine_steps=a.refine,
    )
    text = json.dumps(result, indent=2)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    else:
        print(text)
    print(ev.summary(result))
    return 0
