"""One rank of a hand-started world (RANK, WORLD_SIZE, MASTER_ADDR/PORT set by the test), so
a test can inject a fault into one rank: ``python distributed_worker.py DATA RUN STEPS
[nan-on-rank-1]``. Prints the error that ended training, if any."""

from __future__ import annotations

import os
import sys

from vaegan.training import losses
from vaegan.training.config import apply_overrides, preset
from vaegan.training.train import train

data, run, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
fault = sys.argv[4] if len(sys.argv) > 4 else ""
if fault == "nan-on-rank-1" and os.environ["RANK"] == "1":
    real, calls = losses.kl_prior, {"n": 0}

    def kl_that_explodes(mu, logvar):
        calls["n"] += 1
        return real(mu, logvar) * (float("nan") if calls["n"] >= 3 else 1.0)

    losses.kl_prior = kl_that_explodes
sets = ["width=8", "latent_dim=16", "batch_size=32", "checkpoint_every=1", "eval_every=1000"]
try:
    train(apply_overrides(preset("smoke"), [*sets, f"steps={steps}"]), data, run, progress=False)
except Exception as e:
    print(f"{type(e).__name__}: {e}", flush=True)
    sys.exit(2)
