"""The one training configuration: typed dataclasses with commented defaults, presets,
and ``--set FIELD=VALUE`` overrides generated from the fields (unknown names are errors).
"""

from __future__ import annotations

import dataclasses
from argparse import ArgumentTypeError
from dataclasses import dataclass, field, fields, replace
from typing import Any

from vaegan.errors import VaeganError
from vaegan.flags import parse_bool


def parse_policy(policy: str) -> tuple[str, ...]:
    """``diffaugment``'s comma-separated transform names, checked. Here and torch-free: every
    command's parser, ``vaegan serve``'s too, lists the presets from this module."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in names if p not in DIFFAUGMENT]
    if unknown:
        raise VaeganError(
            f"diffaugment: unknown transform {unknown[0]!r}; choose from {', '.join(DIFFAUGMENT)}"
        )
    return names


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


UPSAMPLES = ("resize", "transpose")
DIFFAUGMENT = ("color", "translation", "cutout")  # transforms of vaegan/training/augment.py
D_NORMS = ("batch", "spectral")
# What checkpoints written before a field existed were trained with.
_MODEL_LEGACY = {"upsample": "transpose", "d_norm": "batch"}
_TRAIN_LEGACY = {"diffaugment": "", "ema_decay": 0.0, "fid_every": 0}


@dataclass(frozen=True)
class ModelConfig:
    """What is needed to rebuild the networks; saved in every checkpoint."""

    image_size: int = _f(64, "side of the square RGB images (a power of two, 16..256)")
    latent_dim: int = _f(100, "size of the latent vector z")
    width: int = _f(64, "base channel count of all three networks (DCGAN's ngf/ndf)")
    feature_layer: int = _f(3, "discriminator block whose output measures reconstruction")
    upsample: str = _f(
        "resize", "decoder's doubling blocks: resize (nearest + 3x3 conv) or transpose (DCGAN)"
    )
    d_norm: str = _f("batch", "discriminator's normalisation: batch (BatchNorm) or spectral")

    def __post_init__(self) -> None:
        for name, allowed in (("upsample", UPSAMPLES), ("d_norm", D_NORMS)):
            if getattr(self, name) not in allowed:
                raise VaeganError(
                    f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}"
                )
        n = self.image_size
        if n < 16 or n > 256 or n & (n - 1):
            raise VaeganError(f"image_size must be a power of two in 16..256, got {n}")
        if self.latent_dim < 1 or self.width < 1:
            raise VaeganError("latent_dim and width must be positive")
        if not 1 <= self.feature_layer <= self.num_blocks:
            raise VaeganError(f"feature_layer must be in 1..{self.num_blocks}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """A checkpoint's model config; fields it predates take their old behaviour."""
        return cls(**{**_MODEL_LEGACY, **d})

    @property
    def num_blocks(self) -> int:
        """Strided conv blocks from image_size down to 4x4 (4 for 64x64)."""
        return self.image_size.bit_length() - 3


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    # optimisation
    steps: int = _f(80_000, "total optimisation steps")
    batch_size: int = _f(64, "images per step, in total over all ranks (each takes an equal share)")
    lr_enc: float = _f(2e-4, "Adam learning rate of the encoder")
    lr_dec: float = _f(2e-4, "Adam learning rate of the decoder/generator")
    lr_dis: float = _f(2e-4, "Adam learning rate of the discriminator")
    beta1: float = _f(0.5, "Adam beta1 (DCGAN's 0.5)")
    beta2: float = _f(0.999, "Adam beta2")
    # loss weights (Larsen et al. 2016, "Autoencoding beyond pixels")
    kl_weight: float = _f(1.0, "weight of the KL prior term on the encoder")
    mmd_weight: float = _f(
        0.0,
        "weight of the MMD between the batch's codes and N(0, I) on the encoder (InfoVAE, "
        "WAE-MMD): pulls the codes as a whole onto the prior that N(0, I) sampling draws from",
    )
    llike_weight: float = _f(1.0, "weight of the learned-similarity (feature) reconstruction")
    gamma: float = _f(
        1e-2,
        "decoder's weight of reconstruction (feature and pixel) vs GAN loss (the paper's gamma)",
    )
    pixel_weight: float = _f(0.0, "optional pixel MSE reconstruction weight (not in the paper)")
    # stabilisers
    real_label: float = _f(1.0, "target for real images in D's loss; 0.9 = one-sided smoothing")
    balance_margin: float = _f(
        0.0,
        "equilibrium balancing: skip D's step when its loss is below ln2-margin and "
        "the decoder's GAN term when above ln2+margin (0 = off)",
    )
    gan_loss: str = _f("bce", "GAN objective: bce (non-saturating) or hinge")
    r1_gamma: float = _f(
        0.0,
        "R1 penalty on D: gamma/2 times the squared gradient of D's logit at the real images, "
        "through DiffAugment (Mescheder et al. 2018; 0 = off)",
    )
    r1_every: int = _f(
        16,
        "steps between R1 penalties, each weighted by this many steps (lazy regularisation, "
        "StyleGAN2)",
    )
    prior_gan_weight: float = _f(
        1.0, "weight of the GAN loss on prior samples within it (reconstructions weigh 1)"
    )
    prior_mixup: float = _f(
        0.0,
        "share of the decoder's prior draws in the GAN loss that mix two of the batch's codes "
        "(a z_i + (1 - a) z_j, a ~ U(0, 1)) instead of drawing N(0, I)",
    )
    mirror: bool = _f(
        False,
        "flip each training image left-right with probability 1/2 (StyleGAN2-ADA's --mirror): "
        "twice the images for a small folder whose subjects may face either way",
    )
    diffaugment: str = _f(
        "color,translation,cutout",
        "DiffAugment transforms applied to every image D sees (comma-separated; empty = off)",
    )
    ema_decay: float = _f(
        0.999, "decay of the decoder's moving average used for grids, FID and export (0 = off)"
    )
    # bookkeeping
    seed: int = _f(0, "seeds weights, data order, crops and noise")
    log_every: int = _f(10, "steps between progress-bar and TensorBoard updates")
    eval_every: int = _f(500, "steps between validation metrics and sample grids")
    checkpoint_every: int = _f(1000, "steps between checkpoints")
    keep_checkpoints: int = _f(3, "step-numbered checkpoints kept besides last.pt")
    num_samples: int = _f(64, "images in each sample / reconstruction grid")
    fid_every: int = _f(0, "steps between FID evaluations of prior samples (0 = off)")
    fid_samples: int = _f(1000, "prior samples per FID evaluation (the real set is every image)")
    # hardware
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    amp: bool = _f(
        True, "bf16 autocast on CUDA and on CPUs with bf16 instructions (AVX512-BF16, AMX)"
    )
    channels_last: bool = _f(True, "channels_last memory format (faster convolutions, CPU too)")
    # several ranks (torchrun / vaegan train --nproc N)
    sync_batchnorm: str = _f(
        "auto", "BatchNorm statistics over the global batch: auto (on with >1 rank), on, off"
    )
    lr_scaling: str = _f(
        "none",
        "learning rates times (batch_size / lr_reference_batch): none, linear or sqrt",
    )
    lr_reference_batch: int = _f(64, "the batch size the learning rates were tuned for")

    def __post_init__(self) -> None:
        choices = {
            "sync_batchnorm": ("auto", "on", "off"),
            "lr_scaling": ("none", "linear", "sqrt"),
            "gan_loss": ("bce", "hinge"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise VaeganError(
                    f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}"
                )
        parse_policy(self.diffaugment)
        if not 0.0 <= self.prior_mixup <= 1.0:
            raise VaeganError(f"prior_mixup must be in [0, 1], got {self.prior_mixup}")
        if self.mmd_weight < 0:
            raise VaeganError(f"mmd_weight must be >= 0, got {self.mmd_weight}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise VaeganError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.r1_gamma < 0 or self.r1_every < 1:
            raise VaeganError(
                f"r1_gamma must be >= 0 and r1_every >= 1, got {self.r1_gamma} and {self.r1_every}"
            )
        if self.r1_gamma and self.compile:
            raise VaeganError(
                "r1_gamma needs compile=false: torch.compile cannot differentiate the gradient "
                "the penalty is made of"
            )

    compile: bool = _f(False, "torch.compile the networks (CUDA)")


# The recipe of the CPU presets: reconstruction-led decoder (gamma 1), spectral-norm D
# with the hinge loss, D at least as fast as G (TTUR, Heusel et al. 2017), KL weight 0.5 and
# no DiffAugment: each scored better than the recipe without it, and together over two seeds
# (benchmarks/ablation.py; at these steps D does not overfit 1,300 images yet). At these
# budgets the GAN cannot yet make N(0, I) draws into the data, while draws from the prior
# that export fits to the training codes (vaegan/prior.py) decode to recognisable images.
_CPU_RECIPE: dict[str, Any] = dict(
    batch_size=64,
    eval_every=500,
    checkpoint_every=500,
    lr_enc=5e-4,
    lr_dec=5e-4,
    lr_dis=5e-4,
    gamma=1.0,
    pixel_weight=1.0,  # with spectral norm D's features are small: pixels carry colour
    gan_loss="hinge",
    kl_weight=0.5,
    diffaugment="",
)

PRESETS: dict[str, dict[str, Any]] = {
    # Networks that finish in under 10 minutes on 2 CPU cores on 32x32 images (make demo
    # prepares the emoji at 32 px: 4x the steps of 64 px in the same time). Width 32
    # at 1,500 steps scored better than width 16 at 2,500 for about the same CPU time; its
    # fitted-prior samples stop improving after 1,000 steps, its reconstructions near 2,000.
    "cpu-demo": dict(
        model=ModelConfig(width=32, latent_dim=32, d_norm="spectral"),
        steps=1500,
        **_CPU_RECIPE,
    ),
    # cpu-demo's recipe at the product's 64 px, for a user without a GPU: about half an hour on 2
    # cores with bf16. Width 32 with KL 0.5 and no DiffAugment reconstructs better than width 16
    # with KL 1 and DiffAugment at 3,000 steps. Past 2,000 steps the reconstructions keep
    # improving while fitted-prior samples do not, and by 4,800 they get worse: 3,600 is where
    # the first is bought without paying in the second.
    "cpu-quality": dict(
        model=ModelConfig(width=32, latent_dim=64, d_norm="spectral"),
        steps=3600,
        **_CPU_RECIPE,
    ),
    # The seed documents' settings: width 64, batch 64, latent 100, 80k steps; FID as it goes
    # (keeps checkpoints/best.pt).
    "gpu": dict(fid_every=5000),
    # Seconds-long run on synthetic data so CI exercises the real loop.
    "smoke": dict(
        model=ModelConfig(image_size=32, width=8, latent_dim=16),
        steps=20,
        batch_size=8,
        eval_every=10,
        checkpoint_every=10,
        log_every=5,
        num_samples=16,
    ),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise VaeganError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return TrainConfig(**PRESETS[name])


# image_size comes from the dataset (vaegan prepare --size), so it is not a --set field.
_MODEL_FIELDS = {f.name: f for f in fields(ModelConfig) if f.name != "image_size"}
_TRAIN_FIELDS = {f.name: f for f in fields(TrainConfig) if f.name != "model"}


def _coerce(name: str, raw: str, typ: Any) -> Any:
    typ = (
        typ
        if isinstance(typ, type)
        else {"int": int, "float": float, "bool": bool, "str": str}[typ]
    )
    try:
        return parse_bool(raw) if typ is bool else typ(raw)
    except (ValueError, ArgumentTypeError):
        raise VaeganError(f"--set {name}={raw}: expected a {typ.__name__}") from None


def apply_overrides(cfg: TrainConfig, pairs: list[str], *, allow_model: bool = True) -> TrainConfig:
    """Apply ``FIELD=VALUE`` strings; model fields and training fields share one namespace."""
    model_changes: dict[str, Any] = {}
    train_changes: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise VaeganError(f"--set expects FIELD=VALUE, got {pair!r}")
        if name in _MODEL_FIELDS:
            if not allow_model:
                raise VaeganError(f"--set {name}: the model's shape cannot change on --resume")
            model_changes[name] = _coerce(name, raw, _MODEL_FIELDS[name].type)
        elif name in _TRAIN_FIELDS:
            train_changes[name] = _coerce(name, raw, _TRAIN_FIELDS[name].type)
        else:
            raise VaeganError(
                f"--set {name}: unknown field; known fields: "
                + ", ".join([*_MODEL_FIELDS, *_TRAIN_FIELDS])
            )
    model = replace(cfg.model, **model_changes) if model_changes else cfg.model
    return replace(cfg, model=model, **train_changes)


def describe_fields() -> str:
    """Help text listing every --set field with its default (gpu preset) and meaning."""
    lines = []
    for f in [*_MODEL_FIELDS.values(), *_TRAIN_FIELDS.values()]:
        default = f.default if f.default is not dataclasses.MISSING else "?"
        lines.append(f"  {f.name:<18} {default!s:<10} {f.metadata.get('help', '')}")
    return "\n".join(lines)


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> TrainConfig:
    d = {**_TRAIN_LEGACY, **d}
    return TrainConfig(model=ModelConfig.from_dict(d.pop("model")), **d)
