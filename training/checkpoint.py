"""Checkpoints that carry everything needed to rebuild, resume and export a model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from vaegan.errors import VaeganError

FORMAT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"  # the step with the lowest FID so far, when the run measures it


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``:
    a crash mid-write leaves the previous file intact, never a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise VaeganError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, not a torch file at all
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        raise VaeganError(
            f"{path} is not a readable vaegan checkpoint ({type(e).__name__}: {first_line})"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise VaeganError(f"{path} is not a vaegan checkpoint (format {FORMAT_VERSION} expected)")
    return state


def step_name(step: int) -> str:
    return f"step_{step:07d}.pt"


def prune(folder: Path, keep: int) -> None:
    """Keep the ``keep`` newest step-numbered checkpoints (``last.pt`` is never pruned)."""
    steps = sorted(folder.glob("step_*.pt"))
    for old in steps[: max(0, len(steps) - keep)]:
        old.unlink()
