"""``vaegan train``: train or resume a run, on one process or N ranks (``--nproc``)."""

from __future__ import annotations

import argparse
import os


def register(sub) -> None:
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
        help="cpu-demo: width 32, under 10 minutes on 2 CPU cores at 32 px; cpu-quality: width "
        "32 at 64 px, 3,600 steps, ~32 minutes with bf16; gpu: the seed settings (width 64, "
        "batch 64, latent 100) with FID every 5,000 steps; smoke: seconds, for CI (default gpu)",
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
    t.set_defaults(func=train)


def without_nproc(argv: list[str]) -> list[str]:
    """The command line the ranks run: the same, less ``--nproc``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def train(a: argparse.Namespace) -> int:
    from pathlib import Path

    from vaegan.training.checkpoint import LAST
    from vaegan.training.config import apply_overrides, preset
    from vaegan.training.train import config_from_checkpoint, train

    if a.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from vaegan.training.distributed import launch

        return launch(a.nproc, without_nproc(a.argv))
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
