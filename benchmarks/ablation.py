"""Ablation of the training recipe: one change at a time against the preset, at equal steps,
each trained by ``vaegan train`` and scored by ``vaegan evaluate`` (FID, precision/recall of
N(0, I) samples, fitted-prior samples and reconstructions; the validation PSNR; CPU-seconds
per step and steps/s of the training process).

    python -m benchmarks.ablation --data outputs/demo_data --out outputs/ablation
    python -m benchmarks.ablation ... --only base base-seed1 --n 500
    python -m benchmarks.ablation ... --curve base          # FID at every kept checkpoint
    python -m benchmarks.ablation ... --curve base --curve-steps 1000 2000   # at some

Rows already scored in ``OUT/results.json`` are kept, so the run can be stopped and resumed.
The table is rewritten after each row (``OUT/table.md``); each run's training grids are in
``OUT/<row>/samples/`` and the first 64 images of each scored kind in ``OUT/<row>/grids/``. FID at equal n against the same real set compares; the first two rows
(two training seeds of the preset) measure how far apart two identical recipes land.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

# Training in fp32 with contiguous tensors, as every CPU run was before bf16 autocast and
# channels_last applied to CPUs.
FP32 = ["amp=false", "channels_last=false"]
# cpu-demo's network width and steps when the rows below ran, spelled out so each row means
# the same whatever the preset's defaults are now.
W16 = ["width=16", "steps=2500", *FP32]
# The recipe the one-change rows start from: cpu-demo before the ablation chose KL 0.5 and no
# DiffAugment.
BEFORE = [*W16, "kl_weight=1.0", "diffaugment=color,translation,cutout"]
# The recipe those two changes made (cpu-demo at width 16).
AFTER = [*W16, "kl_weight=0.5", "diffaugment="]
# cpu-demo's steps and recipe with bf16 autocast and channels_last; the rows on it set the width.
BF16_DEMO = ["steps=1500", "kl_weight=0.5", "diffaugment=", "amp=true"]
# cpu-demo as it is (width 32), what the later one-change rows start from.
DEMO = ["width=32", *BF16_DEMO]

# name -> (--set overrides on top of the preset, what changes)
VARIANTS: dict[str, tuple[list[str], str]] = {
    "base": (BEFORE, "the recipe before"),
    "base-seed1": ([*BEFORE, "seed=1"], "the recipe before, training seed 1"),
    "kl-0.5": ([*BEFORE, "kl_weight=0.5"], "KL weight 0.5 (1)"),
    "no-pixel": ([*BEFORE, "pixel_weight=0"], "learned similarity only, no pixel MSE (1)"),
    "no-diffaugment": ([*BEFORE, "diffaugment="], "DiffAugment off (colour, translation, cutout)"),
    "no-ema": ([*BEFORE, "ema_decay=0"], "no EMA of the decoder (0.999)"),
    # The two changes that helped alone, together; a second seed; a step further on KL.
    "kl-0.5+no-da": (AFTER, "KL weight 0.5 and DiffAugment off"),
    "kl-0.5+no-da-seed1": (
        [*AFTER, "seed=1"],
        "KL weight 0.5 and DiffAugment off, training seed 1",
    ),
    "kl-0.25+no-da": ([*AFTER, "kl_weight=0.25"], "KL weight 0.25 and DiffAugment off"),
    # Levers on the N(0, I) samples themselves, on top of that recipe: more weight on the GAN
    # loss of prior samples, and a decoder led less by reconstruction.
    "prior-gan-3": (
        [*AFTER, "prior_gan_weight=3"],
        "KL 0.5, no DiffAugment, with the GAN loss of prior samples weighted 3 (1)",
    ),
    "gamma-0.3": (
        [*AFTER, "gamma=0.3"],
        "KL 0.5, no DiffAugment, with the decoder's reconstruction weight gamma 0.3 (1)",
    ),
    # Capacity and the shape of the code space: is width 16 where it stalls, and does a
    # smaller code leave N(0, I) fewer holes to fall into?
    "width-32": ([*AFTER, "width=32"], "KL 0.5, no DiffAugment, width 32 (16)"),
    "latent-16": ([*AFTER, "latent_dim=16"], "KL 0.5, no DiffAugment, a 16-dimensional code (32)"),
    # Width 32 at about cpu-demo's time budget (2,000 steps) without the decoder's EMA (which,
    # measured against the recipe before, cost more than it gave at 2,500 steps); compare with
    # the width-32 run's checkpoint at step 2,000 (--curve width-32).
    "w32-2000-no-ema": (
        [*AFTER, "width=32", "steps=2000", "ema_decay=0"],
        "KL 0.5, no DiffAugment, width 32, 2,000 steps, no EMA of the decoder",
    ),
    # bf16 autocast and channels_last on this CPU (AVX512-BF16): the same recipe in less than
    # half the CPU time per step, if bf16 does not cost quality. Compare with the width-32
    # run's checkpoint at step 1,500 (--curve width-32), which is this recipe in fp32.
    "w32-1500-bf16": (
        DEMO,
        "width 32, 1,500 steps (cpu-demo), bf16 autocast and channels_last (fp32)",
    ),
    "w32-1500-bf16-seed1": (
        [*DEMO, "seed=1"],
        "cpu-demo (bf16), training seed 1",
    ),
    # What the CPU time bf16 saves buys at cpu-demo's size: a wider network for about the time
    # the fp32 width-32 run took.
    "w48-1500-bf16": (
        ["width=48", *BF16_DEMO],
        "width 48, 1,500 steps, bf16 autocast and channels_last (width 32)",
    ),
    # The served samples come from the prior fitted to the training codes, yet the GAN trains the
    # decoder only on N(0, I) draws: train it between the codes too (latent mixup), on part or
    # all of the prior batch. Compare with w32-1500-bf16.
    "mixup-0.5": (
        [*DEMO, "prior_mixup=0.5"],
        "cpu-demo (bf16) with half the GAN's prior draws mixing two codes (none)",
    ),
    "mixup-0.5-seed1": (
        [*DEMO, "prior_mixup=0.5", "seed=1"],
        "cpu-demo (bf16) with half the GAN's prior draws mixing two codes, training seed 1",
    ),
    "mixup-1": (
        [*DEMO, "prior_mixup=1"],
        "cpu-demo (bf16) with every GAN prior draw mixing two codes (none)",
    ),
    # The two architecture changes kept from earlier trials, each undone on cpu-demo as it is:
    # the DCGAN decoder's transposed convolutions, and its BatchNorm D with the BCE loss.
    "transpose": (
        [*DEMO, "upsample=transpose"],
        "cpu-demo (bf16) with transposed convolutions (resize + conv)",
    ),
    "batchnorm-d": (
        [*DEMO, "d_norm=batch", "gan_loss=bce"],
        "cpu-demo (bf16) with a BatchNorm D and the BCE loss (spectral norm, hinge)",
    ),
    # Augmenting the data every network sees, not only D's (DiffAugment): random left-right
    # flips double a small folder; Inception's statistics barely notice a mirrored emoji.
    "mirror": ([*DEMO, "mirror=true"], "cpu-demo (bf16) with random left-right flips (none)"),
    "mirror-seed1": (
        [*DEMO, "mirror=true", "seed=1"],
        "cpu-demo (bf16) with random left-right flips, training seed 1",
    ),
    "mirror-3000": (
        [*DEMO, "mirror=true", "steps=3000"],
        "cpu-demo (bf16) with random left-right flips and 3,000 steps (1,500)",
    ),
    # N(0, I) draws decode to blobs while draws near the codes decode to emoji: the codes as a
    # whole miss the prior. An MMD between the batch's codes and N(0, I) on the encoder
    # (InfoVAE; WAE-MMD) pulls them onto it, which the per-image KL does not.
    "mmd-100": (
        [*DEMO, "mmd_weight=100"],
        "cpu-demo (bf16) with MMD(codes, N(0, I)) weight 100 (0)",
    ),
    "mmd-1000": (
        [*DEMO, "mmd_weight=1000"],
        "cpu-demo (bf16) with MMD(codes, N(0, I)) weight 1,000 (0)",
    ),
    # At 32 px D has three blocks, so the learned similarity's block 3 is 4x4; Larsen et al.
    # compare at 8x8 (block 3 of four at 64 px), which block 2 is here.
    "feature-2": (
        [*DEMO, "feature_layer=2"],
        "cpu-demo (bf16) with the learned similarity on D's block 2, 8x8 (block 3, 4x4)",
    ),
    # The decoder's loss is mostly reconstruction (the pixel term alone is ~20x the GAN's):
    # give the GAN on prior draws a share comparable to it, or lighten the pixel term (the
    # reconstruction mix the issue asked to revisit).
    "prior-gan-10": (
        [*DEMO, "prior_gan_weight=10"],
        "cpu-demo (bf16) with the GAN loss of prior samples weighted 10 (1)",
    ),
    "prior-gan-30": (
        [*DEMO, "prior_gan_weight=30"],
        "cpu-demo (bf16) with the GAN loss of prior samples weighted 30 (1)",
    ),
    "prior-gan-10-6000": (
        [*DEMO, "prior_gan_weight=10", "steps=6000"],
        "cpu-demo (bf16) with the GAN loss of prior samples weighted 10, 6,000 steps (1, 1,500)",
    ),
    "pixel-0.25": ([*DEMO, "pixel_weight=0.25"], "cpu-demo (bf16) with pixel weight 0.25 (1)"),
    # TTUR order with D faster than the decoder (Heusel et al. 2017): 2x and 4x its rate.
    "lr-dis-2x": ([*DEMO, "lr_dis=0.001"], "cpu-demo (bf16) with D's learning rate 1e-3 (5e-4)"),
    "lr-dis-2x-seed1": (
        [*DEMO, "lr_dis=0.001", "seed=1"],
        "cpu-demo (bf16) with D's learning rate 1e-3, training seed 1",
    ),
    "lr-dis-4x": ([*DEMO, "lr_dis=0.002"], "cpu-demo (bf16) with D's learning rate 2e-3 (5e-4)"),
    "lr-dis-4x-seed1": (
        [*DEMO, "lr_dis=0.002", "seed=1"],
        "cpu-demo (bf16) with D's learning rate 2e-3, training seed 1",
    ),
    # The R1 penalty on D at the real images (Mescheder et al. 2018), lazily every 16 steps: the
    # stabiliser left to try after the others; the spectral norm already bounds D's slope.
    "r1-1": (
        [*DEMO, "r1_gamma=1"],
        "cpu-demo (bf16) with the R1 penalty, gamma 1, every 16 steps (none)",
    ),
    "r1-10": ([*DEMO, "r1_gamma=10"], "cpu-demo (bf16) with the R1 penalty, gamma 10"),
    "r1-1-seed1": (
        [*DEMO, "r1_gamma=1", "seed=1"],
        "cpu-demo (bf16) with the R1 penalty, gamma 1, training seed 1",
    ),
    # What more of the time budget buys: 1.6x the steps.
    "steps-4000": ([*AFTER, "steps=4000"], "KL 0.5, no DiffAugment, 4,000 steps (2,500)"),
}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _last_metrics(run: Path) -> dict:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def train(name: str, a: argparse.Namespace, run: Path) -> dict:
    sets, _ = VARIANTS[name]
    # Every 500-step checkpoint is kept for --curve; bookkeeping only, the run is the same.
    sets = [*sets, "checkpoint_every=500", "keep_checkpoints=100", *a.set]
    cmd = [sys.executable, "-m", "vaegan.cli", "train", "--data", a.data, "--out", str(run)]
    cmd += ["--preset", a.preset, "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    print(f"[{name}] {' '.join(cmd[2:])}", flush=True)
    cpu, wall = _children_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True)
    cpu, wall = _children_cpu() - cpu, time.perf_counter() - wall
    steps = _last_metrics(run)["step"]
    return {"train_cpu_s_per_step": cpu / steps, "train_steps_per_s": steps / wall, "steps": steps}


def evaluate(
    ckpt: Path, a: argparse.Namespace, out: Path, only: list[str] | None = None, grids=None
) -> dict:
    cmd = [sys.executable, "-m", "vaegan.cli", "evaluate", "--checkpoint", str(ckpt)]
    cmd += ["--data", a.data, "--n", str(a.n), "--seed", "0", "--out", str(out), "--quiet"]
    cmd += ["--only", *only] if only else []
    cmd += ["--grids", str(grids)] if grids else []
    print(f"  {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def row(name: str, a: argparse.Namespace) -> dict:
    run = Path(a.out) / name
    facts = train(name, a, run)
    scores = evaluate(
        run / "checkpoints" / "last.pt", a, run / "evaluate.json", grids=run / "grids"
    )
    m = _last_metrics(run)
    r = {"name": name, "change": VARIANTS[name][1], "sets": VARIANTS[name][0], **facts}
    r["val_psnr"] = m["val_psnr"]
    r["n"] = scores["n"]
    for kind in ("samples", "samples_fitted", "reconstructions", "reconstructions_val"):
        s = scores[kind]
        r[kind] = {"fid": s["fid"], "precision": s["precision"], "recall": s["recall"]}
    return r


CURVE_KINDS = ["samples", "samples_fitted", "reconstructions"]


def curve(name: str, a: argparse.Namespace) -> list[dict]:
    """FID of one run's kept checkpoints, in step order (the validation split left out)."""
    run = Path(a.out) / name
    points = []
    for ckpt in sorted((run / "checkpoints").glob("step_*.pt")):
        step = int(ckpt.stem.split("_")[1])
        if a.curve_steps and step not in a.curve_steps:
            continue
        scored = run / "evaluate.json"  # the row's own scores are those of its last step
        if step == _last_metrics(run)["step"] and scored.is_file():
            s = json.loads(scored.read_text())
        else:
            s = evaluate(ckpt, a, run / f"evaluate_{step}.json", CURVE_KINDS)
        points.append({"step": step, **{k: s[k]["fid"] for k in CURVE_KINDS}})
    return points


