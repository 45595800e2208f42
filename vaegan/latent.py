"""Latent-space arithmetic on encoder means: attribute directions, principal directions,
edits and analogies (the seed documents' "smile vector" and A - B + C). numpy only, so the
CLI, the export and the gateway share it without torch.

A direction is a unit vector in z-space. Attribute directions are the normalised difference
of two sets' mean ``mu``; principal directions are the top principal components of the
training set's ``mu``s, scaled so that weight 1 is one standard deviation along them.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vaegan.errors import InvalidInput, NotFound

MIN_SET = 8  # fewer images per side give a direction dominated by the particular images
# A direction's name is a key in requests and is shown in pages and logs: plain words only,
# never markup. dimN names the raw latent axes.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
AXIS = re.compile(r"dim[0-9]{1,6}")


def check_name(name: str) -> str:
    """``name`` if a direction may have it, else InvalidInput saying what may."""
    if not NAME.fullmatch(name) or AXIS.fullmatch(name):
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise InvalidInput(
            f"direction name {shown!r}: a letter, then letters, digits, '_', '.' or '-', at "
            "most 64 characters, and not dim<N> (the raw latent axes)"
        )
    return name


@dataclass
class Direction:
    name: str
    vector: list[float]  # unit length
    kind: str  # "attribute" or "principal"
    scale: float = 1.0  # latent distance of weight 1 (an attribute: the gap between the means)
    counts: dict[str, int] = field(default_factory=dict)
    auc: float | None = None  # how well projections separate the two sets (0.5 = not at all)
    explained_variance: float | None = None  # principal directions: share of mu variance

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def __post_init__(self) -> None:
        if self.kind != "dimension":  # axes are made here, named dimN
            check_name(self.name)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Direction:
        return cls(**d)

    def array(self) -> np.ndarray:
        return np.asarray(self.vector, np.float32)


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counting half."""
    scores = np.concatenate([positive, negative])
    ranks = np.empty(len(scores))
    order = scores.argsort(kind="mergesort")
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def attribute_direction(name: str, with_mu: np.ndarray, without_mu: np.ndarray) -> Direction:
    """The direction from the ``without`` set's mean towards the ``with`` set's mean."""
    for label, mu in (("with", with_mu), ("without", without_mu)):
        if len(mu) < MIN_SET:
            raise InvalidInput(
                f"attribute {name!r}: {len(mu)} images {label} it; at least {MIN_SET} are needed "
                "for a direction that is not just those images"
            )
    gap = with_mu.mean(0) - without_mu.mean(0)
    norm = float(np.linalg.norm(gap))
    if norm == 0:
        raise InvalidInput(f"attribute {name!r}: both sets have the same mean encoding")
    unit = gap / norm
    return Direction(
        name=name,
        vector=unit.astype(np.float32).tolist(),
        kind="attribute",
        scale=norm,
        counts={"with": len(with_mu), "without": len(without_mu)},
        auc=roc_auc(with_mu @ unit, without_mu @ unit),
    )


def principal_directions(mu: np.ndarray, k: int) -> list[Direction]:
    """pc1..pcK of the ``mu``s; weight 1 moves one standard deviation along each."""
    if len(mu) < 2:
        raise InvalidInput("principal directions need at least 2 encodings")
    centred = mu - mu.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2 / (len(mu) - 1)
    out = []
    for i in range(min(k, len(s))):
        v = vt[i]
        v = v if v[np.argmax(np.abs(v))] >= 0 else -v  # a stable sign
        out.append(
            Direction(
                name=f"pc{i + 1}",
                vector=v.astype(np.float32).tolist(),
                kind="principal",
                scale=float(np.sqrt(var[i])),
                counts={"images": len(mu)},
                explained_variance=float(var[i] / var.sum()),
            )
        )
    return out


def edit(z: np.ndarray, directions: dict[str, Direction], weights: dict[str, float]) -> np.ndarray:
    """``z`` [N, D] moved by ``weight * scale`` along each named direction."""
    out = np.array(z, np.float32, copy=True)
    for name, w in weights.items():
        d = lookup(directions, name, z.shape[1])
        out += np.float32(w * d.scale) * d.array()
    return out


def sweep(z: np.ndarray, d: Direction, weights: np.ndarray) -> np.ndarray:
    """[len(z) * len(weights), D]: each row of ``z`` at each weight, row-major."""
    steps = np.asarray(weights, np.float32)[None, :, None] * np.float32(d.scale) * d.array()
    return (z[:, None, :] + steps).reshape(-1, z.shape[1])


def analogy(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """A - B + C, each term the mean of its encodings ([N, D] -> [D])."""
    with np.errstate(over="ignore", invalid="ignore"):  # callers check the result is finite
        return (a.mean(0) - b.mean(0) + c.mean(0)).astype(np.float32)


def axis(index: int, latent_dim: int) -> Direction:
    """Latent dimension ``index`` as a direction; weight 1 = one standard deviation of the prior."""
    if not 0 <= index < latent_dim:
        raise InvalidInput(f"dim{index}: the latent has dimensions dim0..dim{latent_dim - 1}")
    v = np.zeros(latent_dim, np.float32)
    v[index] = 1
    return Direction(name=f"dim{index}", vector=v.tolist(), kind="dimension")


def lookup(directions: dict[str, Direction], name: str, latent_dim: int | None = None) -> Direction:
    """A stored direction, or ``dimN`` (any model's raw latent axes, when its size is given)."""
    if name not in directions and latent_dim is not None and AXIS.fullmatch(name):
        return axis(int(name[3:]), latent_dim)
    if name not in directions:
        known = ", ".join(sorted(directions)) or "none"
        shown = name if len(name) <= 40 else name[:40] + "..."  # echo a bounded name
        raise NotFound(
            f"no direction {shown!r} for this model version (known: {known}; dim0, dim1, ... "
            "are the raw latent axes)"
        )
    return directions[name]


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation (Shoemake 1985; White 2016 for latent spaces): constant
    angular speed, magnitudes interpolated linearly. Near-parallel vectors, where the
    angle is numerically meaningless, fall back to linear interpolation."""
    t = t[:, None]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-8 or nb < 1e-8:
        return (1 - t) * a + t * b
    cos = float(np.clip(np.dot(a / na, b / nb), -1.0, 1.0))
    omega = np.arccos(cos)
    if np.sin(omega) < 1e-6:
        return (1 - t) * a + t * b
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def path(keys: np.ndarray, steps: int, spherical: bool) -> np.ndarray:
    """All frames through the keyframes: endpoints included, ``steps`` between each pair."""
    t = np.linspace(0.0, 1.0, steps + 2)[:-1]  # each segment without its end...
    segments = [
        slerp(a, b, t) if spherical else (1 - t[:, None]) * a + t[:, None] * b
        for a, b in itertools.pairwise(keys)
    ]
    return np.concatenate([*segments, keys[-1:]]).astype(
        np.float32
    )  # ...and the last keyframe once
