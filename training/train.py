"""``vaegan train``: the VAE-GAN training loop (Larsen et al. 2016, Algorithm 1).

Per step: a D phase on detached fakes, then an encoder/decoder phase against the updated
D. The encoder minimises L_prior + L_rec, the decoder gamma*L_rec + L_GAN (L_rec: the
learned similarity L_llike plus the optional pixel term), D only L_GAN; each optimiser
steps only its own network, and the GAN gradient never reaches the encoder
(``backward(inputs=...)`` restricts each loss to its network's parameters). Every image D
sees goes through the same DiffAugment transforms (``augment.py``), and a moving average
of the decoder (``EMA``) is what grids, FID and export use.

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

import copy
import json
import math
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from vaegan.errors import VaeganError
from vaegan.grid import make_grid, save_grid
from vaegan.training import checkpoint as ckpt
from vaegan.training import losses as L
from vaegan.training.augment import diff_augment, parse_policy
from vaegan.training.config import ModelConfig, TrainConfig, from_dict, to_dict
from vaegan.training.data import Dataset, load_dataset
from vaegan.training.distributed import SINGLE, Dist, convert_sync_batchnorm, setup, teardown
from vaegan.training.metrics import hist_chi2, mse, psnr
from vaegan.training.model import VAEGAN, from_pixels, to_pixels

LN2 = math.log(2.0)


class Divergence(VaeganError):
    pass


class Stopped(VaeganError):
    """SIGTERM/SIGINT ended the run early, after a checkpoint. Not a success: a Job that
    restarts the pod must resume, not consider the training done."""


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of step ``step``: epochs are seeded permutations, the remainder dropped."""
    per_epoch = n // batch_size
    epoch, j = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[j * batch_size : (j + 1) * batch_size]


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
    E: torch.nn.Module  # possibly DDP and torch.compile wrappers of model.encoder, ...
    G: torch.nn.Module
    D: torch.nn.Module
    # D without DDP, for the encoder/decoder phase: D's parameters get no gradient there,
    # and a DDP forward would wait for a gradient reduction that never comes.
    D_local: torch.nn.Module | None = None


