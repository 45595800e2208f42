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
features are cached beside the data (see ``fid.real_set``). Each figure carries its n.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vaegan.errors import VaeganError
from vaegan.prior import DEFAULT_COMPONENTS, GaussianMixture
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


def evaluate(
    model: Scored, data: str | Path, *, n: int = 1000, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    from vaegan.training.data import load_dataset

    ds = load_dataset(data)
    if ds.crop.size != model.image_size:
        raise VaeganError(
            f"{data} holds {ds.crop.size}px images but the model makes {model.image_size}px ones"
        )
    if n < 4:
        raise VaeganError("--n must be at least 4 (precision/recall compare 3 neighbours)")
    inception = fid.InceptionFeatures()
    real = fid.real_set(data, inception, progress)
    val = np.array(ds.val_images()) if len(ds.val) > 4 else None  # a copy: the split is small
    with tqdm(
        total=(3 if model.prior else 2) * n + (len(val) if val is not None else 0),
        desc="evaluate",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, model.latent_dim)).astype(np.float32)
        samples = model.decode(z)
        picked = real.images[rng.choice(len(real.images), size=n, replace=n > len(real.images))]
        recon = model.decode(model.encode(picked))
        out: dict[str, Any] = {
            **model.source,
            "data": str(data),
            "real_set": real.description,
            "real_n": len(real.features),
            "n": n,
            "seed": seed,
            "inception_sha1": fid.INCEPTION_SHA1,
            "samples": fid.score(real, inception(samples, bar.update)).as_dict(),
        }
        if model.prior is not None:
            fitted = model.decode(model.prior.sample(n, rng))
            out["samples_fitted"] = fid.score(real, inception(fitted, bar.update)).as_dict()
            out["prior_components"] = len(model.prior.weights)
        out["reconstructions"] = fid.score(real, inception(recon, bar.update)).as_dict()
        if val is not None:
            val_recon = model.decode(model.encode(val))
            out["reconstructions_val"] = fid.score(real, inception(val_recon, bar.update)).as_dict()
    return out


def summary(result: dict[str, Any]) -> str:
    s, r = result["samples"], result["reconstructions"]
    f = result.get("samples_fitted")
    line = (
        f"FID samples {s['fid']:.1f}"
        + (f", samples (fitted prior) {f['fid']:.1f}" if f else "")
        + f", reconstructions {r['fid']:.1f} "
        f"(n={result['n']} each vs {result['real_n']} real images); "
        f"precision/recall samples {s['precision']:.2f}/{s['recall']:.2f}"
        + (f", fitted {f['precision']:.2f}/{f['recall']:.2f}" if f else "")
        + f", reconstructions {r['precision']:.2f}/{r['recall']:.2f}"
    )
    if "reconstructions_val" in result:
        v = result["reconstructions_val"]
        line += f"; validation reconstructions FID {v['fid']:.1f} (n={v['n']})"
    return line
