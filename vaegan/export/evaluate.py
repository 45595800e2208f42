"""``vaegan evaluate``: how close what a model serves is to its data, in Inception space.

Scores an exported version through its ONNX graphs (what Triton actually serves), or a
training checkpoint through PyTorch (its moving-average decoder, as export would take it):

- ``samples``: decodes of n draws from the prior N(0, I), what ``Generate`` returns by default;
- ``samples_fitted``: decodes of n draws from the fitted prior (``vaegan.prior``), what
  ``Generate`` returns with ``PRIOR_FITTED``: the version's stored one, or for a checkpoint
  one fitted here to the training codes as export would;
- ``reconstructions``: decode(encode(x)) for n images drawn from the real set;
- ``reconstructions_val``: the same for the validation split alone (its own, smaller n).

The real set is every prepared image (train + validation) as serving crops it; its
features are cached beside the data (see ``fid.real_set``). Each figure carries its n. The
two kinds of prior draw also get ``nearest_code_ratio`` (``vaegan.prior``): how far the
draws land from the training images' codes, against how far the validation images' codes
do; below 1, the prior is reproducing its training set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vaegan.errors import VaeganError
from vaegan.grid import save_grid
from vaegan.prior import (
    DEFAULT_COMPONENTS,
    MAX_REFINE_STEPS,
    MAX_TEMPERATURE,
    GaussianMixture,
    nearest_code_ratio,
)
from vaegan.training import fid


@dataclass
class Scored:
    """The pixel interface of a model under evaluation."""

    encode: Callable[[np.ndarray], np.ndarray]  # uint8 [N, H, W, 3] -> mu [N, D]
    decode: Callable[[np.ndarray], np.ndarray]  # float32 [N, D] -> uint8 [N, H, W, 3]
    latent_dim: int
    image_size: int
    source: dict[str, Any]
    prior: GaussianMixture | None = None


def from_repository(repo: str | Path, version: str = "") -> Scored:
    from vaegan import interface as api
    from vaegan.export.offline import OfflineModel
    from vaegan.repository import load_prior, resolve_version

    version = resolve_version(Path(repo), version)
    model = OfflineModel(repo, version)
    latent_dim = int(model.sessions[api.DECODER_MODEL].get_inputs()[0].shape[1])
    source = {"repository": str(repo), "version": version}
    mixture = load_prior(repo, version)
    return Scored(model.encode, model.decode, latent_dim, model.crop.size, source, mixture)


def from_checkpoint(
    path: str | Path, data: str | Path | None = None, components: int = DEFAULT_COMPONENTS
) -> Scored:
    """A checkpoint; with ``data``, also the prior export would fit to its training codes."""
    import torch

    from vaegan import prior
    from vaegan.export.export import training_codes
    from vaegan.export.options import ExportOptions
    from vaegan.training.checkpoint import load_model
    from vaegan.training.model import from_pixels, to_pixels

    model, facts = load_model(path)
    limit = ExportOptions().pca_images  # the codes export fits its prior to
    mixture = (
        prior.fit(training_codes(model, data, limit), components) if data and components else None
    )

    @torch.no_grad()
    def encode(pixels: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                model.encode(from_pixels(torch.from_numpy(pixels[i : i + 250])))[0].numpy()
                for i in range(0, len(pixels), 250)
            ]
        )

    @torch.no_grad()
    def decode(z: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                to_pixels(model.decode(torch.from_numpy(z[i : i + 250]))).numpy()
                for i in range(0, len(z), 250)
            ]
        )

    cfg = model.cfg
    source = {"checkpoint": str(path), "step": facts.step}
    return Scored(encode, decode, cfg.latent_dim, cfg.image_size, source, mixture)


KINDS = ("samples", "samples_fitted", "reconstructions", "reconstructions_val")


def evaluate(
    model: Scored,
    data: str | Path,
    *,
    n: int = 1000,
    seed: int = 0,
    progress: bool = True,
    kinds: tuple[str, ...] = KINDS,
    grids: str | Path | None = None,
    temperature: float = 1.0,
    refine_steps: int = 0,
) -> dict[str, Any]:
    """FID and precision/recall of each of ``kinds`` (``samples_fitted`` needs a prior).
    Draws are made in a fixed order whatever ``kinds`` holds, so a kind scores the same
    images alone or with the others. With ``grids``, the first 64 scored images of each kind
    are written there as ``<kind>.png``, to look at beside the figures. ``temperature``
    scales both priors' draws exactly as ``Generate``'s ``sample.temperature`` does, and
    ``refine_steps`` re-encodes them as its ``sample.refine_steps`` does."""
    from vaegan.training.data import load_dataset

    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise VaeganError(f"unknown kind {sorted(unknown)[0]!r}; choose from {', '.join(KINDS)}")
    ds = load_dataset(data)
    if ds.crop.size != model.image_size:
        raise VaeganError(
            f"{data} holds {ds.crop.size}px images but the model makes {model.image_size}px ones"
        )
    if n < 4:
        raise VaeganError("--n must be at least 4 (precision/recall compare 3 neighbours)")
    if not (np.isfinite(temperature) and 0 < temperature <= MAX_TEMPERATURE):
        raise VaeganError(
            f"--temperature {temperature:g}: expected 0 < temperature <= {MAX_TEMPERATURE:g}"
        )
    if not 0 <= refine_steps <= MAX_REFINE_STEPS:
        raise VaeganError(f"--refine {refine_steps}: expected 0..{MAX_REFINE_STEPS}")
    inception = fid.InceptionFeatures()
    real = fid.real_set(data, inception, progress)
    val = np.array(ds.val_images()) if len(ds.val) > 4 else None  # a copy: the split is small
    fitted_prior = model.prior if "samples_fitted" in kinds else None
    sizes = {
        "samples": n,
        "samples_fitted": n if fitted_prior is not None else 0,
        "reconstructions": n,
        "reconstructions_val": len(val) if val is not None else 0,
    }
    with tqdm(
        total=sum(sizes[k] for k in kinds),
        desc="evaluate",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        rng = np.random.default_rng(seed)
        z = (rng.standard_normal((n, model.latent_dim)) * temperature).astype(np.float32)
        picked = real.images[rng.choice(len(real.images), size=n, replace=n > len(real.images))]
        out: dict[str, Any] = {
            **model.source,
            "data": str(data),
            "real_set": real.description,
            "real_n": len(real.features),
            "n": n,
            "seed": seed,
            "temperature": temperature,
            "refine_steps": refine_steps,
            "inception_sha1": fid.INCEPTION_SHA1,
        }

        def score(kind: str, images: np.ndarray) -> None:
            if grids is not None:
                save_grid(images[:64], Path(grids) / f"{kind}.png")
            out[kind] = fid.score(real, inception(images, bar.update)).as_dict()

        def refined(z: np.ndarray) -> np.ndarray:
            for _ in range(refine_steps):  # as the gateway's LatentCore.refine
                z = model.encode(model.decode(z)).astype(np.float32)
            return z

        draws: dict[str, np.ndarray] = {}
        if "samples" in kinds:
            draws["samples"] = refined(z)
            score("samples", model.decode(draws["samples"]))
        if fitted_prior is not None:
            draws["samples_fitted"] = refined(fitted_prior.sample(n, rng, temperature))
            score("samples_fitted", model.decode(draws["samples_fitted"]))
            out["prior_components"] = len(fitted_prior.weights)
        if "reconstructions" in kinds:
            score("reconstructions", model.decode(model.encode(picked)))
        # The validation codes serve both their reconstructions and the draws' ratio.
        wanted = draws or "reconstructions_val" in kinds
        val_codes = model.encode(val) if val is not None and wanted else None
        if val_codes is not None and "reconstructions_val" in kinds:
            score("reconstructions_val", model.decode(val_codes))
        if draws and val_codes is not None:
            train_codes = model.encode(real.images[: len(ds.train)])
            for kind, d in draws.items():
                out[kind]["nearest_code_ratio"] = nearest_code_ratio(d, train_codes, val_codes)
    return out


def summary(result: dict[str, Any]) -> str:
    names = {
        "samples": "samples",
        "samples_fitted": "samples (fitted prior)",
        "reconstructions": "reconstructions",
    }
    scored = [(k, result[k]) for k in names if k in result]
    at, refine = result.get("temperature", 1.0), result.get("refine_steps", 0)
    how = [f"at temperature {at:g}"] if at != 1.0 else []
    how += [f"refined {refine} step{'s' if refine > 1 else ''}"] if refine else []
    parts = []
    if scored:
        parts.append(
            "FID "
            + ", ".join(f"{names[k]} {s['fid']:.1f}" for k, s in scored)
            + f" (n={result['n']} each vs {result['real_n']} real images"
            + (f"; prior draws {', '.join(how)})" if how else ")")
        )
        parts.append(
            "precision/recall "
            + ", ".join(f"{names[k]} {s['precision']:.2f}/{s['recall']:.2f}" for k, s in scored)
        )
    ratios = [(k, s["nearest_code_ratio"]) for k, s in scored if "nearest_code_ratio" in s]
    if ratios:
        parts.append(
            "nearest-training-code distance vs unseen images: "
            + ", ".join(f"{names[k]} {r:.2f}" for k, r in ratios)
        )
    if "reconstructions_val" in result:
        v = result["reconstructions_val"]
        parts.append(
            f"validation reconstructions FID {v['fid']:.1f} (n={v['n']} vs {result['real_n']}"
            " real images)"
        )
    return "; ".join(parts)
