"""Training throughput (images/s) of the presets on this machine, in one run: the real
``train_step`` (E + G + D; channels_last, and bf16 autocast where it pays: CUDA, or a CPU
with bf16 instructions; the preset's ``amp`` and ``channels_last`` decide) on random batches,
after warm-up.

    python -m benchmarks.train_throughput [--presets cpu-demo gpu] [--steps 10] [--out FILE]
    python -m benchmarks.train_throughput --presets cpu-demo --ranks 1 2
    python -m benchmarks.train_throughput --presets cpu-quality --fp32   # what bf16 buys

With ``--ranks``, each count above 1 runs under torchrun (DDP, gloo on CPU, NCCL on GPUs,
SyncBatchNorm) with the preset's batch as the global batch; img/s counts all ranks' images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import torch

from vaegan.training.config import TrainConfig, preset
from vaegan.training.distributed import SINGLE, Dist, convert_sync_batchnorm, setup, teardown
from vaegan.training.model import VAEGAN
from vaegan.training.step import (
    Optimizers,
    autocast_for,
    bf16_pays,
    train_step,
    wrap_networks,
)


def measure(
    name: str,
    steps: int,
    device: str,
    compile_: bool = False,
    dist: Dist = SINGLE,
    fp32: bool = False,
) -> dict:
    cfg = _config(name, fp32)
    torch.manual_seed(0)
    model = VAEGAN(cfg.model).to(device)
    if dist.enabled:
        model = convert_sync_batchnorm(model, torch.device(device))
    cuda = device.startswith("cuda")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    nets = wrap_networks(model, dist, torch.device(device), compile_, broadcast_buffers=False)
    opts = Optimizers(
        *(
            torch.optim.Adam(m.parameters(), lr=1e-4, betas=(0.5, 0.999))
            for m in (model.encoder, model.decoder, model.discriminator)
        )
    )
    autocast = autocast_for(torch.device(device), cfg.amp)
    s = cfg.model.image_size
    x = torch.rand(cfg.batch_size // dist.world_size, 3, s, s, device=device) * 2 - 1
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        train_step(nets, opts, x, cfg, autocast, dist=dist)
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    t = time.perf_counter()
    for _ in range(steps):
        train_step(nets, opts, x, cfg, autocast, dist=dist)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    row = _row(name, cfg, device, compile_, steps, dist.world_size)
    return {**row, "images_per_second": steps * cfg.batch_size / seconds}


def _config(name: str, fp32: bool) -> TrainConfig:
    cfg = preset(name)
    if fp32:  # the baseline of the preset's mixed precision and memory format
        cfg = replace(cfg, amp=False, channels_last=False)
    return cfg


def _row(name: str, cfg: TrainConfig, device: str, compile_: bool, steps: int, ranks: int) -> dict:
    return {
        "preset": name,
        "device": device,
        "compile": compile_,
        "width": cfg.model.width,
        "bf16": cfg.amp and bf16_pays(torch.device(device)),
        "channels_last": cfg.channels_last,
        "batch": cfg.batch_size,
        "steps": steps,
        "ranks": ranks,
        "threads_per_rank": torch.get_num_threads(),
    }


def compiled(name: str, steps: int, device: str, fp32: bool) -> dict:
    """``measure`` under torch.compile; a compiler failure is a row that says so, since what
    torch.compile accepts varies by version and device, and the other rows still count."""
    try:
        return measure(name, steps, device, compile_=True, fp32=fp32)
    except Exception as e:  # any compiler failure is the finding
        first = str(e).splitlines()[0] if str(e) else ""
        row = _row(name, _config(name, fp32), device, True, steps, 1)
        return {**row, "error": f"{type(e).__name__}: {first}"[:300]}


def measure_ranks(n: int, a: argparse.Namespace) -> list[dict]:
    """The presets on ``n`` ranks of this machine, under torchrun."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc-per-node={n}", "-m", "benchmarks.train_throughput", "--worker"]
        cmd += [
            "--presets",
            *a.presets,
            "--steps",
            str(a.steps),
            "--device",
            a.device,
            "--out",
            out,
        ]
        subprocess.run(cmd, check=True)
        with open(out) as f:
            return json.load(f)["rows"]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--presets", nargs="+", default=["cpu-demo", "gpu"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    p.add_argument(
        "--fp32",
        action="store_true",
        help="also measure in fp32 with contiguous tensors (what bf16 and channels_last buy)",
    )
    p.add_argument("--ranks", type=int, nargs="+", default=[1], help="rank counts to compare")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one torchrun rank
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.worker:
        dist, device = setup(a.device)
        try:
            rows = [measure(n, a.steps, str(device), dist=dist) for n in a.presets]
        finally:
            teardown()
        if not dist.is_main:
            return
        if a.out:  # the parent prints; this rank only hands its rows over
            with open(a.out, "w") as f:
                json.dump({"rows": rows}, f)
            return
    else:
        rows = []
        for n in a.ranks:
            rows += (
                [measure(p, a.steps, a.device) for p in a.presets]
                if n == 1
                else measure_ranks(n, a)
            )
        for fp32 in (False, True) if a.fp32 else (False,):
            if fp32:
                rows += [measure(n, a.steps, a.device, fp32=True) for n in a.presets]
            if a.compile:
                rows += [compiled(n, a.steps, a.device, fp32) for n in a.presets]
    for r in rows:
        print(
            f"{r['preset']:<10} {r['device']:<6} compile={r['compile']!s:<5} "
            f"bf16={r['bf16']!s:<5} channels_last={r['channels_last']!s:<5} "
            f"width {r['width']:>3} batch {r['batch']} "
            f"ranks {r['ranks']} x {r['threads_per_rank']} threads: "
            + (f"failed: {r['error']}" if "error" in r else f"{r['images_per_second']:.1f} img/s")
        )
    if a.out:
        with open(a.out, "w") as f:
            json.dump(
                {
                    "benchmark": "train_throughput",
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "machine": platform.processor() or platform.machine(),
                    "rows": rows,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
