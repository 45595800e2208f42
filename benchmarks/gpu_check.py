"""The training checks that need a GPU, prepared to run in one call on a short lease of a GPU
machine (issue 15: the `gpu` preset's img/s with and without bf16 and torch.compile, and its
FID against training time), then scored back here.

    python -m benchmarks.gpu_check pack --data outputs/data64    # -> .gpu/data64 (17 MiB)
    # there, from the repository root, with the machine's own torch (device tool: carry
    # [".gpu"], timeout_s 590; about 8 minutes, plus the machine's start):
    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check run \
        --data .gpu/data64 --out "$OUT" --minutes 2.5
    # here, on what came back:
    python -m benchmarks.gpu_check score --checkpoints DIR --data outputs/data64 [--n 1000] [--refine 8]
                                                       # -> outputs/gpu_check/table.md

``run`` measures training throughput (``benchmarks.train_throughput``: bf16 and fp32, with
and without torch.compile), then trains each variant below for ``--minutes`` of wall-clock
and stops it with SIGTERM (the loop then checkpoints and ends). The FID Inception (87 MB)
does not fit in what a lease carries, so FID is not measured there: each variant's
checkpoint nearest half its time and its last come back as ``checkpoint.slim`` copies (the
encoder and the served decoder in fp16, 13 MiB for `gpu`), with the runs' grids and logs in
``runs.tar.gz``. ``score`` runs ``vaegan evaluate`` on each here and writes a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

# name -> --set overrides on the preset. `gpu` is the seed documents' settings (BatchNorm D,
# BCE, gamma 0.01, KL 1) with DiffAugment, EMA and the resize decoder. `gpu-cpu-recipe` takes
# the choices the CPU ablation measured better (spectral-norm D with hinge, reconstruction-led
# decoder, KL 0.5, faster learning rates) and keeps DiffAugment; on an H200 it lost to `gpu`
# at equal time (docs/quality.md), so it is no longer run by default. A step of `gpu` took
# about as long as its launches, not its arithmetic, there: `gpu-batch256` asks whether four
# times the images per step come nearly free, with the learning rates scaled by sqrt(4).
VARIANTS: dict[str, list[str]] = {
    "gpu": [],
    "gpu-batch256": ["batch_size=256", "lr_scaling=sqrt"],
    "gpu-cpu-recipe": [
        "d_norm=spectral",
        "gan_loss=hinge",
        "gamma=1",
        "pixel_weight=1",
        "kl_weight=0.5",
        "lr_enc=5e-4",
        "lr_dec=5e-4",
        "lr_dis=5e-4",
    ],
}
DEFAULT_VARIANTS = ["gpu", "gpu-batch256"]
TRANSPORT_LIMIT = 16 * 2**20  # the largest file a lease hands back


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def throughput(out: Path, preset: str, steps: int, compile_: bool) -> dict:
    cmd = _python("benchmarks.train_throughput", "--presets", preset, "--steps", str(steps))
    cmd += ["--fp32", "--out", str(out / "throughput.json")]
    if compile_:
        cmd.append("--compile")
    subprocess.run(cmd, check=True)
    return json.loads((out / "throughput.json").read_text())


def train_for(run: Path, data: Path, preset: str, sets: list[str], seconds: float, every: int):
    """``vaegan train`` for ``seconds`` of wall-clock, then SIGTERM: the loop checkpoints at
    its next step and ends. Returns the seconds it ran."""
    from vaegan.training import checkpoint as ckpt

    cmd = _python("vaegan.cli", "train", "--data", str(data), "--out", str(run))
    cmd += ["--preset", preset, "--quiet"]
    for s in [
        "fid_every=0",  # the Inception is not on that machine
        f"checkpoint_every={every}",
        f"eval_every={every}",
        "keep_checkpoints=1000",
        *sets,
    ]:
        cmd += ["--set", s]
    start = time.monotonic()
    proc = subprocess.Popen(cmd)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    elapsed = time.monotonic() - start
    if not (run / "checkpoints" / ckpt.LAST).exists():
        raise SystemExit(f"{run.name}: no checkpoint written (exit {proc.returncode})")
    return elapsed


def ship(run: Path, name: str, out: Path) -> tuple[int, list[str]]:
    """The step-numbered checkpoint nearest half the run and the last, as slim copies.
    Returns the run's steps and the copies' names."""
    from vaegan.training import checkpoint as ckpt

    folder = run / "checkpoints"
    last = ckpt.load(folder / ckpt.LAST)
    total = int(last["step"])
    kept = {int(p.stem.split("_")[1]): p for p in sorted(folder.glob("step_*.pt"))}
    picks = [last]
    mid = min(kept, key=lambda step: abs(step - total / 2), default=total)
    if mid != total:
        picks.insert(0, ckpt.load(kept[mid]))
    names = []
    for state in picks:
        path = out / f"{name}_{ckpt.step_name(int(state['step']))}"
        ckpt.save_atomic(ckpt.slim(state), path)
        if path.stat().st_size > TRANSPORT_LIMIT:
            raise SystemExit(f"{path.name} is {path.stat().st_size} bytes, over what comes back")
        names.append(path.name)
    return total, names


def run(a: argparse.Namespace) -> None:
    import torch

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work)
    facts = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "minutes_per_variant": a.minutes,
        "preset": a.preset,
    }
    print(json.dumps(facts), flush=True)
    rows = throughput(out, a.preset, a.throughput_steps, not a.no_compile)["rows"]
    eager = rows[0]  # the preset as it trains: its own precision, no compile
    # Checkpoints about every eighth of the run, at the measured pace (the real loop is a
    # little slower: data, EMA, grids), so one lands near its middle.
    batch = eager["batch"]
    every = a.checkpoint_every or max(1, int(eager["images_per_second"] / batch * a.minutes * 7.5))
    summary = {**facts, "throughput": rows, "checkpoint_every": every, "variants": {}}
    for name in a.variants:
        run_dir, sets = work / name, [*VARIANTS[name], *a.set]
        seconds = train_for(run_dir, Path(a.data), a.preset, sets, a.minutes * 60, every)
        steps, shipped = ship(run_dir, name, out)
        summary["variants"][name] = {
            "sets": sets,
            "steps": steps,
            "seconds": round(seconds, 1),
            "steps_per_s": round(steps / seconds, 2),
            "shipped": shipped,
        }
        print(json.dumps({name: summary["variants"][name]}), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
        for name in a.variants:
            # The last two evaluations' grids: all of them would crowd out the checkpoints in
            # the 64 MiB a lease hands back.
            grids = sorted((work / name / "samples").glob("*.png"))[-4:]
            for path in [work / name / "config.json", work / name / "metrics.jsonl", *grids]:
                if path.exists():
                    tar.add(path, arcname=f"{name}/{path.name}")
        tar.add(out / "summary.json", arcname="summary.json")


def pack(a: argparse.Namespace) -> None:
    """A copy of a prepared dataset without its FID caches (what a lease must carry)."""
    src, dst = Path(a.data), Path(a.to)
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and not path.name.startswith("fid_real_"):
            shutil.copy2(path, dst / path.name)
    size = sum(p.stat().st_size for p in dst.iterdir())
    print(f"{dst}: {size / 2**20:.1f} MiB; carry it (run's carry argument) and pass --data {dst}")


def score(a: argparse.Namespace) -> None:
    folder = Path(a.checkpoints)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plural = "s" if a.refine > 1 else ""
    refined = f"; prior draws refined {a.refine} step{plural}" if a.refine else ""
    lines = [
        f"FID at n = {a.n} against every image of {a.data}; the checkpoints are fp16 slim copies"
        + refined,
        "",
        "| checkpoint | N(0, I) | fitted prior | recon | val recon | P/R fitted | P/R recon"
        " | nearest-code ratio, fitted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(folder.glob("*.pt")):
        result = out / f"{path.stem}.json"
        if not result.exists() or json.loads(result.read_text())["refine_steps"] != a.refine:
            cmd = _python("vaegan.cli", "evaluate", "--checkpoint", str(path), "--data", a.data)
            cmd += ["--n", str(a.n), "--out", str(result), "--grids", str(out / path.stem)]
            subprocess.run([*cmd, "--refine", str(a.refine), "--quiet"], check=True)
        r = json.loads(result.read_text())
        kinds = ("samples", "samples_fitted", "reconstructions", "reconstructions_val")
        cells = [f"{r[k]['fid']:.1f}" if k in r else "-" for k in kinds]
        cells += [
            f"{r[k]['precision']:.2f}/{r[k]['recall']:.2f}" if k in r else "-"
            for k in ("samples_fitted", "reconstructions")
        ]
        ratio = r.get("samples_fitted", {}).get("nearest_code_ratio")
        cells.append(f"{ratio:.2f}" if ratio is not None else "-")
        lines.append(f"| {path.stem} | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="on the GPU machine: throughput, then train each variant")
    r.add_argument("--data", required=True, help="a prepared dataset (vaegan prepare --size 64)")
    r.add_argument("--out", required=True, help="what comes back ($OUT)")
    r.add_argument("--work", default="/tmp/gpu_check", help="the runs' folders (stay there)")
    r.add_argument("--minutes", type=float, default=2.5, help="training time of each variant")
    r.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    r.add_argument("--preset", default="gpu", help="smoke: a CPU rehearsal of the whole run")
    r.add_argument("--throughput-steps", type=int, default=30)
    r.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    r.add_argument("--set", action="append", default=[], help="FIELD=VALUE for every variant")
    r.add_argument("--checkpoint-every", type=int, default=0, help="default: an eighth of a run")
    k = sub.add_parser("pack", help="here: copy a dataset for the lease, without FID caches")
    k.add_argument("--data", required=True)
    k.add_argument("--to", default=".gpu/data64", help="an ignored folder of the repository")
    s = sub.add_parser("score", help="here: vaegan evaluate on each checkpoint that came back")
    s.add_argument("--checkpoints", required=True, help="the folder the lease's files are in")
    s.add_argument("--data", required=True, help="the same dataset, with the FID Inception here")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument(
        "--refine",
        type=int,
        default=0,
        help="refine both priors' draws this many steps (vaegan evaluate --refine)",
    )
    s.add_argument("--out", default="outputs/gpu_check", help="scores, table.md and grids")
    a = p.parse_args()
    {"run": run, "pack": pack, "score": score}[a.command](a)


if __name__ == "__main__":
    main()
