"""Latent directions: the arithmetic, where they are stored, and the CLI on a real export."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import shapes_folder
from PIL import Image

from vaegan import repository as store
from vaegan.cli import main
from vaegan.errors import FailedPrecondition, InvalidInput, NotFound, VaeganError
from vaegan.latent import (
    Direction,
    analogy,
    attribute_direction,
    edit,
    principal_directions,
    roc_auc,
    sweep,
)


def test_roc_auc_matches_counting_pairs_with_ties_as_half():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 30).astype(float), rng.integers(0, 4, 20).astype(float)
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert roc_auc(pos, neg) == pytest.approx(np.mean(pairs))


def test_attribute_direction_is_the_unit_gap_between_the_means():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (40, 6)) + np.array([3, 0, 0, 0, 0, 0])
    b = rng.normal(0, 1, (30, 6))
    d = attribute_direction("x", a, b)
    gap = a.mean(0) - b.mean(0)
    assert np.allclose(d.array(), gap / np.linalg.norm(gap), atol=1e-6)
    assert d.scale == pytest.approx(np.linalg.norm(gap)) and d.counts == {"with": 40, "without": 30}
    assert d.auc > 0.95


def test_too_few_images_for_a_direction_are_refused():
    with pytest.raises(InvalidInput, match="3 images without it; at least 8"):
        attribute_direction("x", np.ones((10, 4)), np.zeros((3, 4)))


def test_principal_directions_are_orthonormal_and_ordered_by_variance():
    rng = np.random.default_rng(2)
    mu = rng.normal(0, 1, (500, 5)) * [5, 3, 1, 0.5, 0.1]
    pcs = principal_directions(mu, 3)
    v = np.stack([d.array() for d in pcs])
    assert np.allclose(v @ v.T, np.eye(3), atol=1e-5)
    assert abs(v[0, 0]) > 0.99 and abs(v[1, 1]) > 0.99  # the axes of largest spread
    assert [d.name for d in pcs] == ["pc1", "pc2", "pc3"]
    assert pcs[0].scale == pytest.approx(5, rel=0.1)  # weight 1 = one standard deviation
    assert pcs[0].explained_variance > pcs[1].explained_variance > pcs[2].explained_variance


def test_edit_sweep_and_analogy_move_along_the_named_directions():
    d = Direction("up", [0.0, 1.0], "attribute", scale=2.0)
    z = np.zeros((1, 2), np.float32)
    assert np.allclose(edit(z, {"up": d}, {"up": 1.5}), [[0, 3]])
    assert np.allclose(sweep(z, d, [-1, 0, 1]), [[0, -2], [0, 0], [0, 2]])
    with pytest.raises(NotFound, match=r"no direction 'down'.*known: up"):
        edit(z, {"up": d}, {"down": 1})
    a, b, c = np.array([[1.0, 1]]), np.array([[1.0, 0]]), np.array([[0.0, 0], [2, 0]])
    assert np.allclose(analogy(a, b, c), [1, 1])


@pytest.fixture
def own_repo(repo, tmp_path) -> Path:
    """A private copy of the exported tiny model: these tests write directions into it."""
    return Path(shutil.copytree(repo, tmp_path / "repo"))


@pytest.fixture(scope="module")
def discs_and_squares(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("attr")
    everything = shapes_folder(base / "all", n=40, seed=7)
    discs, squares = base / "discs", base / "squares"
    discs.mkdir(), squares.mkdir()
    for i, p in enumerate(sorted(everything.iterdir())):  # odd: disc, even: square
        shutil.copy(p, (discs if i % 2 else squares) / p.name)
    return discs, squares


def test_attributes_add_stores_the_direction_with_its_version(own_repo, discs_and_squares, capsys):
    discs, squares = discs_and_squares
    args = ["attributes", "add", "round", "--with", str(discs), "--without", str(squares)]
    assert main([*args, "--repository", str(own_repo)]) == 0
    assert "20 images with, 20 without" in capsys.readouterr().out
    saved = json.loads((own_repo / "vaegan_decoder" / "1" / "directions.json").read_text())
    assert saved["model"]["model_version"] == "1"
    assert saved["model"]["vaegan_decoder_onnx_sha256"]
    d = saved["directions"]["round"]
    assert d["kind"] == "attribute" and len(d["vector"]) == 16
    assert np.linalg.norm(d["vector"]) == pytest.approx(1, abs=1e-5)
    assert main(["attributes", "list", "--repository", str(own_repo)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert list(listed["directions"]) == ["round"] and "vector" not in listed["directions"]["round"]


def test_a_directions_file_from_another_version_is_refused(own_repo, discs_and_squares):
    discs, squares = discs_and_squares
    from vaegan.export.latent_tools import add_attribute

    add_attribute(own_repo, "round", discs, squares)
    # A re-export as version 2 (other graphs), with version 1's file carried along.
    for model in ("vaegan_encoder", "vaegan_decoder"):
        shutil.copytree(own_repo / model / "1", own_repo / model / "2")
        facts = own_repo / model / "2" / "facts.json"
        facts.write_text(json.dumps({**json.loads(facts.read_text()), "onnx_sha256": "other"}))
    with pytest.raises(VaeganError, match="was written for other graphs"):
        store.load_directions(own_repo, "2")
    assert list(store.load_directions(own_repo, "1")) == ["round"]


@pytest.mark.parametrize(
    "name", ['<img src=x onerror="alert(1)">', "a b", "dim3", "x" * 65, "_hidden", ""]
)
def test_a_direction_name_that_is_not_a_plain_word_is_refused_where_it_is_made(
    own_repo, discs_and_squares, capsys, name
):
    discs, squares = discs_and_squares
    args = ["attributes", "add", name, "--with", str(discs), "--without", str(squares)]
    assert main([*args, "--repository", str(own_repo)]) == 2
    assert "a letter, then letters, digits" in capsys.readouterr().err
    assert not (own_repo / "vaegan_decoder" / "1" / "directions.json").exists()


def test_too_few_images_exit_2_and_write_nothing(own_repo, discs_and_squares, tmp_path, capsys):
    discs, _ = discs_and_squares
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(discs.iterdir())[:3]:
        shutil.copy(p, few / p.name)
    args = ["attributes", "add", "round", "--with", str(discs), "--without", str(few)]
    assert main([*args, "--repository", str(own_repo)]) == 2
    assert "3 images without it; at least 8" in capsys.readouterr().err
    assert not (own_repo / "vaegan_decoder" / "1" / "directions.json").exists()


def test_sweep_writes_one_row_per_image_and_one_column_per_weight(
    own_repo, discs_and_squares, tmp_path
):
    discs, squares = discs_and_squares
    from vaegan.export.latent_tools import add_attribute

    add_attribute(own_repo, "round", discs, squares)
    images = [str(p) for p in sorted(squares.iterdir())[:3]]
    out = tmp_path / "sweep.png"
    args = ["sweep", *images, "--direction", "round", "--steps", "5", "--out", str(out)]
    assert main([*args, "--repository", str(own_repo)]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape[0] > grid.shape[1] / 5 * 2  # 3 rows of 32 px tiles, 5 columns
    assert (
        main([*args[:-2], "--direction", "pc9", "--out", str(out), "--repository", str(own_repo)])
        == 2
    )


def test_export_with_data_stores_principal_directions_and_prior_with_the_new_version(
    tiny_checkpoint, shapes_dataset, tmp_path
):
    from vaegan.export.export import export, training_codes
    from vaegan.export.options import ExportOptions
    from vaegan.training.checkpoint import load_model

    opts = ExportOptions(
        backend="onnxruntime", data=str(shapes_dataset), principal_directions=3, prior_components=4
    )
    export(tiny_checkpoint, tmp_path / "repo", opts, log=lambda *_: None)
    found = store.load_directions(tmp_path / "repo", "1")  # checked against the version's graphs
    assert [found[n].kind for n in ("pc1", "pc2", "pc3")] == ["principal"] * 3
    assert found["pc1"].counts == {"images": 48}
    assert found["pc1"].explained_variance >= found["pc2"].explained_variance
    mixture = store.load_prior(tmp_path / "repo", "1")
    assert mixture is not None and len(mixture.weights) == 4 and mixture.codes == 48
    codes = training_codes(load_model(tiny_checkpoint)[0], shapes_dataset, 4096)
    assert np.allclose(mixture.weights @ mixture.means, codes.mean(0), atol=1e-4)
    export(
        tiny_checkpoint,
        tmp_path / "repo",
        ExportOptions(backend="onnxruntime"),
        log=lambda *_: None,
    )
    assert (
        store.load_directions(tmp_path / "repo", "2") == {}
    )  # no --data: no directions, none borrowed
    assert store.load_prior(tmp_path / "repo", "2") is None
    # a prior copied from another version is refused, not used
    shutil.copy(store.prior_path(tmp_path / "repo", "1"), store.prior_path(tmp_path / "repo", "2"))
    with pytest.raises(FailedPrecondition, match="was written for other graphs"):
        store.load_prior(tmp_path / "repo", "2")


def test_raw_latent_axes_are_directions_of_every_model():
    from vaegan.latent import lookup

    d = lookup({}, "dim3", latent_dim=8)
    assert d.array().tolist() == [0, 0, 0, 1, 0, 0, 0, 0] and d.scale == 1
    with pytest.raises(InvalidInput, match=r"dim0\.\.dim7"):
        lookup({}, "dim8", latent_dim=8)
    with pytest.raises(NotFound):
        lookup({}, "dim3")  # without the model's latent size there are no axes


def test_per_dimension_sweep_grid_has_one_row_per_dimension(own_repo, discs_and_squares, tmp_path):
    _, squares = discs_and_squares
    out = tmp_path / "dims.png"
    image = str(next(squares.iterdir()))
    args = ["sweep", image, "--direction", "4", "--steps", "5", "--out", str(out)]
    assert main([*args, "--repository", str(own_repo)]) == 0
    grid = np.asarray(Image.open(out))
    tile = (grid.shape[1] - 2) // 5  # save_grid's padding: rows and columns of equal tiles
    assert round((grid.shape[0] - 2) / tile) == 4


def test_export_says_how_near_the_fitted_priors_draws_land_and_warns_when_they_redraw_training_images(
    tiny_checkpoint, shapes_dataset, tmp_path, monkeypatch
):
    from vaegan.export import export as ex
    from vaegan.export.options import ExportOptions

    monkeypatch.setattr(ex, "MIN_UNSEEN", 16)  # the shapes hold 16 validation images

    def run(components: int) -> list[str]:
        lines: list[str] = []
        opts = ExportOptions(
            backend="onnxruntime", data=str(shapes_dataset), prior_components=components
        )
        ex.export(tiny_checkpoint, tmp_path / f"repo{components}", opts, log=lines.append)
        return lines

    one, hugging = run(1), run(24)  # 24 components for 48 codes: two codes each
    said = [re.search(r"its draws land (\d+\.\d+)x as far", "\n".join(x)) for x in (one, hugging)]
    assert all(said)
    assert float(said[1][1]) < 1 < float(said[0][1])
    assert any(line.startswith("warning: the fitted prior's draws sit nearer") for line in hugging)
    assert not any(line.startswith("warning") for line in one)
    # Too few validation images to judge: nothing said.
    monkeypatch.setattr(ex, "MIN_UNSEEN", 17)
    assert not any("its draws land" in line for line in run(2))


def test_a_fitted_prior_finds_well_separated_clusters_and_samples_them():
    from vaegan import prior

    rng = np.random.default_rng(0)
    centres = np.array([[-6.0, 0, 0], [6.0, 0, 0], [0, 6.0, 0]])
    codes = np.concatenate(
        [
            c + 0.3 * rng.standard_normal((n, 3))
            for c, n in zip(centres, (100, 200, 100), strict=True)
        ]
    )
    m = prior.fit(codes, 3)
    order = np.argsort(m.means[:, 0] + 0.1 * m.means[:, 1])
    assert np.allclose(m.means[order], centres[[0, 2, 1]], atol=0.15)
    assert np.allclose(m.weights[order], [0.25, 0.25, 0.5], atol=0.02)
    z = m.sample(4000, np.random.default_rng(1))
    assert z.dtype == np.float32 and z.shape == (4000, 3)
    nearest = np.argmin(((z[:, None] - centres[None]) ** 2).sum(-1), 1)
    assert np.allclose(np.bincount(nearest) / 4000, [0.25, 0.5, 0.25], atol=0.03)
    # each draw stays near a cluster: none lands in the hole between them
    assert np.min(((z[:, None] - centres[None]) ** 2).sum(-1), 1).max() < 4.0
    narrow = m.sample(4000, np.random.default_rng(1), temperature=0.5)
    assert narrow.std() < z.std()


def test_the_nearest_code_ratio_tells_a_prior_that_copies_its_codes_from_one_that_generalises():
    from vaegan import prior

    rng = np.random.default_rng(3)
    train, unseen = rng.standard_normal((400, 6)), rng.standard_normal((100, 6))
    fresh = rng.standard_normal((500, 6))  # new draws of the codes' own distribution
    assert 0.85 < prior.nearest_code_ratio(fresh, train, unseen) < 1.15
    copies = train[rng.integers(0, 400, 500)] + 0.01 * rng.standard_normal((500, 6))
    assert prior.nearest_code_ratio(copies, train, unseen) < 0.05
    holes = 4 * rng.standard_normal((500, 6))  # far outside where the codes are
    assert prior.nearest_code_ratio(holes, train, unseen) > 2
    # A mixture with a component for every two codes hugs them; one Gaussian does not.
    many, one = prior.fit(train, 200), prior.fit(train, 1)
    hug = prior.nearest_code_ratio(many.sample(500, rng), train, unseen)
    assert hug < 0.9 < prior.nearest_code_ratio(one.sample(500, rng), train, unseen)
    # Chunking the distances changes nothing.
    brute = np.sqrt(((fresh[:, None] - train[None]) ** 2).sum(-1)).min(1)
    assert np.allclose(prior._nearest(fresh, train, chunk=7), brute)


def test_a_fitted_prior_round_trips_through_its_file_form_and_refuses_garbage():
    from vaegan import prior
    from vaegan.errors import VaeganError

    m = prior.fit(np.random.default_rng(2).standard_normal((50, 4)), 2)
    again = prior.GaussianMixture.from_dict(m.to_dict())
    assert np.array_equal(
        m.sample(5, np.random.default_rng(3)), again.sample(5, np.random.default_rng(3))
    )
    bad = m.to_dict() | {"means": [[float("nan")] * 4] * 2}
    with pytest.raises(VaeganError, match="NaN"):
        prior.GaussianMixture.from_dict(bad)
    with pytest.raises(VaeganError, match="gaussian_mixture"):
        prior.GaussianMixture.from_dict({"kind": "gaussian_mixture", "means": [1, 2]})
