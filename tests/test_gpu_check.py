"""The GPU check's whole path rehearsed on this CPU: what a lease of a GPU machine would run
(`benchmarks.gpu_check run`), then the scoring of what comes back (`score`)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import pytest

from vaegan.training import checkpoint as ckpt


@pytest.mark.slow
def test_a_rehearsal_ships_slim_checkpoints_from_mid_run_and_its_end_and_scores_them(
    shapes_dataset, tmp_path
):
    out, work = tmp_path / "out", tmp_path / "work"
    run = [sys.executable, "-m", "benchmarks.gpu_check", "run", "--data", str(shapes_dataset)]
    run += ["--out", str(out), "--work", str(work), "--variants", "gpu-cpu-recipe"]
    # The smoke preset with no step limit: the run must end by the clock (SIGTERM), as a
    # `gpu` run does on a lease.
    run += ["--preset", "smoke", "--set", "steps=1000000", "--minutes", "0.2"]
    run += ["--no-compile", "--throughput-steps", "2", "--checkpoint-every", "3"]
    subprocess.run(run, check=True, capture_output=True)

    summary = json.loads((out / "summary.json").read_text())
    done = summary["variants"]["gpu-cpu-recipe"]
    assert "d_norm=spectral" in done["sets"] and "steps=1000000" in done["sets"]
    assert 0 < done["steps"] < 1000000  # stopped by the clock, with a checkpoint
    assert {r["bf16"] for r in summary["throughput"]} >= {False}  # the fp32 row is there
    shipped = [out / name for name in done["shipped"]]
    assert len(shipped) == 2 and all(p.stat().st_size < 16 * 2**20 for p in shipped)
    steps = [int(ckpt.load(p)["step"]) for p in shipped]
    assert steps[1] == done["steps"] and abs(steps[0] - steps[1] / 2) <= 3
    assert all(ckpt.load(p)["slim"] for p in shipped)
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
    assert "gpu-cpu-recipe/metrics.jsonl" in names and "summary.json" in names

    shipped[0].unlink()  # one checkpoint is enough to score here
    scores = tmp_path / "scores"
    score = [sys.executable, "-m", "benchmarks.gpu_check", "score", "--checkpoints", str(out)]
    score += ["--data", str(shapes_dataset), "--n", "8", "--out", str(scores)]
    subprocess.run(score, check=True, capture_output=True)
    row = shipped[1].stem
    figures = json.loads((scores / f"{row}.json").read_text())
    assert figures["n"] == 8 and figures["samples"]["fid"] > 0
    table = (scores / "table.md").read_text()
    assert f"| {row} | {figures['samples']['fid']:.1f} |" in table
    ratio = figures["samples_fitted"]["nearest_code_ratio"]
    assert table.splitlines()[-1].endswith(f"| {ratio:.2f} |")
    # Scored again with refined draws: the cached figures were unrefined, so they are redone.
    subprocess.run([*score, "--refine", "1"], check=True, capture_output=True)
    assert json.loads((scores / f"{row}.json").read_text())["refine_steps"] == 1
    assert "prior draws refined 1 step" in (scores / "table.md").read_text()


def test_a_compiler_failure_is_a_row_of_the_throughput_table_and_the_other_rows_stand(
    monkeypatch, tmp_path, capsys
):
    # torch 2.11's CUDA backward once failed the whole GPU check this way; its eager rows
    # and the training after them must not depend on what torch.compile accepts.
    from benchmarks import train_throughput as tt

    def measure(name, steps, device, compile_=False, fp32=False, **_):
        if compile_:
            raise AssertionError("expected size 512==512, stride 16==1 at dim=1\nError in op")
        row = tt._row(name, tt._config(name, fp32), device, False, steps, 1)
        return {**row, "images_per_second": 100.0 if fp32 else 150.0}

    monkeypatch.setattr(tt, "measure", measure)
    out = tmp_path / "rows.json"
    argv = ["train_throughput", "--presets", "smoke", "--device", "cpu", "--compile", "--fp32"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    tt.main()
    rows = json.loads(out.read_text())["rows"]
    assert [(r["compile"], r["channels_last"]) for r in rows] == [
        (False, True),
        (True, True),
        (False, False),
        (True, False),
    ]
    failed = [r for r in rows if r["compile"]]
    assert all(r["error"].startswith("AssertionError: expected size 512") for r in failed)
    assert all("images_per_second" not in r for r in failed)
    assert capsys.readouterr().out.count("failed: AssertionError: expected size 512") == 2
