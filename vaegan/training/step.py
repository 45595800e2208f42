"""One VAE-GAN training step (Larsen et al. 2016, Algorithm 1), and the pieces it runs on.

Per step: a D phase on detached fakes, then an encoder/decoder phase against the updated
D. The encoder minimises L_prior + L_rec, the decoder gamma*L_rec + L_GAN (L_rec: the
learned similarity L_llike plus the optional pixel term), D only L_GAN (plus, with
``r1_gamma``, the R1 penalty every ``r1_every`` steps); each optimiser
steps only its own network, and the GAN gradient never reaches the encoder
(``backward(inputs=...)`` restricts each loss to its network's parameters). Every image D
sees goes through the same DiffAugment transforms (``augment.py``), and a moving average
of the decoder (``EMA``) is what grids, FID and export use.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import torch

from vaegan.errors import VaeganError
from vaegan.training import losses as L
from vaegan.training.augment import diff_augment, parse_policy
from vaegan.training.config import TrainConfig
from vaegan.training.distributed import SINGLE, Dist
from vaegan.training.model import VAEGAN

LN2 = math.log(2.0)


class Divergence(VaeganError):
    pass


def balance(
    real_logit: torch.Tensor, fake_logits: list[torch.Tensor], margin: float, dist: Dist = SINGLE
) -> tuple[bool, bool]:
    """Equilibrium balancing (seed 000: "training G and D based on loss thresholds"):
    pause D when it is far better than chance, the decoder's GAN term when far worse.
    The errors are averaged over ranks, so every rank takes the same decision."""
    if margin <= 0:
        return True, True
    real_logit, fake_logits = real_logit.detach(), [f.detach() for f in fake_logits]
    ones = torch.ones_like(real_logit)
    real_err = float(torch.nn.functional.binary_cross_entropy_with_logits(real_logit, ones))
    fake_err = float(
        sum(
            torch.nn.functional.binary_cross_entropy_with_logits(f, torch.zeros_like(f))
            for f in fake_logits
        )
        / len(fake_logits)
    )
    real_err, fake_err = dist.mean([real_err, fake_err])
    train_dis = not (real_err < LN2 - margin or fake_err < LN2 - margin)
    train_dec = not (real_err > LN2 + margin or fake_err > LN2 + margin)
    return (True, True) if not (train_dis or train_dec) else (train_dis, train_dec)


class Nets(NamedTuple):
    model: VAEGAN
    encoder: torch.nn.Module  # possibly DDP and torch.compile wrappers of model.encoder, ...
    decoder: torch.nn.Module
    discriminator: torch.nn.Module
    # D without DDP, for the encoder/decoder phase: D's parameters get no gradient there,
    # and a DDP forward would wait for a gradient reduction that never comes.
    discriminator_local: torch.nn.Module | None = None


class Optimizers(NamedTuple):
    encoder: torch.optim.Optimizer
    decoder: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer


class EMA:
    """Moving average of the decoder's weights (Polyak averaging, as GAN generators use since
    Karras et al. 2018): grids, FID and export use it. Buffers (BatchNorm statistics) are
    copied. The decay ramps up from 0, so early random weights do not linger in short runs."""

    def __init__(self, net: torch.nn.Module, decay: float):
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, net: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.net.parameters(), net.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.net.buffers(), net.buffers(), strict=True):
            e.copy_(b)


def r1_due(cfg: TrainConfig, step: int) -> bool:
    """Whether step ``step`` (0-based) takes the lazy R1 penalty."""
    return cfg.r1_gamma > 0 and step % cfg.r1_every == 0


def train_step(
    nets: Nets,
    opts: Optimizers,
    x: torch.Tensor,
    cfg: TrainConfig,
    autocast=None,
    step: int = 0,
    last_path: Path | None = None,
    dist: Dist = SINGLE,
) -> L.Losses:
    """One VAE-GAN step on a batch ``x`` in [-1, 1] (this rank's share); returns every loss."""
    autocast = autocast or nullcontext()
    model = nets.model
    local_d = nets.discriminator if nets.discriminator_local is None else nets.discriminator_local
    # Noise and augmentations are drawn for the global batch and sliced, so N ranks see
    # exactly what one rank would (on one rank: randn_like(mu), then the prior's randn).
    n, share = x.shape[0] * dist.world_size, dist.shard(x.shape[0] * dist.world_size)
    policy = parse_policy(cfg.diffaugment)

    def aug(t: torch.Tensor) -> torch.Tensor:
        return diff_augment(t, policy, n, share) if policy else t

    with autocast:  # encode, reconstruct, and sample the prior
        mu, logvar = nets.encoder(x)

        def noise(dtype: torch.dtype) -> torch.Tensor:
            return torch.randn(n, mu.shape[1], device=mu.device, dtype=dtype)[share]

        z = mu + noise(mu.dtype) * torch.exp(0.5 * logvar)
        x_rec = nets.decoder(z)
        z_p = noise(torch.float32)
        if cfg.prior_mixup:
            z_p = _mixup(z_p, z.float(), cfg.prior_mixup, n, share, dist)
        x_p = nets.decoder(z_p)

    # --- D phase: real vs (reconstructions, prior samples), fakes detached, all augmented ---
    # On an R1 step the real images carry a gradient, so the penalty reuses this forward.
    r1_now = r1_due(cfg, step)
    real = x.detach().requires_grad_(r1_now)
    with autocast:
        real_logit, _ = nets.discriminator(aug(real))
        fake_logits = [
            nets.discriminator(aug(x_rec.detach()))[0].float(),
            nets.discriminator(aug(x_p.detach()))[0].float(),
        ]
        if cfg.gan_loss == "hinge":
            loss_d = L.hinge_d(real_logit.float(), fake_logits)
        else:
            loss_d = L.gan_d(real_logit.float(), fake_logits, cfg.real_label)
    r1 = L.r1_penalty(real_logit, real) if r1_now else torch.zeros((), device=x.device)
    _check_finite(step, {"gan_d": loss_d, "r1": r1}, last_path, dist)
    train_dis, train_dec_gan = balance(real_logit.float(), fake_logits, cfg.balance_margin, dist)
    # Under DDP the backward runs even when D pauses: its forward already armed the gradient
    # reduction, which every rank must complete.
    if train_dis or dist.enabled:
        opts.discriminator.zero_grad(set_to_none=True)
        (loss_d + 0.5 * cfg.r1_gamma * cfg.r1_every * r1 if r1_now else loss_d).backward()
    if train_dis:
        opts.discriminator.step()

    # --- encoder/decoder phase against the updated D ---
    with autocast:
        # The learned similarity compares x and its reconstruction under the same transform:
        # the generator state is rewound so both draw identical augmentation parameters.
        with torch.no_grad(), torch.random.fork_rng(devices=_rng_devices(x)):
            _, f_real = local_d(aug(x))
        rec_logit, f_rec = local_d(aug(x_rec))
        p_logit, _ = local_d(aug(x_p))
        kl = L.kl_prior(mu.float(), logvar.float())
        llike = L.llike_features(f_rec.float(), f_real.float())
        pixel = (
            L.pixel_mse(x_rec.float(), x) if cfg.pixel_weight else torch.zeros((), device=x.device)
        )
        gan_terms, weights = [rec_logit.float(), p_logit.float()], [1.0, cfg.prior_gan_weight]
        gan_g = (L.hinge_g if cfg.gan_loss == "hinge" else L.gan_g)(gan_terms, weights)
        reconstruction = cfg.llike_weight * llike + cfg.pixel_weight * pixel
        loss_e = cfg.kl_weight * kl + reconstruction
        loss_g = cfg.gamma * reconstruction  # gamma weighs it against L_GAN (eq. 10)
        if train_dec_gan:
            loss_g = loss_g + gan_g
    mmd = torch.zeros((), device=x.device)
    if cfg.mmd_weight:  # in fp32: distances between codes, outside autocast
        mmd = _mmd(z.float(), n, share, dist)
        # Every rank computes the global batch's MMD, with its gradient reaching only this
        # rank's codes; DDP averages the gradients over ranks, so this restores their sum.
        loss_e = loss_e + cfg.mmd_weight * dist.world_size * mmd
    losses = L.Losses(kl, llike, pixel, gan_g, loss_d, loss_e, loss_g, mmd, r1.detach())
    _check_finite(step, losses._asdict(), last_path, dist)
    opts.encoder.zero_grad(set_to_none=True)
    opts.decoder.zero_grad(set_to_none=True)
    # Each loss reaches only its own network: L_GAN never flows into the encoder.
    loss_e.backward(inputs=list(model.encoder.parameters()), retain_graph=True)
    loss_g.backward(inputs=list(model.decoder.parameters()))
    opts.encoder.step()
    opts.decoder.step()
    return losses


def _mmd(z: torch.Tensor, n: int, share: slice, dist: Dist) -> torch.Tensor:
    """MMD between the global batch's codes and n draws of N(0, I), the same on every rank.
    The other ranks' codes enter as constants, so the gradient reaching this rank's codes is
    exactly their part of the global MMD's. The draws are made for the global batch on every
    rank alike."""
    codes = z
    if dist.enabled:
        others = dist.gather(z)
        codes = torch.cat([others[: share.start], z, others[share.stop :]])
    prior = torch.randn(n, z.shape[1], device=z.device, dtype=z.dtype)
    return L.mmd_imq(codes, prior)


def _mixup(
    z_p: torch.Tensor, z: torch.Tensor, share_mixed: float, n: int, share: slice, dist: Dist
) -> torch.Tensor:
    """The first ``share_mixed`` of the global batch's prior draws replaced by mixtures of two
    of its codes (latent mixup; ACAI, Berthelot et al. 2018, asks the same of interpolations).
    The GAN then trains the decoder between the training codes, where a prior fitted to them
    (vaegan/prior.py) draws, rather than only on N(0, I). The codes are detached: the encoder
    learns from its own losses alone. Pairs and weights are drawn for the global batch, so N
    ranks mix exactly as one rank would."""
    codes = dist.gather(z)  # [n, D], no gradient
    partner = torch.randperm(n, device=z.device)[share]
    a = torch.rand(n, 1, device=z.device)[share]
    mixed = a * codes[share] + (1 - a) * codes[partner]
    chosen = (torch.arange(n, device=z.device) < round(share_mixed * n))[share, None]
    return torch.where(chosen, mixed, z_p)


def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 autocast is faster than fp32 here: on CUDA, and on a CPU with bf16
    instructions (AVX512-BF16 or AMX). Elsewhere oneDNN emulates bf16, slower than fp32."""
    if device.type == "cuda":
        return True
    try:  # private probes: a torch without them trains in fp32
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def autocast_for(device: torch.device, amp: bool):
    """The step's autocast context: bf16 when ``amp`` is on and it pays on ``device``."""
    if amp and bf16_pays(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def lr_scale(cfg: TrainConfig) -> float:
    """The explicit learning-rate rule for batch sizes other than ``lr_reference_batch``."""
    ratio = cfg.batch_size / cfg.lr_reference_batch
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.lr_scaling]


def wrap_networks(
    model: VAEGAN, dist: Dist, device: torch.device, compile: bool, broadcast_buffers: bool
) -> Nets:
    """The networks as the step calls them: DDP around each (gradients averaged over ranks
    during backward), torch.compile around that when asked."""
    networks = (model.encoder, model.decoder, model.discriminator)
    if not dist.enabled:
        return Nets(model, *((torch.compile(m) for m in networks) if compile else networks))
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    wrapped = [DDP(m, device_ids=ids, forward_sync_buffers=broadcast_buffers) for m in networks]
    local = model.discriminator
    if compile:
        wrapped = [torch.compile(m) for m in wrapped]
        local = torch.compile(local)
    return Nets(model, *wrapped, discriminator_local=local)


def _rng_devices(x: torch.Tensor) -> list:
    return [x.device] if x.device.type == "cuda" else []


def _check_finite(
    step: int, values: dict[str, torch.Tensor], last_path: Path | None, dist: Dist = SINGLE
) -> None:
    """The divergence guard: stop before a NaN/Inf loss can reach the weights (on every rank
    at once: a rank that stopped alone would leave the others waiting in a collective)."""
    bad = [k for k, v in values.items() if not torch.isfinite(v).all()]
    if dist.any(bool(bad)):
        bad = bad or ["a loss on another rank"]
        where = (
            f"last good checkpoint: {last_path}"
            if last_path is not None and last_path.exists()
            else "no checkpoint was written yet"
        )
        raise Divergence(
            f"training diverged at step {step + 1}: {', '.join(bad)} became NaN/Inf ({where}); "
            "lower the learning rates (--set lr_dec=...) or enable --set balance_margin=0.3"
        )
