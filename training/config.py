"""The one training configuration: typed dataclasses with commented defaults, presets,
and ``--set FIELD=VALUE`` overrides generated from the fields (unknown names are errors).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

from vaegan.errors import VaeganError


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ModelConfig:
    """What is needed to rebuild the networks; saved in every checkpoint."""

    image_size: int = _f(64, "side of the square RGB images (a power of two, 16..256)")
    latent_dim: int = _f(100, "size of the latent vector z")
    width: int = _f(64, "base channel count of all three networks (DCGAN's ngf/ndf)")
    feature_layer: int = _f(3, "discriminator block whose output measures reconstruction")

    def __post_init__(self) -> None:
        n = self.image_size
        if n < 16 or n > 256 or n & (n - 1):
            raise VaeganError(f"image_size must be a power of two in 16..256, got {n}")
        if self.latent_dim < 1 or self.width < 1:
            raise VaeganError("latent_dim and width must be positive")
        if not 1 <= self.feature_layer <= self.num_blocks:
            raise VaeganError(f"feature_layer must be in 1..{self.num_blocks}")

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
    llike_weight: float = _f(1.0, "weight of the learned-similarity (feature) reconstruction")
    gamma: float = _f(1e-2, "decoder's weight of reconstruction vs GAN loss (the paper's gamma)")
    pixel_weight: float = _f(0.0, "optional pixel MSE reconstruction weight (not in the paper)")
    # stabilisers
    real_label: float = _f(1.0, "target for real images in D's loss; 0.9 = one-sided smoothing")
    balance_margin: float = _f(
        0.0,
        "equilibrium balancing: skip D's step when its loss is below ln2-margin and "
        "the decoder's GAN term when above ln2+margin (0 = off)",
    )
    # bookkeeping
    seed: int = _f(0, "seeds weights, data order, crops and noise")
    log_every: int = _f(10, "steps between progress-bar and TensorBoard updates")
    eval_every: int = _f(500, "steps between validation metrics and sample grids")
    checkpoint_every: int = _f(1000, "steps between checkpoints")
    keep_checkpoints: int = _f(3, "step-numbered checkpoints kept besides last.pt")
    num_samples: int = _f(64, "images in each sample / reconstruction grid")
    # hardware
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    amp: bool = _f(True, "bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = _f(True, "channels_last memory format on CUDA")
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
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise VaeganError(
                    f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}"
                )

    compile: bool = _f(False, "torch.compile the networks (CUDA)")


PRESETS: dict[str, dict[str, Any]] = {
    # Narrow networks that finish a useful run in a few minutes on 2 CPU cores.
    "cpu-demo": dict(
        model=ModelConfig(width=16, latent_dim=64),
        steps=800,  # ~4 minutes at ~200 img/s on 2 cores
        batch_size=64,
        eval_every=200,
        checkpoint_every=400,
        lr_enc=5e-4,
        lr_dec=5e-4,
        lr_dis=2e-4,
        pixel_weight=1.0,  # a short run needs pixels to anchor colours early
        real_label=0.9,
        balance_margin=0.35,  # without it D wins outright within 100 steps (D loss ~0.01)
    ),
    # The seed documents' settings: width 64, batch 64, latent 100, 80k steps.
    "gpu": dict(),
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
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return typ(raw)
    except ValueError:
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
    d = dict(d)
    return TrainConfig(model=ModelConfig(**d.pop("model")), **d)
