"""A latent prior fitted after training: a Gaussian mixture over the training images' codes.

A VAE's decoder is trained on codes near the encodings of its training images. With a small
data set those codes do not fill N(0, I): draws from the unit Gaussian often land in the
"holes" between them, where the decoder has seen nothing and paints blotches. Fitting a
density to the codes after training and sampling from it instead (ex-post density
estimation, Ghosh et al. 2020, "From Variational to Deterministic Autoencoders"; the
two-stage VAE of Dai & Wipf 2019 makes the same point) keeps draws where the decoder works.

numpy only: export fits it, the gateway samples it, neither needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vaegan.errors import VaeganError

#: Components fitted by default. More components keep draws closer to the training codes:
#: more like the data, less novel. For ~1,300 emoji, 80 (about 16 codes per component) is the
#: most whose draws stay as far from the training codes as unseen images' codes do
#: (``nearest_code_ratio`` about 1, at 32 and 64 px; docs/quality.md has the sweep).
DEFAULT_COMPONENTS = 80
#: The largest temperature a prior draw may be scaled by (Generate's ``sample.temperature``,
#: ``vaegan evaluate --temperature``): beyond it draws mean nothing, and far beyond it they
#: overflow float32 into Inf embeddings.
MAX_TEMPERATURE = 10.0
#: The most re-encoding steps a draw may take (Generate's ``sample.refine_steps``, ``vaegan
#: evaluate --refine``): the chain has settled well before it, and each step costs a whole
#: encoder and decoder pass.
MAX_REFINE_STEPS = 16
#: Covariance ridge, relative to the codes' mean variance: keeps components of few codes
#: invertible and their draws from collapsing onto a line.
RIDGE = 1e-2


@dataclass(frozen=True)
class GaussianMixture:
    weights: np.ndarray  # [K], sums to 1
    means: np.ndarray  # [K, D]
    chol: np.ndarray  # [K, D, D], lower Cholesky factors of the covariances
    codes: int  # how many codes it was fitted to

    @property
    def latent_dim(self) -> int:
        return int(self.means.shape[1])

    def sample(self, n: int, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        """n draws as float32 [n, D]; ``temperature`` scales the spread around each component's
        mean (< 1: more typical images, > 1: more varied)."""
        comp = rng.choice(len(self.weights), size=n, p=self.weights)
        eps = rng.standard_normal((n, self.latent_dim))
        z = self.means[comp] + temperature * np.einsum("nij,nj->ni", self.chol[comp], eps)
        return z.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "gaussian_mixture",
            "codes": self.codes,
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "chol": self.chol.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GaussianMixture:
        try:
            weights = np.asarray(d["weights"], np.float64)
            means = np.asarray(d["means"], np.float64)
            chol = np.asarray(d["chol"], np.float64)
            k, dim = means.shape
            ok = weights.shape == (k,) and chol.shape == (k, dim, dim)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok or d.get("kind") != "gaussian_mixture":
            raise VaeganError(
                "not a gaussian_mixture prior (weights [K], means [K, D], chol [K, D, D])"
            )
        if not (
            np.isfinite(means).all() and np.isfinite(chol).all() and np.isfinite(weights).all()
        ):
            raise VaeganError("the fitted prior holds NaN or Inf")
        return cls(weights / weights.sum(), means, chol, int(d.get("codes", 0)))


def fit(codes: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> GaussianMixture:
    """Full-covariance Gaussian mixture by EM, k-means++ start; a ridge keeps every
    covariance well conditioned. ``k`` is capped so each component has codes to fit."""
    x = np.asarray(codes, np.float64)
    n, dim = x.shape
    if n < 2:
        raise VaeganError("a fitted prior needs at least 2 codes")
    k = max(1, min(k, n // 2))
    rng = np.random.default_rng(seed)
    ridge = RIDGE * float(x.var(0).mean()) * np.eye(dim)
    means = _kmeans_pp(x, k, rng)
    resp = _assign(x, means)
    prev = -np.inf
    for _ in range(iters):
        weights, means, covs = _m_step(x, resp, ridge)
        chol = np.linalg.cholesky(covs)
        log_p = _log_densities(x, weights, means, chol)  # [n, k]
        top = log_p.max(1, keepdims=True)
        log_norm = top + np.log(np.exp(log_p - top).sum(1, keepdims=True))
        resp = np.exp(log_p - log_norm)
        ll = float(log_norm.mean())
        if ll - prev < 1e-6 * abs(ll):
            break
        prev = ll
    weights, means, covs = _m_step(x, resp, ridge)
    return GaussianMixture(weights, means, np.linalg.cholesky(covs), n)


def nearest_code_ratio(draws: np.ndarray, train: np.ndarray, unseen: np.ndarray) -> float:
    """How far a prior's draws land from the training images' codes, against how far unseen
    images' codes land: the median distance from each draw to its nearest training code over
    the same median for ``unseen`` (the validation images' codes). Below 1, the draws sit
    closer to the training images than new images of the same kind do: the prior is
    reproducing its training set (too many components) rather than generalising. Well above
    1, they fall in the holes between the codes."""
    return float(np.median(_nearest(draws, train)) / np.median(_nearest(unseen, train)))


def _nearest(x: np.ndarray, ref: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Distance from each row of ``x`` to its nearest row of ``ref``, in bounded memory."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    r2 = (ref * ref).sum(1)
    out = np.empty(len(x))
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk]
        d2 = (part * part).sum(1)[:, None] + r2[None, :] - 2 * part @ ref.T
        out[i : i + chunk] = np.sqrt(np.maximum(d2.min(1), 0))
    return out


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[0])
    return np.stack(centres)


def _assign(x: np.ndarray, means: np.ndarray) -> np.ndarray:
    d2 = ((x[:, None, :] - means[None]) ** 2).sum(-1)
    resp = np.zeros_like(d2)
    resp[np.arange(len(x)), d2.argmin(1)] = 1.0
    return resp


def _m_step(x: np.ndarray, resp: np.ndarray, ridge: np.ndarray):
    nk = resp.sum(0) + 1e-12
    weights = nk / nk.sum()
    means = (resp.T @ x) / nk[:, None]
    covs = np.stack(
        [
            ((resp[:, j, None] * (x - means[j])).T @ (x - means[j])) / nk[j] + ridge
            for j in range(len(nk))
        ]
    )
    return weights, means, covs


def _log_densities(x, weights, means, chol) -> np.ndarray:
    out = np.empty((len(x), len(weights)))
    for j in range(len(weights)):
        sol = np.linalg.solve(chol[j], (x - means[j]).T)  # L^-1 (x - mu)
        out[:, j] = (
            np.log(weights[j])
            - 0.5 * (sol**2).sum(0)
            - np.log(np.diag(chol[j])).sum()
            - 0.5 * x.shape[1] * np.log(2 * np.pi)
        )
    return out
