"""``vaegan train``: the training driver. ``build`` makes (or restores) a run, ``loop``
steps it (one step: ``step.py``) with evaluation, grids, FID and checkpoints on their
schedules; the checkpoint's schema is ``checkpoint.py``'s.

Resume is exact: data order and crop positions are functions of (seed, step), and the
torch RNG, optimisers, BatchNorm statistics and the moving average travel in the
checkpoint. Evaluation, FID and sample grids draw from their own generators, so they never
shift the training stream.

Under torchrun the same loop runs data-parallel (``distributed.py``): ``batch_size`` is the
global batch, each rank takes its contiguous share of every step's indices, crops and noise
(all drawn for the whole batch from the shared seed), and only rank 0 writes. A run is the
same computation on any number of ranks, which is what makes checkpoints world-size free.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vaegan.errors import VaeganError
from vaegan.grid import make_grid, save_grid
from vaegan.training import checkpoint as ckpt
from vaegan.training import fid as fid_mod
from vaegan.training.config import TrainConfig, to_dict
from vaegan.training.data import Dataset, load_dataset
from vaegan.training.distributed import Dist, convert_sync_batchnorm, setup, teardown
from vaegan.training.metrics import hist_chi2, mse, psnr
from vaegan.training.model import VAEGAN, from_pixels, to_pixels
from vaegan.training.step import (
    EMA,
    Nets,
    Optimizers,
    autocast_for,
    lr_scale,
    r1_due,
    train_step,
    wrap_networks,
)


class Stopped(VaeganError):
    """SIGTERM/SIGINT ended the run early, after a checkpoint. Not a success: a Job that
    restarts the pod must resume, not consider the training done."""


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of step ``step``: epochs are seeded permutations, the remainder dropped."""
    per_epoch = n // batch_size
    epoch, j = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[j * batch_size : (j + 1) * batch_size]


