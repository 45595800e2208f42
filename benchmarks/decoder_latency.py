"""Decoder latency, ONNX Runtime vs PyTorch eager, at several batch sizes, in one run.

    python -m benchmarks.decoder_latency --checkpoint RUN/checkpoints/last.pt [--out bench.json]

Both run on this machine's CPU with their default thread settings; each figure is the
median of timed repetitions after warm-up. The ratio (eager / ORT) is what to compare
across machines, not the absolute milliseconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from vaegan.export.onnx_graphs import export_graphs
from vaegan.training.checkpoint import load_model
from vaegan.training.model import to_pixels


def _median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args()

    model, facts = load_model(a.checkpoint)
    session = ort.InferenceSession(export_graphs(model).decoder, providers=["CPUExecutionProvider"])
    rows = []
    for b in tqdm(a.batches, desc="batch sizes"):
        z = torch.randn(b, model.cfg.latent_dim)
        zn = z.numpy()

        def eager(z=z):
            with torch.inference_mode():
                return to_pixels(model.decode(z)).numpy()

        def onnx(zn=zn):
            return session.run(None, {"z": zn})[0]

        assert np.abs(eager().astype(int) - onnx().astype(int)).max() <= 1
        t_eager, t_ort = _median_ms(eager, a.repeats), _median_ms(onnx, a.repeats)
        rows.append(
            {
                "batch": b,
                "pytorch_eager_ms": t_eager,
                "onnxruntime_ms": t_ort,
                "speedup_ort_vs_eager": t_eager / t_ort,
            }
        )
    result = {
        "benchmark": "decoder_latency",
        "checkpoint": a.checkpoint,
        "model": facts.model_config,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": torch.get_num_threads(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
        },
        "rows": rows,
    }
    print(f"{'batch':>6} {'torch eager ms':>15} {'onnxruntime ms':>15} {'eager/ORT':>10}")
    for r in rows:
        print(
            f"{r['batch']:>6} {r['pytorch_eager_ms']:>15.2f} {r['onnxruntime_ms']:>15.2f} {r['speedup_ort_vs_eager']:>10.2f}"
        )
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
