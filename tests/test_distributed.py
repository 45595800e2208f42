"""Data-parallel training on CPU with gloo, through the real launcher (torchrun via
``vaegan train --nproc N``): N ranks x batch/N must compute what one rank x batch does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import shapes_folder

from vaegan.training import checkpoint as ckpt
from vaegan.training.config import apply_overrides, preset
from vaegan.training.train import config_from_checkpoint, train

# A tiny model, the global batch of 64 (2 ranks x 32, 4 ranks x 16), a checkpoint every step,
# in fp32: the comparisons below pin the distributed arithmetic, and bf16 rounds a rank's
# half-batch differently from the whole batch by more than their tolerance. Half the prior
# draws mix two codes of the global batch, which every rank must gather alike, each rank
# must flip (mirror) exactly the images one rank would, the MMD of the global batch's codes
# (weighted so it counts in the encoder's gradient) must give each rank's codes the gradient one
# rank would, and so must the R1 penalty (a gradient of a gradient, through DDP) to D's weights.
SETS = [
    "amp=false",
    "prior_mixup=0.5",
    "mmd_weight=1000",
    "r1_gamma=100",
    "r1_every=2",
    "mirror=true",
    "width=8",
    "latent_dim=16",
    "batch_size=64",
    "pixel_weight=1",
    "checkpoint_every=1",
    "keep_checkpoints=10",
    "eval_every=100",
    "num_samples=16",
]
NETS = ("encoder", "decoder", "discriminator")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """96 shapes stored as canvases, so each step also cuts random crops (which must be
    the same windows whichever rank cuts them)."""
    from vaegan.training.prepare import prepare

    base = tmp_path_factory.mktemp("ddp")
    prepare(
        shapes_folder(base / "images", n=96),
        base / "data",
        center_crop=False,
        val_fraction=0.2,
        size=32,
        workers=1,
        progress=False,
    )
    return base / "data"


def _torchrun(nproc: int, data: Path, run: Path, steps: int, *extra: str) -> None:
    cmd = [sys.executable, "-m", "vaegan.cli", "train", "--data", str(data), "--out", str(run)]
    cmd += ["--preset", "smoke", "--steps", str(steps), "--nproc", str(nproc), "--quiet", *extra]
    if "--resume" not in extra:
        cmd += [a for s in SETS for a in ("--set", s)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    # The agent's summary of a failed rank fills the last few KB; the rank's own words precede it.
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-12000:]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = ckpt.load(path)
    return {f"{n}.{k}": v.float() for n in NETS for k, v in state[n].items()}


def _relative_gap(a: Path, b: Path, init: Path) -> float:
    """|a - b| relative to how far training moved the weights from ``init``: 0 is identical,
    1 is as different as the whole run so far."""
    wa, wb, w0 = _weights(a), _weights(b), _weights(init)
    gap = sum(float((wa[k] - wb[k]).pow(2).sum()) for k in wa) ** 0.5
    moved = sum(float((wb[k] - w0[k]).pow(2).sum()) for k in wa) ** 0.5
    return gap / moved


@pytest.fixture(scope="module")
def one_rank(dataset, tmp_path_factory) -> Path:
    """The reference: one process, batch 64, 4 steps, a checkpoint after each."""
    run = tmp_path_factory.mktemp("one") / "run"
    cfg = apply_overrides(preset("smoke"), [*SETS, "steps=4"])
    train(cfg, dataset, run, progress=False)
    return run / "checkpoints"


@pytest.fixture(scope="module")
def two_ranks(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("two") / "run"
    _torchrun(2, dataset, run, 2)
    return run


def test_two_ranks_of_32_train_the_same_weights_as_one_rank_of_64(one_rank, two_ranks):
    # Step 1 from the shared initial weights; "moved" is measured from step 1 so the
    # tolerance is relative to what one more step changed.
    gap = _relative_gap(
        two_ranks / "checkpoints" / ckpt.step_name(2),
        one_rank / ckpt.step_name(2),
        one_rank / ckpt.step_name(1),
    )
    assert gap < 1e-3, gap


def test_only_rank_zero_writes_the_run(two_ranks):
    names = sorted(p.name for p in (two_ranks / "checkpoints").iterdir())
    assert names == sorted([ckpt.LAST, ckpt.step_name(1), ckpt.step_name(2)])
    assert len((two_ranks / "metrics.jsonl").read_text().splitlines()) == 1  # the final eval
    assert sorted(p.name for p in (two_ranks / "samples").iterdir()) == [
        "step_0000002_recon.png",
        "step_0000002_samples.png",
    ]
    assert not list(two_ranks.glob("*.tmp")) and not list((two_ranks / "checkpoints").glob("*.tmp"))


def test_a_two_rank_checkpoint_resumes_on_one_rank_and_on_four(
    dataset, one_rank, two_ranks, tmp_path
):
    on_one = tmp_path / "one"
    shutil.copytree(two_ranks, on_one)
    cfg = apply_overrides(config_from_checkpoint(on_one / "checkpoints" / ckpt.LAST), ["steps=4"])
    train(cfg, dataset, on_one, resume=True, progress=False)
    gap = _relative_gap(
        on_one / "checkpoints" / ckpt.LAST,
        one_rank / ckpt.step_name(4),
        one_rank / ckpt.step_name(3),
    )
    assert gap < 1e-3, gap

    on_four = tmp_path / "four"
    shutil.copytree(two_ranks, on_four)
    _torchrun(4, dataset, on_four, 3, "--resume")
    assert ckpt.load(on_four / "checkpoints" / ckpt.LAST)["step"] == 3
    gap = _relative_gap(
        on_four / "checkpoints" / ckpt.LAST,
        one_rank / ckpt.step_name(3),
        one_rank / ckpt.step_name(2),
    )
    assert gap < 1e-3, gap


WORKER = Path(__file__).with_name("distributed_worker.py")


def _world(*args: str, n: int = 2) -> list[subprocess.Popen]:
    """``n`` ranks started by hand (no torchrun), so one of them can be given a fault."""
    from vaegan.host import free_port

    port = str(free_port())
    procs = []
    for rank in range(n):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(n),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    out = []
    for p in procs:
        text, _ = p.communicate(timeout=120)  # a rank left waiting in a collective would hang
        assert p.returncode == 2, text[-2000:]
        out.append(text.strip().splitlines()[-1])
    return out


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(dataset, tmp_path):
    run = tmp_path / "run"
    lines = _finish(_world(str(dataset), str(run), "10", "nan-on-rank-1"))
    # Rank 1's KL turns NaN on its third step; rank 0's losses are finite, yet it stops too.
    assert all(line.startswith("Divergence: training diverged at step 3") for line in lines), lines
    assert ckpt.load(run / "checkpoints" / ckpt.LAST)["step"] == 2  # the NaN never reached disk


def test_a_signal_to_one_rank_stops_every_rank_with_a_checkpoint(dataset, tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    procs = _world(str(dataset), str(run), "100000")
    first = run / "checkpoints" / ckpt.step_name(1)
    deadline = time.monotonic() + 120
    while not first.exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # what torchrun or the kubelet sends
    lines = _finish(procs)
    assert all(line.startswith("Stopped: stopped by a signal at step") for line in lines), lines
    step = int(lines[0].split("at step ")[1].split(";")[0])
    assert lines[0] == lines[1]  # the same step on both ranks
    assert ckpt.load(run / "checkpoints" / ckpt.LAST)["step"] == step


def test_a_rank_leaves_with_its_code_and_everything_it_printed():
    # Ranks end with os._exit (distributed.leave): what sits in the stdio buffers must still
    # arrive, and torchrun must see the run's own exit code.
    code = (
        "import sys, logging; from vaegan.training.distributed import leave; "
        "print('done: run', end=''); print('a warning', file=sys.stderr, end=''); "
        "logging.basicConfig(); logging.getLogger('x').warning('logged'); leave(3)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as usual
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 3
    assert r.stdout == "done: run"
    assert r.stderr.startswith("a warning") and "logged" in r.stderr
