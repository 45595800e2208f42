"""FID and precision/recall: the maths against closed forms, the real Inception's response to
damage, its integrity check, and the two places that use it (training and `vaegan evaluate`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageFilter

from vaegan.cli import main
from vaegan.export.evaluate import summary
from vaegan.training import fid


def _gaussian_features(rng, n, mean, std):
    return rng.normal(mean, std, size=(n, len(std)))


def test_frechet_distance_matches_the_closed_form_for_known_gaussians():
    rng = np.random.default_rng(0)
    d = 6
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    var_a, var_b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    # A shared rotation keeps the covariances commuting, so the closed form is per axis.
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = fid.Stats(mu_a, q @ np.diag(var_a) @ q.T, 100)
    b = fid.Stats(mu_b, q @ np.diag(var_b) @ q.T, 100)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
    assert fid.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert fid.frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)


def test_identical_sets_score_zero_and_distance_grows_with_the_shift():
    rng = np.random.default_rng(1)
    feats = _gaussian_features(rng, 500, 0.0, np.ones(16))
    s = fid.Stats.of(feats)
    assert abs(fid.frechet_distance(s, s)) < 1e-6
    shifts = [fid.frechet_distance(s, fid.Stats.of(feats + k)) for k in (0.1, 0.5, 1.0)]
    assert shifts == sorted(shifts) and shifts[0] > 0
    # the mean term is exactly d * k^2 when only the mean moves
    assert shifts[2] == pytest.approx(16 * 1.0**2, rel=1e-6)


def test_precision_and_recall_tell_coverage_from_fidelity():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(300, 8))
    assert fid.precision_recall(real, real.copy()) == (1.0, 1.0)
    far = rng.normal(size=(300, 8)) + 100.0
    assert fid.precision_recall(real, far) == (0.0, 0.0)
    # fakes from one corner of the real cloud: faithful but not covering it
    corner = real[real[:, 0] > 1.0]
    precision, recall = fid.precision_recall(real, corner)
    assert precision == 1.0 and recall < 0.5


def test_a_tampered_inception_file_is_refused_with_a_clear_error(tmp_path):
    original = fid.inception_path()
    tampered = tmp_path / fid.INCEPTION_FILE
    shutil.copyfile(original, tampered)
    with open(tampered, "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(fid.InceptionUnavailable, match=r"not the standard FID Inception \(sha1 "):
        fid.load_inception(tampered)
    with pytest.raises(fid.InceptionUnavailable, match="does not exist"):
        fid.load_inception(tmp_path / "missing.pt")


def test_the_resize_is_tensorflow_1s_bilinear_without_half_pixel_centres():
    import torch

    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    y = fid.tf_resize_bilinear(x, 8)
    # TF1: source = dest * in / out, so every even output pixel is an input pixel exactly,
    # odd ones are midpoints, and the last column repeats the edge.
    assert torch.equal(y[0, 0, ::2, ::2], x[0, 0])
    assert y[0, 0, 0, 1] == pytest.approx(0.5) and y[0, 0, 0, 7] == pytest.approx(3.0)


@pytest.fixture(scope="module")
def inception():
    return fid.InceptionFeatures(batch_size=16)


@pytest.mark.slow
def test_blurring_or_adding_noise_raises_fid_monotonically(inception):
    from conftest import pattern

    rng = np.random.default_rng(3)
    images = [np.asarray(pattern(64, 64, seed=s)) for s in range(24)]
    real = fid.Stats.of(inception(np.stack(images)))

    def fid_of(transform) -> float:
        return fid.frechet_distance(real, fid.Stats.of(inception(np.stack(transform(images)))))

    def blur(radius):
        return lambda ims: [
            np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius))) for im in ims
        ]

    def noise(sigma):
        return lambda ims: [
            np.clip(im + rng.normal(0, sigma, im.shape), 0, 255).astype(np.uint8) for im in ims
        ]

    blurred = [fid_of(blur(r)) for r in (0, 1, 3)]
    noisy = [fid_of(noise(s)) for s in (8, 32)]
    assert blurred[0] < 1e-3, blurred
    assert blurred[0] < blurred[1] < blurred[2], blurred
    assert blurred[0] < noisy[0] < noisy[1], noisy


@pytest.mark.slow
def test_training_logs_fid_and_keeps_the_best_checkpoint(shapes_dataset, tmp_path):
    from vaegan.training import checkpoint as ckpt
    from vaegan.training.config import ModelConfig, TrainConfig
    from vaegan.training.train import train

    cfg = TrainConfig(
        model=ModelConfig(width=8, latent_dim=16),
        steps=4,
        batch_size=16,
        eval_every=2,
        checkpoint_every=4,
        num_samples=8,
        fid_every=2,
        fid_samples=12,
    )
    run = tmp_path / "run"
    train(cfg, shapes_dataset, run, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert r["fid_n"] == 12 and r["fid_real_n"] == 64 and r["fid_samples"] > 0
        assert 0 <= r["precision_samples"] <= 1 and 0 <= r["recall_samples"] <= 1
    best = ckpt.load(run / "checkpoints" / ckpt.BEST)
    assert best["best_fid"] == min(r["fid_samples"] for r in rows)
    assert best["step"] == min(rows, key=lambda r: r["fid_samples"])["step"]
    assert list(shapes_dataset.glob("fid_real_*.npz")), "real-set features are cached"


@pytest.mark.slow
def test_evaluate_scores_an_exported_version_and_ends_with_its_figures(
    repo, shapes_dataset, tmp_path, capsys
):
    out = tmp_path / "eval.json"
    args = ["evaluate", "--repository", str(repo), "--data", str(shapes_dataset), "--n", "10"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 10 and result["real_n"] == 64 and result["version"] == "1"
    assert "train + val" in result["real_set"]
    for key in ("samples", "reconstructions", "reconstructions_val"):
        assert result[key]["fid"] > 0 and 0 <= result[key]["precision"] <= 1, key
    assert result["reconstructions_val"]["n"] == 16
    assert result["samples"]["nearest_code_ratio"] > 0
    assert "nearest_code_ratio" not in result["reconstructions"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("FID samples ") and "(n=10 each vs 64 real images)" in last
    # One kind alone scores the same images as in the full run.
    only = tmp_path / "only.json"
    grids = tmp_path / "grids"
    only_args = [*args, "--only", "reconstructions", "--out", str(only), "--grids", str(grids)]
    assert main([*only_args, "--quiet"]) == 0
    assert [p.name for p in grids.iterdir()] == ["reconstructions.png"]  # what was scored
    with Image.open(grids / "reconstructions.png") as grid:  # 10 images: 4 per row, 3 rows
        w, h = grid.size
        assert (w - 2) // 4 == (h - 2) // 3 > 2
    alone = json.loads(only.read_text())
    assert "samples" not in alone and "reconstructions_val" not in alone
    assert alone["reconstructions"]["fid"] == pytest.approx(result["reconstructions"]["fid"])
    # a folder that is not a prepared dataset is a one-line error, not a traceback
    assert main(["evaluate", "--repository", str(repo), "--data", str(tmp_path)]) == 2


def test_evaluate_scales_both_priors_draws_as_generate_does(shapes_dataset, monkeypatch):
    # The Inception is faked: this pins which codes are decoded, not their scores.
    from types import SimpleNamespace

    from vaegan import prior
    from vaegan.errors import VaeganError
    from vaegan.export import evaluate as ev

    monkeypatch.setattr(fid, "InceptionFeatures", lambda: lambda images, done: np.zeros((1, 2)))
    real = SimpleNamespace(images=np.zeros((8, 32, 32, 3), np.uint8), features=[0], description="")
    monkeypatch.setattr(fid, "real_set", lambda data, inception, progress: real)
    monkeypatch.setattr(fid, "score", lambda real, f: SimpleNamespace(as_dict=lambda: {}))
    mixture = prior.fit(np.random.default_rng(0).standard_normal((40, 4)), 3)
    decoded: list[np.ndarray] = []

    def decode(z):
        decoded.append(z)
        return np.zeros((len(z), 32, 32, 3), np.uint8)

    def encode(px):
        return np.random.default_rng(len(px)).standard_normal((len(px), 4))

    model = ev.Scored(encode, decode, 4, 32, {}, mixture)
    kinds = ("samples", "samples_fitted")
    for t in (1.0, 0.5):
        out = ev.evaluate(model, shapes_dataset, n=6, progress=False, kinds=kinds, temperature=t)
        assert out["temperature"] == t
        assert all(np.isfinite(out[k]["nearest_code_ratio"]) for k in kinds)
    (normal, fitted), (normal_half, fitted_half) = decoded[:2], decoded[2:]
    assert np.array_equal(normal_half, normal * 0.5)  # N(0, 0.5^2 I), the same seed
    # Around the same components, at half the spread.
    rng = np.random.default_rng(0)
    rng.standard_normal((6, 4))  # evaluate's N(0, I) draws,
    rng.choice(8, size=6, replace=False)  # and its pick of real images, come first
    means = mixture.means[rng.choice(len(mixture.weights), size=6, p=mixture.weights)]
    assert np.allclose(fitted_half - means, (fitted - means) * 0.5, atol=1e-5)
    with pytest.raises(VaeganError, match="temperature"):
        ev.evaluate(model, shapes_dataset, n=6, progress=False, temperature=0)


def test_evaluate_refines_both_priors_draws_as_generate_does(shapes_dataset, monkeypatch):
    # Inception faked, and a model whose encoder gives the last decoded code plus one: two
    # steps must decode each kind's draws, then those plus one, then the scored plus two.
    from types import SimpleNamespace

    from vaegan import prior
    from vaegan.errors import VaeganError
    from vaegan.export import evaluate as ev

    monkeypatch.setattr(fid, "InceptionFeatures", lambda: lambda images, done: np.zeros((1, 2)))
    real = SimpleNamespace(images=np.zeros((8, 32, 32, 3), np.uint8), features=[0], description="")
    monkeypatch.setattr(fid, "real_set", lambda data, inception, progress: real)
    monkeypatch.setattr(fid, "score", lambda real, f: SimpleNamespace(as_dict=lambda: {}))
    decoded: list[np.ndarray] = []

    def decode(z):
        decoded.append(z)
        return np.zeros((len(z), 32, 32, 3), np.uint8)

    def encode(px):
        if len(px) == len(decoded[-1]):
            return decoded[-1] + 1
        return np.random.default_rng(len(px)).standard_normal((len(px), 4))  # real images

    mixture = prior.fit(np.random.default_rng(0).standard_normal((40, 4)), 3)
    model = ev.Scored(encode, decode, 4, 32, {}, mixture)
    out = ev.evaluate(
        model,
        shapes_dataset,
        n=6,
        progress=False,
        kinds=("samples", "samples_fitted"),
        refine_steps=2,
    )
    assert out["refine_steps"] == 2 and len(decoded) == 6
    for first, second, scored in (decoded[:3], decoded[3:]):
        assert np.allclose(second, first + 1) and np.allclose(scored, first + 2)
    with pytest.raises(VaeganError, match=r"--refine 17: expected 0\.\.16"):
        ev.evaluate(model, shapes_dataset, n=6, progress=False, refine_steps=17)


def test_the_summary_line_names_only_what_was_scored():
    def q(fid, n=500):
        return {"fid": fid, "precision": 0.25, "recall": 0.5, "n": n}

    both = {"n": 500, "real_n": 1432, "samples": q(160.04), "reconstructions_val": q(157.0, 143)}
    assert summary(both) == (
        "FID samples 160.0 (n=500 each vs 1432 real images); precision/recall samples 0.25/0.50;"
        " validation reconstructions FID 157.0 (n=143 vs 1432 real images)"
    )
    val_only = {"n": 500, "real_n": 1432, "reconstructions_val": q(157.0, 143)}
    assert summary(val_only) == "validation reconstructions FID 157.0 (n=143 vs 1432 real images)"
    hot = {"n": 500, "real_n": 1432, "temperature": 2.0, "samples_fitted": q(110.0)}
    hot["samples_fitted"]["nearest_code_ratio"] = 1.234
    assert summary(hot).startswith(
        "FID samples (fitted prior) 110.0 (n=500 each vs 1432 real images; prior draws at"
        " temperature 2)"
    )
    assert summary(hot).endswith(
        "; nearest-training-code distance vs unseen images: samples (fitted prior) 1.23"
    )
    refined = {**hot, "refine_steps": 4}
    assert "; prior draws at temperature 2, refined 4 steps)" in summary(refined)
    assert "; prior draws refined 1 step)" in summary(
        {**hot, "temperature": 1.0, "refine_steps": 1}
    )
