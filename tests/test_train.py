"""The training loop end to end on generated data: learning, exact resume, the guards."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from vaegan.cli import main
from vaegan.errors import VaeganError
from vaegan.training import checkpoint as ckpt
from vaegan.training import losses
from vaegan.training.config import ModelConfig, TrainConfig, apply_overrides, preset
from vaegan.training.data import Dataset
from vaegan.training.step import Divergence
from vaegan.training.train import train

TINY = TrainConfig(
    model=ModelConfig(image_size=32, width=8, latent_dim=16),
    batch_size=16,
    log_every=5,
    eval_every=10,
    checkpoint_every=10,
    num_samples=8,
    lr_enc=1e-3,
    lr_dec=1e-3,
    pixel_weight=1.0,
)


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_reconstruction_error_falls_over_a_few_dozen_steps(shapes_dataset, tmp_path):
    train(replace(TINY, steps=60, eval_every=5), shapes_dataset, tmp_path / "run", progress=False)
    m = _metrics(tmp_path / "run")
    assert [r["step"] for r in m] == list(range(5, 61, 5))
    assert m[-1]["val_mse"] < 0.6 * m[0]["val_mse"], [r["val_mse"] for r in m]
    for key in ("val_psnr", "baseline_mse", "hist_chi2"):
        assert all(isinstance(r[key], float) for r in m), key
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())[-2:] == [
        "step_0000060_recon.png",
        "step_0000060_samples.png",
    ]


@pytest.mark.slow
def test_resuming_from_step_k_gives_the_weights_of_an_uninterrupted_run(shapes_dataset, tmp_path):
    cfg = replace(TINY, steps=20, checkpoint_every=7, eval_every=7)
    train(cfg, shapes_dataset, tmp_path / "straight", progress=False)
    train(replace(cfg, steps=12), shapes_dataset, tmp_path / "split", progress=False)
    train(cfg, shapes_dataset, tmp_path / "split", resume=True, progress=False)
    a = ckpt.load(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = ckpt.load(tmp_path / "split" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 20
    for net in ("encoder", "decoder", "decoder_ema", "discriminator"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k}"
    for opt in ("opt_enc", "opt_dec", "opt_dis"):
        for pid, st in a[opt]["state"].items():
            assert torch.equal(st["exp_avg"], b[opt]["state"][pid]["exp_avg"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_a_slim_checkpoint_serves_the_same_model_and_refuses_to_resume(shapes_dataset, tmp_path):
    run = tmp_path / "run"
    train(replace(TINY, steps=10), shapes_dataset, run, progress=False)
    full_path = run / "checkpoints" / ckpt.LAST
    slim_path = tmp_path / "slim.pt"
    ckpt.save_atomic(ckpt.slim(ckpt.load(full_path)), slim_path)
    assert slim_path.stat().st_size < 0.3 * full_path.stat().st_size

    (full, facts), (light, light_facts) = ckpt.load_model(full_path), ckpt.load_model(slim_path)
    assert light_facts == facts
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    z = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.allclose(light.encoder(x)[0], full.encoder(x)[0], atol=2e-2)
        assert torch.allclose(light.decoder(z), full.decoder(z), atol=2e-2)  # the EMA decoder
    with pytest.raises(VaeganError, match="resume from the full checkpoint"):
        shutil.copy(slim_path, full_path)
        train(replace(TINY, steps=20), shapes_dataset, run, resume=True, progress=False)


def test_checkpoint_carries_configs_crop_policy_and_dataset_facts(shapes_dataset, tmp_path):
    train(
        replace(TINY, steps=3, eval_every=3, checkpoint_every=3),
        shapes_dataset,
        tmp_path / "r",
        progress=False,
    )
    state = ckpt.load(tmp_path / "r" / "checkpoints" / "last.pt")
    assert state["crop"] == {"mode": "center", "fraction": 0.75, "size": 32}
    assert state["model_config"] == {
        "image_size": 32,
        "latent_dim": 16,
        "width": 8,
        "feature_layer": 3,
        "upsample": "resize",
        "d_norm": "batch",
    }
    # the moving average travels in the checkpoint, and export takes it
    from vaegan.training.checkpoint import load_model

    model, _ = load_model(tmp_path / "r" / "checkpoints" / "last.pt")
    for k, v in model.decoder.state_dict().items():
        assert torch.equal(v, state["decoder_ema"][k]), k
    assert any(
        not torch.equal(state["decoder"][k], state["decoder_ema"][k]) for k in state["decoder"]
    )
    assert state["train_config"]["steps"] == 3 and state["step"] == 3
    assert state["dataset"]["train"] == 48 and state["dataset"]["val"] == 16
    assert (tmp_path / "r" / "checkpoints" / "step_0000003.pt").is_file()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    shapes_dataset, tmp_path, monkeypatch
):
    run = tmp_path / "r"
    train(
        replace(TINY, steps=4, checkpoint_every=4, eval_every=4),
        shapes_dataset,
        run,
        progress=False,
    )
    good = (run / "checkpoints" / "last.pt").read_bytes()
    real_kl = losses.kl_prior
    calls = {"n": 0}

    def kl_that_explodes(mu, logvar):
        calls["n"] += 1
        return real_kl(mu, logvar) * (float("nan") if calls["n"] >= 3 else 1.0)

    monkeypatch.setattr(losses, "kl_prior", kl_that_explodes)
    with pytest.raises(Divergence, match=r"diverged at step 7: kl.*last good checkpoint"):
        train(
            replace(TINY, steps=8, checkpoint_every=1, eval_every=100),
            shapes_dataset,
            run,
            resume=True,
            progress=False,
        )
    # Steps 5 and 6 were healthy and checkpointed; the NaN at step 7 never reached disk.
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state["step"] == 6
    assert (run / "checkpoints" / "last.pt").read_bytes() != good
    assert all(torch.isfinite(v).all() for v in state["decoder"].values() if v.is_floating_point())


@pytest.mark.parametrize("mirror", [False, True])
def test_the_loop_asks_for_flipped_batches_exactly_when_mirror_is_set(
    shapes_dataset, tmp_path, monkeypatch, mirror
):
    asked = []
    real = Dataset.train_batch

    def recording(self, indices, key, first=0, mirror=False):
        asked.append(mirror)
        return real(self, indices, key, first, mirror)

    monkeypatch.setattr(Dataset, "train_batch", recording)
    cfg = replace(TINY, steps=2, checkpoint_every=2, eval_every=100, mirror=mirror)
    train(cfg, shapes_dataset, tmp_path / "r", progress=False)
    assert asked == [mirror, mirror]


def test_checkpoint_write_that_crashes_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_atomic({"format_version": ckpt.FORMAT_VERSION, "step": 1}, path)

    def crash(obj, f, *a, **kw):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_atomic({"format_version": ckpt.FORMAT_VERSION, "step": 2}, path)
    monkeypatch.undo()
    assert ckpt.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_overrides_are_typed_and_unknown_fields_are_errors():
    cfg = apply_overrides(preset("cpu-demo"), ["width=24", "lr_dec=0.001", "amp=false"])
    assert (cfg.model.width, cfg.lr_dec, cfg.amp) == (24, 0.001, False)
    with pytest.raises(VaeganError, match="unknown field; known fields: latent_dim"):
        apply_overrides(cfg, ["widht=3"])
    with pytest.raises(VaeganError, match="expected a int"):
        apply_overrides(cfg, ["steps=many"])
    with pytest.raises(VaeganError, match="cannot change on --resume"):
        apply_overrides(cfg, ["width=8"], allow_model=False)
    assert preset("gpu").model == ModelConfig(image_size=64, latent_dim=100, width=64)
    assert preset("gpu").batch_size == 64


def test_cli_errors_are_one_line_and_nonzero(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a prepared dataset" in err[0]
    assert main(["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "d")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_second_train_into_the_same_run_needs_resume(shapes_dataset, tmp_path, capsys):
    args = [
        "train",
        "--data",
        str(shapes_dataset),
        "--out",
        str(tmp_path / "r"),
        "--preset",
        "smoke",
        "--set",
        "batch_size=8",
        "--steps",
        "2",
        "--quiet",
    ]
    assert main(args) == 0
    assert main(args) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main([*args[:-3], "--steps", "4", "--resume", "--quiet"]) == 0
    assert ckpt.load(tmp_path / "r" / "checkpoints" / "last.pt")["step"] == 4
