"""Training throughput (images/s) of the presets on this machine, in one run: the real
``train_step`` (E + G + D, fp32 on CPU; bf16 autocast and channels_last on CUDA) on
random batches, after warm-up.

    python -m benchmarks.train_throughput [--presets cpu-demo gpu] [--steps 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import nullcontext

import torch

from vaegan.training.config import preset
from vaegan.training.model import VAEGAN
from vaegan.training.train import Nets, Optimizers, train_step


def measure(name: str, steps: int, device: str, compile_: bool = False) -> dict:
    cfg = preset(name)
    torch.manual_seed(0)
    model = VAEGAN(cfg.model).to(device)
    cuda = device.startswith("cuda")
    if cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    nets = Nets(
        model,
        *(
            (torch.compile(m) for m in (model.encoder, model.decoder, model.discriminator))
            if compile_
            else (model.encoder, model.decoder, model.discriminator)
        ),
    )
    opts = Optimizers(
        *(
            torch.optim.Adam(m.parameters(), lr=1e-4, betas=(0.5, 0.999))
            for m in (model.encoder, model.decoder, model.discriminator)
        )
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.amp else nullcontext()
    s = cfg.model.image_size
    x = torch.rand(cfg.batch_size, 3, s, s, device=device) * 2 - 1
    for _ in range(3):
        train_step(nets, opts, x, cfg, autocast)
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        train_step(nets, opts, x, cfg, autocast)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    return {
        "preset": name,
        "device": device,
        "compile": compile_,
        "width": cfg.model.width,
        "batch": cfg.batch_size,
        "steps": steps,
        "images_per_second": steps * cfg.batch_size / seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--presets", nargs="+", default=["cpu-demo", "gpu"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rows = [measure(n, a.steps, a.device) for n in a.presets]
    if a.compile:
        rows += [measure(n, a.steps, a.device, compile_=True) for n in a.presets]
    for r in rows:
        print(
            f"{r['preset']:<10} {r['device']:<6} compile={r['compile']!s:<5} width {r['width']:>3} batch {r['batch']}: "
            f"{r['images_per_second']:.1f} img/s"
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
