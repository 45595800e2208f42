"""The training checkpoint: its schema, and the only code that reads or writes its keys.

A checkpoint is a ``torch.save``d dict (loaded with ``weights_only``) carrying everything
needed to rebuild, resume and export a model:

    format_version  FORMAT_VERSION
    model_config    ModelConfig as a dict (rebuilds the networks)
    train_config    TrainConfig as a dict (``--resume`` continues with it)
    crop, dataset   the dataset's crop policy and its name, source and counts
    step            steps done
    encoder, decoder, discriminator   the networks' state dicts
    decoder_ema     the moving-average decoder (None when the run keeps none): what export serves
    opt_enc, opt_dec, opt_dis         the optimisers' state dicts
    rng             {"torch": CPU RNG state, "cuda": [one device's state] or []}
    fixed_z         the latent vectors of the sample grids
    metrics         the last validation metrics
    best_fid        the lowest FID seen (None when the run measures none)
    slim            True in a copy made by ``slim`` (absent otherwise)

``snapshot`` writes it from a run, ``restore`` puts a run back, ``load_model`` rebuilds the
model export and evaluation use, ``Facts`` is what they report about it, and ``slim`` keeps
only what ``load_model`` reads (D, the optimisers and the RNG dropped, weights in fp16): a
checkpoint to carry elsewhere for export or scoring, not to resume from.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vaegan.errors import VaeganError
from vaegan.training.config import ModelConfig, TrainConfig, from_dict, to_dict

FORMAT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"  # the step with the lowest FID so far, when the run measures it


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``:
    a crash mid-write leaves the previous file intact, never a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise VaeganError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, not a torch file at all
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        raise VaeganError(
            f"{path} is not a readable vaegan checkpoint ({type(e).__name__}: {first_line})"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise VaeganError(f"{path} is not a vaegan checkpoint (format {FORMAT_VERSION} expected)")
    return state


def step_name(step: int) -> str:
    return f"step_{step:07d}.pt"


def prune(folder: Path, keep: int) -> None:
    """Keep the ``keep`` newest step-numbered checkpoints (``last.pt`` is never pruned)."""
    steps = sorted(folder.glob("step_*.pt"))
    for old in steps[: max(0, len(steps) - keep)]:
        old.unlink()


@dataclass(frozen=True)
class Facts:
    """What a checkpoint says about itself, for export's facts and evaluation's source."""

    step: int
    model_config: dict[str, Any]
    crop: dict[str, Any]
    dataset: dict[str, Any]
    val_mse: float | None

    @classmethod
    def of(cls, state: dict[str, Any]) -> Facts:
        return cls(
            step=int(state["step"]),
            model_config=state["model_config"],
            crop=state["crop"],
            dataset=state["dataset"],
            val_mse=(state.get("metrics") or {}).get("val_mse"),
        )


def snapshot(
    *,
    cfg: TrainConfig,
    ds,
    step: int,
    model,
    ema_decoder: torch.nn.Module | None,
    opts,
    fixed_z: torch.Tensor,
    metrics: dict[str, Any],
    best_fid: float | None,
    cuda_device: torch.device | None,
) -> dict[str, Any]:
    """A run's state at ``step``, as ``save_atomic`` writes it."""
    return {
        "format_version": FORMAT_VERSION,
        "model_config": to_dict(cfg)["model"],
        "train_config": to_dict(cfg),
        "crop": ds.crop.to_dict(),
        "dataset": {"name": ds.name, "source": ds.manifest.get("source"), **ds.manifest["counts"]},
        "step": step,
        "encoder": model.encoder.state_dict(),
        "decoder": model.decoder.state_dict(),
        "decoder_ema": ema_decoder.state_dict() if ema_decoder is not None else None,
        "discriminator": model.discriminator.state_dict(),
        "opt_enc": opts.encoder.state_dict(),
        "opt_dec": opts.decoder.state_dict(),
        "opt_dis": opts.discriminator.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state(cuda_device)] if cuda_device is not None else [],
        },
        "fixed_z": fixed_z.cpu(),
        "metrics": metrics,
        "best_fid": best_fid,
    }


@dataclass(frozen=True)
class Restored:
    fixed_z: torch.Tensor
    step: int
    best_fid: float | None
    decoder_ema: dict[str, Any] | None  # the moving average's state dict, when saved


def slim(state: dict[str, Any], dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """What ``load_model`` reads of ``state``: the facts, the encoder and the served decoder,
    their floating-point tensors in ``dtype`` (counters stay integers). Without the
    discriminator, the raw decoder and the optimisers' moments it is small enough to bring
    back from a short lease of a GPU machine and score here (benchmarks/gpu_check.py)."""

    def cast(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}

    served = state.get("decoder_ema") or state["decoder"]
    keep = ("format_version", "model_config", "train_config", "crop", "dataset", "step", "metrics")
    return {
        **{k: state[k] for k in keep},
        "encoder": cast(state["encoder"]),
        "decoder": None,
        "decoder_ema": cast(served),
        "slim": True,
    }


def restore(state: dict[str, Any], model, opts, cuda: bool) -> Restored:
    """Put the networks, optimisers and RNG back as saved; the rest comes back as values."""
    if state.get("slim"):
        raise VaeganError(
            "this checkpoint holds only what export and evaluation read (no discriminator, "
            "optimisers or RNG state); resume from the full checkpoint it was made from"
        )
    model.encoder.load_state_dict(state["encoder"])
    model.decoder.load_state_dict(state["decoder"])
    model.discriminator.load_state_dict(state["discriminator"])
    opts.encoder.load_state_dict(state["opt_enc"])
    opts.decoder.load_state_dict(state["opt_dec"])
    opts.discriminator.load_state_dict(state["opt_dis"])
    torch.set_rng_state(state["rng"]["torch"])
    cuda_rng = state["rng"].get("cuda")
    if cuda and cuda_rng is not None and len(cuda_rng):
        # One state: every rank draws the same global noise on its own device.
        torch.cuda.set_rng_state(cuda_rng[0] if isinstance(cuda_rng, list) else cuda_rng)
    return Restored(
        state["fixed_z"], int(state["step"]), state.get("best_fid"), state.get("decoder_ema")
    )


def model_config(state: dict[str, Any]) -> ModelConfig:
    return ModelConfig.from_dict(state["model_config"])


def train_config(path: str | Path) -> TrainConfig:
    """The configuration a run was trained with (``--resume`` continues with it)."""
    return from_dict(load(path)["train_config"])


def load_model(path: str | Path):
    """The model as export serves it, in eval mode: the encoder and the moving-average
    decoder (what the run's grids and FID showed; the raw decoder when there is none)."""
    from vaegan.training.model import VAEGAN

    state = load(path)
    model = VAEGAN(model_config(state))
    model.encoder.load_state_dict(state["encoder"])
    ema = state.get("decoder_ema")
    model.decoder.load_state_dict(ema if ema is not None else state["decoder"])
    return model.eval(), Facts.of(state)
