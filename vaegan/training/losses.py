"""Loss terms, named after Larsen et al. 2016, "Autoencoding beyond pixels using a learned
similarity metric" (arXiv:1512.09300), section 2. Each returns a scalar mean over the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def kl_prior(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """L_prior = KL(q(z|x) || N(0, I)), summed over latent dims (eq. 2)."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1).mean()


def mmd_imq(codes: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Maximum mean discrepancy between a batch of codes and draws of the prior, with the
    inverse multiquadratic kernel k(a, b) = C / (C + |a - b|^2) summed over scales C = 2 d s
    (Tolstikhin et al. 2018, "Wasserstein auto-encoders", sec. 4; InfoVAE, Zhao et al. 2017).
    It measures the aggregate posterior against N(0, I), which the per-image KL does not: the
    codes can each be near-Gaussian and still leave holes in the prior. Unbiased (the
    diagonals are left out)."""
    n, d = codes.shape
    both = torch.cat([codes, prior])
    norms = both.pow(2).sum(1)
    sq = (norms[:, None] + norms[None, :] - 2 * both @ both.T).clamp_min(0)
    k = sum(2.0 * d * s / (2.0 * d * s + sq) for s in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0))
    k = k - torch.diag_embed(torch.diagonal(k))
    m = prior.shape[0]
    return (
        k[:n, :n].sum() / (n * (n - 1))
        + k[n:, n:].sum() / (m * (m - 1))
        - 2 * k[:n, n:].sum() / (n * m)
    )


def llike_features(fake_features: torch.Tensor, real_features: torch.Tensor) -> torch.Tensor:
    """L_llike^Dis_l: Gaussian log-likelihood on D's l-th layer, i.e. half the squared
    feature distance, summed over features (eq. 8). The real features are the target."""
    return 0.5 * (fake_features - real_features.detach()).pow(2).flatten(1).sum(1).mean()


def pixel_mse(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Optional plain pixel reconstruction (what the learned metric replaces)."""
    return 0.5 * (recon - x).pow(2).flatten(1).sum(1).mean()


def gan_d(
    real_logit: torch.Tensor, fake_logits: list[torch.Tensor], real_label: float = 1.0
) -> torch.Tensor:
    """L_GAN for the discriminator: real -> real_label (<1 = one-sided smoothing),
    each fake batch (reconstructions, prior samples) -> 0 (eq. 9)."""
    loss = F.binary_cross_entropy_with_logits(real_logit, torch.full_like(real_logit, real_label))
    for logit in fake_logits:
        loss = loss + F.binary_cross_entropy_with_logits(logit, torch.zeros_like(logit))
    return loss


def gan_g(fake_logits: list[torch.Tensor], weights: list[float] | None = None) -> torch.Tensor:
    """L_GAN for the decoder, non-saturating form: -log D(fake), each batch weighted."""
    weights = weights or [1.0] * len(fake_logits)
    return sum(
        w * F.binary_cross_entropy_with_logits(t, torch.ones_like(t))
        for w, t in zip(weights, fake_logits, strict=True)
    )


def hinge_d(real_logit: torch.Tensor, fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Hinge loss for D (Lim & Ye 2017; Miyato et al. 2018, eq. 17):
    E[max(0, 1 - D(x))] + E[max(0, 1 + D(fake))] for each fake batch."""
    loss = F.relu(1.0 - real_logit).mean()
    for logit in fake_logits:
        loss = loss + F.relu(1.0 + logit).mean()
    return loss


def hinge_g(fake_logits: list[torch.Tensor], weights: list[float] | None = None) -> torch.Tensor:
    """Hinge loss for the generator: -E[D(fake)], each batch weighted."""
    weights = weights or [1.0] * len(fake_logits)
    return sum(-w * t.mean() for w, t in zip(weights, fake_logits, strict=True))


def r1_penalty(real_logit: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 = E[|grad_x D(x)|^2] at the real images, summed over pixels (Mescheder et al. 2018,
    "Which training methods for GANs do actually converge?", eq. 9; the loss adds gamma/2 of
    it). The graph is kept, so the penalty's own gradient reaches D's weights."""
    (grad,) = torch.autograd.grad(real_logit.float().sum(), real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


class Losses(NamedTuple):
    """All terms of one step, computed once and logged as they are."""

    kl: torch.Tensor
    llike: torch.Tensor
    pixel: torch.Tensor
    gan_g: torch.Tensor
    gan_d: torch.Tensor
    encoder: torch.Tensor  # L_prior + L_llike (+ pixel) (+ MMD)
    decoder: torch.Tensor  # gamma * (L_llike (+ pixel)) + L_GAN
    mmd: torch.Tensor  # MMD(codes, N(0, I)), in the encoder's loss with mmd_weight
    r1: torch.Tensor  # R1 of this step's real batch (0 between lazy R1 steps), in D's loss

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in self._asdict().items()}
