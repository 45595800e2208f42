"""The ``vaegan`` command: a dispatcher. Each command group's parsers and handlers live in
``vaegan.commands``; heavy imports happen inside the handler that needs them, so
``vaegan --help`` is instant."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from vaegan.errors import VaeganError


def build_parser() -> argparse.ArgumentParser:
    from vaegan.commands import GROUPS

    p = argparse.ArgumentParser(
        prog="vaegan",
        description="Train a VAE-GAN on your own images, export it to Triton, serve its latent space.",
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    return p


def _version() -> str:
    from vaegan import __version__

    return f"vaegan {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what a relaunch (train --nproc) runs again
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
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a rank torchrun started
        from vaegan.training.distributed import leave

        leave(code)
    sys.exit(code)
