"""``vaegan attributes`` and ``vaegan sweep`` on a model repository, offline: the graphs of
one exported version run in ONNX Runtime, and the directions land beside that version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaegan import repository as store
from vaegan.export.offline import OfflineModel
from vaegan.grid import save_grid
from vaegan.latent import (
    Direction,
    attribute_direction,
    lookup,
    roc_auc,
    sweep,
)


@dataclass
class HeldOut:
    """What adding the direction (weight 1) does to held-out images without the attribute,
    measured after decoding and encoding again, so it is a change in the images."""

    images: int
    moved_towards_with: float  # share of images whose re-encoding got closer to the "with" mean
    distance_before: float  # mean distance of their encodings to the "with" mean
    distance_after: float
    projection_gain: float  # mean increase of the projection on the direction, in units of scale
    auc: float | None = None  # separation of the held-out sets by the projection


def add_attribute(
    repo: str | Path,
    name: str,
    with_dir: str | Path,
    without_dir: str | Path,
    *,
    version: str = "",
    holdout: float = 0.0,
    seed: int = 0,
) -> tuple[Direction, HeldOut | None, Path]:
    version = store.resolve_version(Path(repo), version)
    model = OfflineModel(repo, version)
    pix_with = model.load_folder(with_dir)
    pix_without = model.load_folder(without_dir)
    rng = np.random.default_rng(seed)
    keep_with, test_with = _split(len(pix_with), holdout, rng)
    keep_without, test_without = _split(len(pix_without), holdout, rng)
    mu_with, mu_without = model.encode(pix_with), model.encode(pix_without)
    d = attribute_direction(name, mu_with[keep_with], mu_without[keep_without])
    held = None
    if len(test_without) and len(test_with):
        held = _held_out(model, d, mu_with[keep_with].mean(0), pix_without[test_without])
        held.auc = roc_auc(mu_with[test_with] @ d.array(), mu_without[test_without] @ d.array())
    found = store.load_directions(repo, version)
    found[name] = d
    return d, held, store.save_directions(repo, version, found)


def sweep_grid(
    repo: str | Path,
    name: str,
    images: list[str | Path],
    out: str | Path,
    *,
    version: str = "",
    low: float = -2.0,
    high: float = 2.0,
    steps: int = 7,
) -> Path:
    """One row per image, one column per weight from ``low`` to ``high`` along ``name``."""
    from vaegan.preprocess import preprocess

    version = store.resolve_version(Path(repo), version)
    model = OfflineModel(repo, version)
    z = model.encode(np.stack([preprocess(p, model.crop) for p in images]))
    weights = np.linspace(low, high, steps)
    found = store.load_directions(repo, version)
    if name.isdigit():  # the first N latent dimensions, one row each, for the first image
        rows = [
            sweep(z[:1], lookup(found, f"dim{i}", z.shape[1]), weights) for i in range(int(name))
        ]
        frames = model.decode(np.concatenate(rows))
    else:
        frames = model.decode(sweep(z, lookup(found, name, z.shape[1]), weights))
    save_grid(frames, Path(out), nrow=steps)
    return Path(out)


def _split(n: int, holdout: float, rng) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    n_test = round(n * holdout)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _held_out(model: OfflineModel, d: Direction, with_mean: np.ndarray, pixels) -> HeldOut:
    z = model.encode(pixels)
    # Both sides go through decode -> encode, so the reconstruction's own drift cancels.
    base = model.encode(model.decode(z))
    after = model.encode(model.decode(z + np.float32(d.scale) * d.array()))
    before_dist = np.linalg.norm(base - with_mean, axis=1)
    after_dist = np.linalg.norm(after - with_mean, axis=1)
    unit = d.array()
    return HeldOut(
        images=len(z),
        moved_towards_with=float((after_dist < before_dist).mean()),
        distance_before=float(before_dist.mean()),
        distance_after=float(after_dist.mean()),
        projection_gain=float(((after - base) @ unit).mean() / d.scale),
    )
