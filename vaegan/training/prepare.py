"""``vaegan prepare``: a folder of .jpg/.png files -> a dataset folder (see data.py).

Images stream through a process pool one at a time (never all decoded at once) and are
written as they come back, in a fixed order, so the output depends only on the input
folder, the crop policy and the seed. The output appears atomically: it is written to a
temporary folder beside the target and renamed into place at the end.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vaegan.errors import ImageRejected, VaeganError
from vaegan.preprocess import (
    DEFAULT_MAX_PIXELS,
    CropPolicy,
    canvas,
    decode_side,
    load_rgb,
    preprocess,
)
from vaegan.training.data import FORMAT_VERSION, MANIFEST, RaggedWriter

EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class _Job:
    path: str
    policy: CropPolicy
    keep_canvas: bool  # random-crop training images keep a canvas; everything else a crop
    max_pixels: int


def find_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """Every .jpg/.jpeg/.png below ``folder`` (any case), sorted for a stable order, and
    apart those that are links to files outside it: what the folder's owner put there is
    read, not whatever a link points at elsewhere on the machine."""
    root = folder.resolve()
    inside, outside = [], []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in EXTENSIONS and p.is_file():
            (inside if p.resolve().is_relative_to(root) else outside).append(p)
    return inside, outside


def split_indices(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation items: a seeded permutation, so the split is repeatable.

    At least one validation image whenever ``val_fraction > 0`` and there are two or more
    images, so metrics always exist.
    """
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return mask


def _process(job: _Job) -> tuple[str, Any, Any]:
    """Runs in a worker: ('ok', stored array, centre crop) or ('skip', reason, message)."""
    try:
        im = load_rgb(job.path, min_side=decode_side(job.policy), max_pixels=job.max_pixels)
        crop = preprocess(im, job.policy)
        stored = canvas(im, job.policy) if job.keep_canvas else crop
        return "ok", stored, crop
    except ImageRejected as e:
        return "skip", e.reason, str(e)


def prepare(
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    center_crop: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    size: int = 64,
    fraction: float = 0.75,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare a dataset folder and return its manifest."""
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise VaeganError(f"image folder {images_dir} does not exist or is not a folder")
    if not 0.0 <= val_fraction < 1.0:
        raise VaeganError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if out_dir.exists() and not overwrite:
        raise VaeganError(f"{out_dir} already exists; pass --overwrite to replace it")
    policy = CropPolicy("center" if center_crop else "random", fraction, size)
    files, outside = find_images(images_dir)
    if not files:
        raise VaeganError(f"no .jpg, .jpeg or .png files found under {images_dir}")
    is_val = split_indices(len(files), val_fraction, seed)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        writers = {"train": RaggedWriter(tmp / "train"), "val": RaggedWriter(tmp / "val")}
        mean_sum = np.zeros((size, size, 3), np.float64)
        skipped: list[dict[str, str]] = [
            {
                "path": str(p.relative_to(images_dir)),
                "reason": "outside_folder",
                "detail": "a link to a file outside the image folder",
            }
            for p in outside
        ]
        jobs = [
            _Job(
                str(p),
                policy,
                keep_canvas=(policy.mode == "random" and not v),
                max_pixels=max_pixels,
            )
            for p, v in zip(files, is_val, strict=True)
        ]
        workers = workers or min(os.cpu_count() or 1, 8)
        t0 = time.time()
        # forkserver, not fork: a process with threads (any caller that has used gRPC, a test
        # run) can fork while another thread holds a lock, and the child then waits forever.
        pool_ = (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))
            if workers > 1
            else _Inline()
        )
        with pool_ as pool:
            results = pool.map(_process, jobs, chunksize=16)
            bar = tqdm(results, total=len(jobs), desc="prepare", unit="img", disable=not progress)
            for path, val, (status, a, b) in zip(files, is_val, bar, strict=True):
                if status == "skip":
                    skipped.append(
                        {"path": str(path.relative_to(images_dir)), "reason": a, "detail": b}
                    )
                    continue
                split = "val" if val else "train"
                writers[split].append(a)
                if split == "train":
                    mean_sum += b
                bar.set_postfix(skipped=len(skipped))
        for w in writers.values():
            w.close()
        n_train, n_val = len(writers["train"]), len(writers["val"])
        if n_train == 0:
            raise VaeganError(
                f"none of the {len(files)} files under {images_dir} could be used "
                f"({dict(Counter(s['reason'] for s in skipped))})"
            )
        np.save(tmp / "train_mean.npy", (mean_sum / n_train / 255.0).astype(np.float32))
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": images_dir.resolve().name,
            "source": str(images_dir.resolve()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "crop": policy.to_dict(),
            "stored": "canvas" if policy.mode == "random" else "crop",
            "canvas_side": policy.canvas_side if policy.mode == "random" else None,
            "val_fraction": val_fraction,
            "seed": seed,
            "max_pixels": max_pixels,
            "counts": {
                "found": len(files) + len(outside),
                "train": n_train,
                "val": n_val,
                "skipped": len(skipped),
            },
            "skipped_by_reason": dict(Counter(s["reason"] for s in skipped)),
            "skipped": skipped,
            "seconds": round(time.time() - t0, 2),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a dataset is shared like any folder
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


class _Inline:
    """A stand-in pool that maps in this process (``--workers 1``, and in tests)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, items, chunksize=1):
        return map(fn, items)