class Optimizers(NamedTuple):
    enc: torch.optim.Optimizer
    dec: torch.optim.Optimizer
    dis: torch.optim.Optimizer


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
    D_local = nets.D if nets.D_local is None else nets.D_local
    # Noise and augmentations are drawn for the global batch and sliced, so N ranks see
    # exactly what one rank would (on one rank: randn_like(mu), then the prior's randn).
    n, share = x.shape[0] * dist.world_size, dist.shard(x.shape[0] * dist.world_size)
    policy = parse_policy(cfg.diffaugment)

    def aug(t: torch.Tensor) -> torch.Tensor:
        return diff_augment(t, policy, n, share) if policy else t

    with autocast:  # encode, reconstruct, and sample the prior
        mu, logvar = nets.E(x)

        def noise(dtype: torch.dtype) -> torch.Tensor:
            return torch.randn(n, mu.shape[1], device=mu.device, dtype=dtype)[share]

        x_rec = nets.G(mu + noise(mu.dtype) * torch.exp(0.5 * logvar))
        x_p = nets.G(noise(torch.float32))

    # --- D phase: real vs (reconstructions, prior samples), fakes detached, all augmented ---
    with autocast:
        real_logit, _ = nets.D(aug(x))
        fake_logits = [nets.D(aug(x_rec.detach()))[0].float(), nets.D(aug(x_p.detach()))[0].float()]
        if cfg.gan_loss == "hinge":
            loss_d = L.hinge_d(real_logit.float(), fake_logits)
        else:
            loss_d = L.gan_d(real_logit.float(), fake_logits, cfg.real_label)
    _check_finite(step, {"gan_d": loss_d}, last_path, dist)
    train_dis, train_dec_gan = balance(real_logit.float(), fake_logits, cfg.balance_margin, dist)
    # Under DDP the backward runs even when D pauses: its forward already armed the gradient
    # reduction, which every rank must complete.
    if train_dis or dist.enabled:
        opts.dis.zero_grad(set_to_none=True)
        loss_d.backward()
    if train_dis:
        opts.dis.step()

    # --- encoder/decoder phase against the updated D ---
    with autocast:
        # The learned similarity compares x and its reconstruction under the same transform:
        # the generator state is rewound so both draw identical augmentation parameters.
        with torch.no_grad(), torch.random.fork_rng(devices=_rng_devices(x)):
            _, f_real = D_local(aug(x))
        rec_logit, f_rec = D_local(aug(x_rec))
        p_logit, _ = D_local(aug(x_p))
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
    losses = L.Losses(kl, llike, pixel, gan_g, loss_d, loss_e, loss_g)
    _check_finite(step, losses._asdict(), last_path, dist)
    opts.enc.zero_grad(set_to_none=True)
    opts.dec.zero_grad(set_to_none=True)
    # Each loss reaches only its own network: L_GAN never flows into the encoder.
    loss_e.backward(inputs=list(model.encoder.parameters()), retain_graph=True)
    loss_g.backward(inputs=list(model.decoder.parameters()))
    opts.enc.step()
    opts.dec.step()
    return losses


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
    ds = load_dataset(data_dir)
    run_dir = Path(run_dir)
    ckpt_dir, sample_dir = run_dir / "checkpoints", run_dir / "samples"
    last_path = ckpt_dir / ckpt.LAST
    state = None
    if resume:
        state = ckpt.load(last_path)
    elif last_path.exists():
        raise VaeganError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    # The images' size is a fact of the dataset, not a knob.
    cfg = replace(cfg, model=replace(cfg.model, image_size=ds.crop.size))
    if state is not None and ModelConfig.from_dict(state["model_config"]) != cfg.model:
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
    main = dist.is_main

    torch.manual_seed(cfg.seed)  # the same seed on every rank: same weights, same noise
    model = VAEGAN(cfg.model).to(device)
    sync_bn = {"auto": dist.enabled, "on": True, "off": False}[cfg.sync_batchnorm]
    if sync_bn and dist.enabled:  # global-batch statistics, as on one rank
        model = convert_sync_batchnorm(model, device)
    E, G, D = model.encoder, model.decoder, model.discriminator
    if cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    betas = (cfg.beta1, cfg.beta2)
    lr = lr_scale(cfg)
    opt_e = torch.optim.Adam(E.parameters(), lr=cfg.lr_enc * lr, betas=betas)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_dec * lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_dis * lr, betas=betas)
    fixed_z = torch.randn(
        cfg.num_samples, cfg.model.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 1)
    )
    step = 0
    if state is not None:
        E.load_state_dict(state["encoder"])
        G.load_state_dict(state["decoder"])
        D.load_state_dict(state["discriminator"])
        opt_e.load_state_dict(state["opt_enc"])
        opt_g.load_state_dict(state["opt_dec"])
        opt_d.load_state_dict(state["opt_dis"])
        fixed_z, step = state["fixed_z"], int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        cuda_rng = state["rng"].get("cuda")
        if cuda and cuda_rng is not None and len(cuda_rng):
            # One state: every rank draws the same global noise on its own device.
            torch.cuda.set_rng_state(cuda_rng[0] if isinstance(cuda_rng, list) else cuda_rng)
    fixed_z = fixed_z.to(device)
    ema = EMA(G, cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None and state is not None and state.get("decoder_ema") is not None:
        ema.net.load_state_dict(state["decoder_ema"])
    fid = _FidTracker(cfg, data_dir, device) if cfg.fid_every and main else None
    if fid is not None and state is not None:
        fid.best = state.get("best_fid")
    nets = wrap_networks(model, dist, device, cfg.compile, broadcast_buffers=not sync_bn)
    opts = Optimizers(opt_e, opt_g, opt_d)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.amp else nullcontext()

    writer = _summary_writer(run_dir / "tb") if main else None
    metrics_path = run_dir / "metrics.jsonl"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    last_metrics: dict[str, Any] = {}

    def save(step: int, metrics: dict[str, Any]) -> None:
        cpu_rng = {
            "torch": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state(device)] if cuda else [],
        }
        payload = {
            "format_version": ckpt.FORMAT_VERSION,
            "model_config": to_dict(cfg)["model"],
            "train_config": to_dict(cfg),
            "crop": ds.crop.to_dict(),
            "dataset": {
                "name": ds.name,
                "source": ds.manifest.get("source"),
                **ds.manifest["counts"],
            },
            "step": step,
            "encoder": E.state_dict(),
            "decoder": G.state_dict(),
            "decoder_ema": ema.net.state_dict() if ema is not None else None,
            "discriminator": D.state_dict(),
            "opt_enc": opt_e.state_dict(),
            "opt_dec": opt_g.state_dict(),
            "opt_dis": opt_d.state_dict(),
            "rng": cpu_rng,
            "fixed_z": fixed_z.cpu(),
            "metrics": metrics,
            "best_fid": fid.best if fid is not None else None,
        }
        ckpt.save_atomic(payload, ckpt_dir / ckpt.step_name(step))
        ckpt.save_atomic(payload, last_path)
        ckpt.prune(ckpt_dir, cfg.keep_checkpoints)
        if fid is not None and fid.improved_at == step:
            ckpt.save_atomic(payload, ckpt_dir / ckpt.BEST)

    def run_eval(step: int) -> dict[str, Any]:
        decoder = ema.net if ema is not None else None
        ev = evaluate(model, ds, fixed_z, cfg, device, decoder)
        m = {"step": step, **ev["metrics"]}
        if fid is not None and (step % cfg.fid_every == 0 or step == cfg.steps):
            m.update(fid.measure(decoder or model.decoder, step, cfg.model.latent_dim))
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
        initial=step,
        desc="train" if not dist.enabled else f"train x{dist.world_size} ranks",
        unit="step",
        disable=not (progress and main),
        dynamic_ncols=True,
    )
    t_window, n_window = time.perf_counter(), 0
    share = dist.shard(cfg.batch_size)
    stop = _StopRequest()
    try:
        while step < cfg.steps:
            if dist.any(stop.requested):  # every rank leaves at the same step
                if main:
                    save(step, last_metrics)
                raise Stopped(
                    f"stopped by a signal at step {step}; {last_path} holds it, "
                    "continue with --resume"
                )
            idx = batch_indices(len(ds.train), cfg.batch_size, cfg.seed, step)[share]
            x_np = ds.train_batch(idx, [cfg.seed, step, 1], first=share.start)
            x = from_pixels(torch.from_numpy(x_np)).to(device, non_blocking=True)
            if cuda and cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)

            losses = train_step(nets, opts, x, cfg, autocast, step, last_path, dist)
            if ema is not None:
                ema.update(G, step)

            step += 1
            n_window += x.shape[0] * dist.world_size
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                vals = losses.as_floats()
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
            best_now = fid is not None and evaluated and fid.improved_at == step
            if (step % cfg.checkpoint_every == 0 or step == cfg.steps or best_now) and main:
                save(step, last_metrics)
            if evaluated:  # the pause for eval and saving is not training throughput
                dist.barrier()
                t_window, n_window = time.perf_counter(), 0
    finally:
        stop.restore()
        bar.close()
        if writer:
            writer.close()
    return last_metrics


