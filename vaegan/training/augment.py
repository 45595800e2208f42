"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN
Training", arXiv:2006.10738): the same random, differentiable transforms applied to every
image the discriminator sees, real or generated, so D cannot memorise a small training set
and G still gets gradients through the transforms. The transforms follow the paper's
reference code (colour, translation by 1/8, cutout of 1/2), on images in [-1, 1].

Random parameters are drawn for the global batch and sliced to this rank's share, so N
ranks transform their images exactly as one rank would (what keeps data-parallel training
the same computation on any number of ranks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vaegan.training.config import DIFFAUGMENT as POLICIES
from vaegan.training.config import parse_policy

__all__ = ["POLICIES", "diff_augment", "parse_policy"]


def _rand(n: int, share: slice, *shape: int, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, *shape, device=like.device)[share].to(like.dtype)


def _randint(lo: int, hi: int, n: int, share: slice, like: torch.Tensor) -> torch.Tensor:
    return torch.randint(lo, hi, (n, 1, 1), device=like.device)[share]


def color(x: torch.Tensor, n: int, share: slice) -> torch.Tensor:
    x = x + (_rand(n, share, 1, 1, 1, like=x) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(n, share, 1, 1, 1, like=x) * 2) + mean  # saturation
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_rand(n, share, 1, 1, 1, like=x) + 0.5) + mean  # contrast


def translation(x: torch.Tensor, n: int, share: slice, ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx, ty = _randint(-sh, sh + 1, n, share, x), _randint(-sw, sw + 1, n, share, x)
    gb, gx, gy = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])  # the border the shift reveals is 0 (grey)
    return padded.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, n: int, share: slice, ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = _randint(0, h + (1 - ch % 2), n, share, x)
    oy = _randint(0, w + (1 - cw % 2), n, share, x)
    gb, gx, gy = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(ch, device=x.device),
        torch.arange(cw, device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + ox - ch // 2, 0, h - 1)
    gy = torch.clamp(gy + oy - cw // 2, 0, w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


_TRANSFORMS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(
    x: torch.Tensor, policy: tuple[str, ...], n: int | None = None, share: slice | None = None
) -> torch.Tensor:
    """``x`` (this rank's images) transformed by each named transform in turn; ``n`` is the
    global batch and ``share`` this rank's slice of it (defaults: one rank)."""
    n = x.shape[0] if n is None else n
    share = slice(0, n) if share is None else share
    for name in policy:
        x = _TRANSFORMS[name](x, n, share)
    return x
