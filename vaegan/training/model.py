"""The VAE-GAN's three networks, DCGAN-style (Radford et al. 2015; Larsen et al. 2016).

Shapes in comments are for the default 64x64 images with base width ``w``; other
power-of-two sizes add or remove one stride-2 block per factor of two.
"""

from __future__ import annotations

import torch
from torch import nn

from vaegan.training.config import ModelConfig


def _down(cin: int, cout: int, bn: bool, spectral: bool = False) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, 4, 2, 1, bias=not bn)
    # Spectral normalisation bounds each layer's Lipschitz constant (Miyato et al. 2018).
    layers: list[nn.Module] = [nn.utils.parametrizations.spectral_norm(conv) if spectral else conv]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return layers


# torch.compile's CUDA backward mispredicts the strides of a convolution's gradients where one
# side is 1x1 (pytorch/pytorch#171622), and training stops on an assertion. Where a network
# turns 4x4 into 1x1 or back, the convolution is a matrix product, so it is computed as one:
# the same module type, parameters and checkpoints, the same arithmetic.
class _Collapse(nn.Conv2d):
    """Conv2d whose kernel covers its whole input (8w x4x4 -> C x1x1), as one matrix product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.flatten(1), self.weight.flatten(1), self.bias)[
            ..., None, None
        ]


class _Expand(nn.ConvTranspose2d):
    """ConvTranspose2d from a 1x1 input (latent x1x1 -> C x4x4), as one matrix product."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = z.flatten(1) @ self.weight.flatten(1)  # weight: [latent, C, 4, 4]
        out = out.view(z.shape[0], *self.weight.shape[1:])
        return out if self.bias is None else out + self.bias[:, None, None]


class Encoder(nn.Module):
    """x -> (mu, logvar): the DCGAN discriminator's trunk with a 2*latent head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w, layers, c = cfg.width, [], 3
        for i in range(cfg.num_blocks):  # 3x64x64 -> w x32x32 -> 2w x16x16 -> 4w x8x8 -> 8w x4x4
            layers += _down(c, w * 2**i, bn=i > 0)
            c = w * 2**i
        self.trunk = nn.Sequential(*layers)
        self.head = _Collapse(c, 2 * cfg.latent_dim, 4, 1, 0)  # 8w x4x4 -> 2*latent x1x1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.trunk(x)).flatten(1).chunk(2, dim=1)
        return mu, logvar


def _up(cin: int, cout: int, upsample: str, bias: bool) -> list[nn.Module]:
    """Double the side: a stride-2 transposed conv (DCGAN), or nearest-neighbour resize then
    a 3x3 conv, which cannot make the checkerboard of uneven kernel overlap (Odena et al.
    2016, "Deconvolution and Checkerboard Artifacts")."""
    if upsample == "transpose":
        return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=bias)]
    return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)]


class Decoder(nn.Module):
    """z -> image in [-1, 1]: the DCGAN generator, with ``cfg.upsample`` doubling blocks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w, n = cfg.width, cfg.num_blocks
        c = w * 2 ** (n - 1)
        layers: list[nn.Module] = [  # latent x1x1 -> 8w x4x4
            _Expand(cfg.latent_dim, c, 4, 1, 0, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(True),
        ]
        for _ in range(n - 1):  # 8w x4x4 -> 4w x8x8 -> 2w x16x16 -> w x32x32
            layers += [
                *_up(c, c // 2, cfg.upsample, bias=False),
                nn.BatchNorm2d(c // 2),
                nn.ReLU(True),
            ]
            c //= 2
        layers += [*_up(c, 3, cfg.upsample, bias=True), nn.Tanh()]  # w x32x32 -> 3x64x64
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """x -> (real/fake logit, features of block ``feature_layer`` for the similarity loss)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w, c, sn = cfg.width, 3, cfg.d_norm == "spectral"
        blocks = []
        for i in range(cfg.num_blocks):  # same trunk as the encoder; block 3 is 4w x8x8
            blocks.append(nn.Sequential(*_down(c, w * 2**i, bn=i > 0 and not sn, spectral=sn)))
            c = w * 2**i
        self.blocks = nn.ModuleList(blocks)
        head = _Collapse(c, 1, 4, 1, 0)  # 8w x4x4 -> 1x1x1
        self.head = nn.utils.parametrizations.spectral_norm(head) if sn else head
        self.feature_layer = cfg.feature_layer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = x
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i == self.feature_layer:
                features = x
        return self.head(x).flatten(), features


class VAEGAN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.discriminator = Discriminator(cfg)
        self.apply(init_weights)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I), the prior the KL term trains towards (not a scaled copy of it)."""
        device = next(self.parameters()).device
        return torch.randn(n, self.cfg.latent_dim, generator=generator, device=device)


def init_weights(m: nn.Module) -> None:
    """DCGAN's initialisation: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        # A spectrally normalised conv keeps its raw weight as the parametrisation's original.
        weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
        nn.init.normal_(weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW float -> uint8 NHWC, rounding as the exported graph does."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def from_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> [-1, 1] NCHW float."""
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