class _FidTracker:
    """FID of ``fid_samples`` prior samples from the decoder the run would export, against
    every prepared image; remembers the best so the loop can keep ``best.pt``."""

    def __init__(self, cfg: TrainConfig, data_dir: str | Path, device: torch.device):
        from vaegan.training import fid

        self.fid, self.n, self.device = fid, cfg.fid_samples, device
        self.seed = cfg.seed + 3
        # Loaded now, so a missing network fails the run at once, not hours in.
        self.inception = fid.InceptionFeatures(device=device)
        self.real = fid.real_set(data_dir, self.inception, progress=False)
        self.best: float | None = None
        self.improved_at: int | None = None

    @torch.no_grad()
    def measure(self, decoder: torch.nn.Module, step: int, latent_dim: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed)  # the same z at every evaluation
        was_training = decoder.training
        decoder.eval()
        try:
            images = np.concatenate(
                [
                    to_pixels(decoder(torch.randn(k, latent_dim, generator=g).to(self.device)))
                    .cpu()
                    .numpy()
                    for k in _chunks(self.n, 250)
                ]
            )
        finally:
            decoder.train(was_training)
        q = self.fid.score(self.real, self.inception(images))
        if self.best is None or q.fid < self.best:
            self.best, self.improved_at = q.fid, step
        return {
            "fid_samples": q.fid,
            "precision_samples": q.precision,
            "recall_samples": q.recall,
            "fid_n": q.n,
            "fid_real_n": len(self.real.features),
        }


def _chunks(n: int, size: int) -> list[int]:
    return [min(size, n - i) for i in range(0, n, size)]


def lr_scale(cfg: TrainConfig) -> float:
    """The explicit learning-rate rule for batch sizes other than ``lr_reference_batch``."""
    ratio = cfg.batch_size / cfg.lr_reference_batch
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.lr_scaling]


def wrap_networks(
    model: VAEGAN, dist: Dist, device: torch.device, compile: bool, broadcast_buffers: bool
) -> Nets:
    """The networks as the step calls them: DDP around each (gradients averaged over ranks
    during backward), torch.compile around that when asked."""
    E, G, D = model.encoder, model.decoder, model.discriminator
    if not dist.enabled:
        E, G, D = (torch.compile(m) for m in (E, G, D)) if compile else (E, G, D)
        return Nets(model, E, G, D)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    wrapped = [DDP(m, device_ids=ids, forward_sync_buffers=broadcast_buffers) for m in (E, G, D)]
    if compile:
        wrapped = [torch.compile(m) for m in wrapped]
        D = torch.compile(D)
    return Nets(model, *wrapped, D_local=D)


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
    return from_dict(ckpt.load(path)["train_config"])