@torch.no_grad()
def evaluate(
    model: VAEGAN,
    ds: Dataset,
    fixed_z: torch.Tensor,
    cfg: TrainConfig,
    device,
    decoder: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Validation metrics on the served path: eval-mode BatchNorm, mu (no noise), uint8,
    through ``decoder`` (the moving average when there is one) as export will."""
    model.eval()
    decode = decoder or model.decoder
    try:
        out: dict[str, Any] = {}
        samples = to_pixels(decode(fixed_z)).cpu().numpy()
        if len(ds.val):
            val = np.array(ds.val_images())  # a writable copy; the split is small
            recon = np.concatenate(
                [
                    to_pixels(
                        decode(model.encode(from_pixels(torch.from_numpy(chunk)).to(device))[0])
                    )
                    .cpu()
                    .numpy()
                    for chunk in np.array_split(val, max(1, math.ceil(len(val) / 256)))
                ]
            )
            val_mse = mse(recon, val)
            g = torch.Generator(device=device).manual_seed(cfg.seed + 2)
            n_prior = min(len(val), 512)
            prior = to_pixels(decode(model.sample_prior(n_prior, g))).cpu().numpy()
            out.update(
                val_mse=val_mse,
                val_psnr=psnr(val_mse),
                baseline_mse=mse(val, ds.train_mean[None]),
                hist_chi2=hist_chi2(val[:n_prior], prior),
            )
            out["val_mse_over_baseline"] = out["val_mse"] / out["baseline_mse"]
            k = min(len(val), cfg.num_samples // 2)
            pairs = np.stack([val[:k], recon[:k]], 1).reshape(-1, *val.shape[1:])
        else:
            out.update(val_mse=None, val_psnr=None, baseline_mse=None, hist_chi2=None)
            pairs = None
        return {"metrics": out, "samples": samples, "recon_pairs": pairs}
    finally:
        model.train()


def train(
    cfg: TrainConfig,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) a run; returns the last validation metrics. Under torchrun every
    rank calls this; rank 0 alone writes the run folder."""
    dist, device = setup(cfg.device)
    try:
        return _train(cfg, data_dir, run_dir, dist, device, resume=resume, progress=progress)
    finally:
        teardown()


@dataclass
class Run:
    """Everything the loop works on, built once (``build``) and restored on resume."""

    cfg: TrainConfig
    ds: Dataset
    dist: Dist
    device: torch.device
    model: VAEGAN
    nets: Nets
    opts: Optimizers
    ema: EMA | None
    fid: fid_mod.Tracker | None
    fixed_z: torch.Tensor
    step: int = 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def snapshot(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return ckpt.snapshot(
            cfg=self.cfg,
            ds=self.ds,
            step=self.step,
            model=self.model,
            ema_decoder=self.ema.net if self.ema is not None else None,
            opts=self.opts,
            fixed_z=self.fixed_z,
            metrics=metrics,
            best_fid=self.fid.best if self.fid is not None else None,
            cuda_device=self.device if self.cuda else None,
        )


def _train(
    cfg: TrainConfig,
    data_dir: str | Path,
    run_dir: str | Path,
    dist: Dist,
    device: torch.device,
    *,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    last_path = run_dir / "checkpoints" / ckpt.LAST
    state = None
    if resume:
        state = ckpt.load(last_path)
    elif last_path.exists():
        raise VaeganError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    run = build(cfg, data_dir, dist, device, state)
    return loop(run, run_dir, progress)


def build(
    cfg: TrainConfig, data_dir: str | Path, dist: Dist, device: torch.device, state: dict | None
) -> Run:
    """The networks, optimisers, moving average and FID tracker of a run, checked against
    its dataset, and restored from ``state`` when resuming."""
    ds = load_dataset(data_dir)
    # The images' size is a fact of the dataset, not a knob.
    cfg = replace(cfg, model=replace(cfg.model, image_size=ds.crop.size))
    if state is not None and ckpt.model_config(state) != cfg.model:
        raise VaeganError(
            f"dataset {data_dir} does not match the checkpoint's model {state['model_config']}"
        )
    if len(ds.train) < cfg.batch_size:
        raise VaeganError(
            f"{len(ds.train)} training images is fewer than batch_size {cfg.batch_size}; "
            "add images or lower it with --set batch_size=N"
        )
    if cfg.batch_size % dist.world_size:
        raise VaeganError(
            f"batch_size {cfg.batch_size} is the global batch and must divide evenly over "
            f"{dist.world_size} ranks; use a multiple of {dist.world_size}"
        )
    cuda = device.type == "cuda"
    torch.manual_seed(cfg.seed)  # the same seed on every rank: same weights, same noise
    model = VAEGAN(cfg.model).to(device)
    sync_bn = {"auto": dist.enabled, "on": True, "off": False}[cfg.sync_batchnorm]
    if sync_bn and dist.enabled:  # global-batch statistics, as on one rank
        model = convert_sync_batchnorm(model, device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    betas, lr = (cfg.beta1, cfg.beta2), lr_scale(cfg)
    opts = Optimizers(
        torch.optim.Adam(model.encoder.parameters(), lr=cfg.lr_enc * lr, betas=betas),
        torch.optim.Adam(model.decoder.parameters(), lr=cfg.lr_dec * lr, betas=betas),
        torch.optim.Adam(model.discriminator.parameters(), lr=cfg.lr_dis * lr, betas=betas),
    )
    fixed_z = torch.randn(
        cfg.num_samples, cfg.model.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 1)
    )
    step, restored = 0, None
    if state is not None:
        restored = ckpt.restore(state, model, opts, cuda)
        fixed_z, step = restored.fixed_z, restored.step
    ema = EMA(model.decoder, cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None and restored is not None and restored.decoder_ema is not None:
        ema.net.load_state_dict(restored.decoder_ema)
    fid = None
    if cfg.fid_every and dist.is_main:
        fid = fid_mod.Tracker(cfg.fid_samples, cfg.seed + 3, data_dir, device)
        fid.best = restored.best_fid if restored is not None else None
    nets = wrap_networks(model, dist, device, cfg.compile, broadcast_buffers=not sync_bn)
    return Run(cfg, ds, dist, device, model, nets, opts, ema, fid, fixed_z.to(device), step)


def loop(run: Run, run_dir: Path, progress: bool) -> dict[str, Any]:
    """Steps until ``cfg.steps``: evaluation, grids, FID and checkpoints on their schedules
    (rank 0 writes), a clean stop with a checkpoint on SIGTERM/SIGINT."""
    cfg, ds, dist, device = run.cfg, run.ds, run.dist, run.device
    main = dist.is_main
    ckpt_dir, sample_dir = run_dir / "checkpoints", run_dir / "samples"
    last_path = ckpt_dir / ckpt.LAST
    autocast = autocast_for(device, cfg.amp)
    writer = _summary_writer(run_dir / "tb") if main else None
    metrics_path = run_dir / "metrics.jsonl"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    last_metrics: dict[str, Any] = {}

    def save(metrics: dict[str, Any]) -> None:
        payload = run.snapshot(metrics)
        ckpt.save_atomic(payload, ckpt_dir / ckpt.step_name(run.step))
        ckpt.save_atomic(payload, last_path)
        ckpt.prune(ckpt_dir, cfg.keep_checkpoints)
        if run.fid is not None and run.fid.improved_at == run.step:
            ckpt.save_atomic(payload, ckpt_dir / ckpt.BEST)

    def run_eval(step: int) -> dict[str, Any]:
        decoder = run.ema.net if run.ema is not None else None
        ev = evaluate(run.model, ds, run.fixed_z, cfg, device, decoder)
        m = {"step": step, **ev["metrics"]}
        if run.fid is not None and (step % cfg.fid_every == 0 or step == cfg.steps):
            m.update(run.fid.measure(decoder or run.model.decoder, step, cfg.model.latent_dim))
        with open(metrics_path, "a") as f:
            f.write(json.dumps(m) + "\n")
        save_grid(ev["samples"], sample_dir / f"step_{step:07d}_samples.png")
        if ev["recon_pairs"] is not None:  # columns alternate original | reconstruction
            save_grid(ev["recon_pairs"], sample_dir / f"step_{step:07d}_recon.png", nrow=8)
        if writer:
            for k, v in m.items():
                if k != "step" and v is not None:
                    writer.add_scalar(f"val/{k}", v, step)
            writer.add_image("samples", make_grid(ev["samples"]), step, dataformats="HWC")
        return m

    bar = tqdm(
        total=cfg.steps,
        initial=run.step,
        desc="train" if not dist.enabled else f"train x{dist.world_size} ranks",
        unit="step",
        disable=not (progress and main),
        dynamic_ncols=True,
    )
    t_window, n_window = time.perf_counter(), 0
    last_r1 = 0.0  # R1 is lazy: its figure is logged as of the last step that computed it
    share = dist.shard(cfg.batch_size)
    stop = _StopRequest()
    try:
        while run.step < cfg.steps:
            step = run.step
            if dist.any(stop.requested):  # every rank leaves at the same step
                if main:
                    save(last_metrics)
                # Leave together: a rank that tore its process group down while rank 0 was
                # still writing the checkpoint was seen to abort at exit (gloo).
                dist.barrier()
                raise Stopped(
                    f"stopped by a signal at step {step}; {last_path} holds it, "
                    "continue with --resume"
                )
            idx = batch_indices(len(ds.train), cfg.batch_size, cfg.seed, step)[share]
            x_np = ds.train_batch(idx, [cfg.seed, step, 1], first=share.start, mirror=cfg.mirror)
            x = from_pixels(torch.from_numpy(x_np)).to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)

            losses = train_step(run.nets, run.opts, x, cfg, autocast, step, last_path, dist)
            if r1_due(cfg, step):
                last_r1 = float(losses.r1)
            if run.ema is not None:
                run.ema.update(run.model.decoder, step)

            step = run.step = step + 1
            n_window += x.shape[0] * dist.world_size
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                vals = {**losses.as_floats(), "r1": last_r1}
                ips = n_window / max(time.perf_counter() - t_window, 1e-9)
                bar.set_postfix(
                    kl=f"{vals['kl']:.1f}",
                    llike=f"{vals['llike']:.1f}",
                    d=f"{vals['gan_d']:.2f}",
                    g=f"{vals['gan_g']:.2f}",
                    img_s=f"{ips:.0f}",
                )
                if writer:
                    for k, v in vals.items():
                        writer.add_scalar(f"train/{k}", v, step)
                    writer.add_scalar("train/images_per_second", ips, step)
                t_window, n_window = time.perf_counter(), 0
            evaluated = (
                step % cfg.eval_every == 0
                or step == cfg.steps
                or bool(cfg.fid_every and step % cfg.fid_every == 0)
            )
            if evaluated and main:
                last_metrics = run_eval(step)
                bar.write(_format_metrics(last_metrics))
            best_now = run.fid is not None and evaluated and run.fid.improved_at == step
            if (step % cfg.checkpoint_every == 0 or step == cfg.steps or best_now) and main:
                save(last_metrics)
            if evaluated:  # the pause for eval and saving is not training throughput
                dist.barrier()
                t_window, n_window = time.perf_counter(), 0
    finally:
        stop.restore()
        bar.close()
        if writer:
            writer.close()
    return last_metrics


class _StopRequest:
    """SIGTERM/SIGINT end the run at the next step boundary with a checkpoint, instead of
    killing it mid-write (torchrun forwards both to every rank)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: the user means it
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _format_metrics(m: dict[str, Any]) -> str:
    fid = (
        f"  FID samples {m['fid_samples']:.1f} (n={m['fid_n']} vs {m['fid_real_n']} real)"
        if "fid_samples" in m
        else ""
    )
    if m.get("val_mse") is None:
        return f"step {m['step']}: no validation split{fid}"
    return (
        f"step {m['step']}: val_mse {m['val_mse']:.4f} (mean-image baseline {m['baseline_mse']:.4f},"
        f" ratio {m['val_mse_over_baseline']:.2f})  psnr {m['val_psnr']:.2f} dB  hist_chi2 {m['hist_chi2']:.4f}{fid}"
    )


def _summary_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is in the training extra; carry on without it
        return None
    return SummaryWriter(str(path))


def config_from_checkpoint(path: str | Path) -> TrainConfig:
    return ckpt.train_config(path)