def curve_table(curves: dict, rows: dict, n: int) -> str:
    out = [
        f"FID at n = {n} of each run's kept checkpoints, against every prepared image",
        "",
        "| row | step | training minutes | FID samples N(0,I) | FID fitted prior | FID recon |",
        "|---|---|---|---|---|---|",
    ]
    for name, points in curves.items():
        rate = rows.get(name, {}).get("train_steps_per_s")
        for p in points:
            minutes = f"{p['step'] / rate / 60:.1f}" if rate else "-"
            out.append(
                f"| {name} | {p['step']} | {minutes} | {p['samples']:.1f} "
                f"| {p['samples_fitted']:.1f} | {p['reconstructions']:.1f} |"
            )
    return "\n".join(out) + "\n"


def curve_chart(curves: dict, rows: dict, path: Path, n: int) -> None:
    """FID against training steps, one panel per run (matplotlib, the dev extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, (name, points) in zip(axes[0], curves.items(), strict=True):
        steps = [p["step"] for p in points]
        for kind, label in (
            ("samples", "N(0, I) samples"),
            ("samples_fitted", "fitted-prior samples"),
            ("reconstructions", "reconstructions"),
        ):
            ax.plot(steps, [p[kind] for p in points], marker="o", label=label)
        ax.set(title=name, xlabel="training step", ylabel=f"FID (n = {n})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pr(score: dict) -> str:
    return f"{score['precision']:.2f}/{score['recall']:.2f}"


def table(rows: list[dict], command: str) -> str:
    n = rows[0]["n"] if rows else 0
    out = [
        f"FID at n = {n} against every prepared image; precision/recall k = 3. `{command}`",
        "",
        "| row | change | FID samples N(0,I) | FID fitted prior | FID recon | FID val recon "
        "| P/R fitted | P/R recon | val PSNR | CPU-s/step | steps/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['name']} | {r['change']} | {r['samples']['fid']:.1f} "
            f"| {r['samples_fitted']['fid']:.1f} | {r['reconstructions']['fid']:.1f} "
            f"| {r['reconstructions_val']['fid']:.1f} | {_pr(r['samples_fitted'])} "
            f"| {_pr(r['reconstructions'])} | {r['val_psnr']:.2f} | {r['train_cpu_s_per_step']:.2f} "
            f"| {r['train_steps_per_s']:.2f} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True, help="a prepared dataset")
    p.add_argument("--out", default="outputs/ablation")
    p.add_argument("--preset", default="cpu-demo")
    p.add_argument("--n", type=int, default=500, help="samples and reconstructions per FID")
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--set", action="append", default=[], help="FIELD=VALUE for every row")
    p.add_argument("--curve", nargs="+", default=[], choices=list(VARIANTS), metavar="ROW")
    p.add_argument(
        "--curve-steps", nargs="+", type=int, default=[], help="only these checkpoints' steps"
    )
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    rows = results.setdefault("rows", {})
    command = " ".join(["python -m benchmarks.ablation", *sys.argv[1:]])
    for name in a.only:
        if name in rows:
            continue
        rows[name] = row(name, a)
        results_file.write_text(json.dumps(results, indent=2))
        (out / "table.md").write_text(table(list(rows.values()), command))
        print(table([rows[name]], command).splitlines()[-1], flush=True)
    for name in a.curve:
        results.setdefault("curves", {})[name] = curve(name, a)
        results_file.write_text(json.dumps(results, indent=2))
    if results.get("curves"):
        (out / "curves.md").write_text(curve_table(results["curves"], results["rows"], a.n))
        print((out / "curves.md").read_text())
        curve_chart(results["curves"], results["rows"], out / "curves.png", a.n)
    print((out / "table.md").read_text() if (out / "table.md").is_file() else "")


if __name__ == "__main__":
    main()
