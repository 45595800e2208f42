"""`vaegan prepare`: every kind of input file, both crop modes, the split, the round trip."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import pattern

from vaegan.errors import VaeganError
from vaegan.preprocess import CropPolicy, preprocess
from vaegan.training.data import load_dataset
from vaegan.training.prepare import find_images, prepare, split_indices


def test_zoo_is_prepared_with_every_bad_file_skipped_and_counted(image_zoo, tmp_path):
    m = prepare(
        image_zoo,
        tmp_path / "ds",
        center_crop=True,
        val_fraction=0.2,
        max_pixels=100_000,
        workers=1,
        progress=False,
    )
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert reasons == {
        "truncated.jpg": "truncated",
        "truncated.png": "truncated",
        "notes.jpg": "not_an_image",
        "animated.png": "unsupported_format",
        "bomb.png": "too_large",
        "large.png": "too_large",
    }
    assert m["counts"]["found"] == 15 and m["counts"]["skipped"] == 6  # readme.txt is not looked at
    assert m["counts"]["train"] + m["counts"]["val"] == 9
    on_disk = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert on_disk["skipped_by_reason"] == {
        "truncated": 2,
        "not_an_image": 1,
        "unsupported_format": 1,
        "too_large": 2,
    }


def test_links_to_files_outside_the_image_folder_are_skipped_not_read(image_zoo, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(image_zoo, folder, symlinks=True)
    secret = tmp_path / "elsewhere" / "private.png"
    secret.parent.mkdir()
    shutil.copy(image_zoo / "plain.png", secret)
    (folder / "link_out.png").symlink_to(secret)
    (folder / "link_in.png").symlink_to(folder / "plain.png")  # inside: read as usual
    m = prepare(
        folder, tmp_path / "ds", center_crop=True, max_pixels=100_000, workers=1, progress=False
    )
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert reasons["link_out.png"] == "outside_folder"
    assert "link_in.png" not in reasons
    assert m["counts"]["found"] == 17 and m["counts"]["train"] + m["counts"]["val"] == 10


def test_stored_images_are_exactly_what_serving_computes(image_zoo, tmp_path):
    # Regression: the original tool cropped differently in training and serving.
    prepare(
        image_zoo,
        tmp_path / "ds",
        center_crop=True,
        val_fraction=0.3,
        max_pixels=100_000,
        workers=2,
        progress=False,
    )
    ds = load_dataset(tmp_path / "ds")
    policy = CropPolicy("center", 0.75, 64)
    expected = {
        p.name: preprocess(p.read_bytes(), policy)
        for p in find_images(image_zoo)[0]
        if p.name
        in {
            "photo.jpg",
            "UPPER.JPG",
            "plain.png",
            "rgba.png",
            "grey.png",
            "cmyk.jpg",
            "palette.png",
            "sixteen.png",
            "tiny.png",
        }
    }
    stored = [ds.train[i] for i in range(len(ds.train))] + [ds.val[i] for i in range(len(ds.val))]
    for e in expected.values():
        assert sum(np.array_equal(arr, e) for arr in stored) == 1
    assert len(stored) == len(expected) == 9  # one stored array per usable file


def test_center_crop_flag_changes_what_is_stored(image_zoo, tmp_path):
    # Regression: the original tool's centre-crop flag did nothing.
    kw = dict(val_fraction=0.0, max_pixels=1_000_000, workers=1, progress=False)
    center = load_dataset(
        prepare(image_zoo, tmp_path / "c", center_crop=True, **kw) and tmp_path / "c"
    )
    rand = load_dataset(
        prepare(image_zoo, tmp_path / "r", center_crop=False, **kw) and tmp_path / "r"
    )
    assert center.crop.mode == "center" and rand.crop.mode == "random"
    assert {tuple(center.train.index[i, 1:]) for i in range(len(center.train))} == {(64, 64)}
    assert all(min(h, w) == 85 for _, h, w in rand.train.index)  # canvases for random windows
    idx = np.arange(len(rand.train))
    a = rand.train_batch(idx, [0])
    b = rand.train_batch(idx, [1])
    assert a.shape == (len(idx), 64, 64, 3) and not np.array_equal(a, b)  # crops vary by epoch
    c = center.train_batch(idx, [0])
    assert np.array_equal(c, center.train_batch(idx, [1]))


@pytest.mark.parametrize("center_crop", [True, False])
def test_mirror_flips_about_half_the_images_and_a_rank_split_flips_the_same_ones(
    image_zoo, tmp_path, center_crop
):
    prepare(
        image_zoo,
        tmp_path / "d",
        center_crop=center_crop,
        val_fraction=0.0,
        max_pixels=1_000_000,
        workers=1,
        progress=False,
    )
    ds = load_dataset(tmp_path / "d")
    idx = np.resize(np.arange(len(ds.train)), 64)
    plain = ds.train_batch(idx, [0, 5, 1])
    mirrored = ds.train_batch(idx, [0, 5, 1], mirror=True)
    same = [np.array_equal(m, p) for m, p in zip(mirrored, plain, strict=True)]
    flipped = [np.array_equal(m, p[:, ::-1]) for m, p in zip(mirrored, plain, strict=True)]
    # The windows are the ones cut without mirror; each is kept or flipped, never anything else.
    assert all(s or f for s, f in zip(same, flipped, strict=True))
    assert 16 <= sum(f and not s for s, f in zip(same, flipped, strict=True)) <= 48
    # Two ranks loading halves of the batch flip exactly what one rank loading it all does.
    halves = [ds.train_batch(idx[i : i + 32], [0, 5, 1], first=i, mirror=True) for i in (0, 32)]
    assert np.array_equal(np.concatenate(halves), mirrored)
    assert not np.array_equal(ds.train_batch(idx, [0, 6, 1], mirror=True), mirrored)


def test_split_is_deterministic_per_seed_and_sized_by_fraction():
    a, b, c = split_indices(100, 0.2, 7), split_indices(100, 0.2, 7), split_indices(100, 0.2, 8)
    assert a.sum() == 20 and np.array_equal(a, b) and not np.array_equal(a, c)
    assert split_indices(5, 0.01, 0).sum() == 1  # never an empty validation set by rounding
    assert split_indices(5, 0.0, 0).sum() == 0


def test_same_folder_and_seed_give_identical_datasets(image_zoo, tmp_path):
    kw = dict(center_crop=False, val_fraction=0.3, seed=3, max_pixels=100_000, progress=False)
    prepare(image_zoo, tmp_path / "a", workers=1, **kw)
    prepare(image_zoo, tmp_path / "b", workers=2, **kw)
    for name in ("train.u8", "train.idx.npy", "val.u8", "val.idx.npy", "train_mean.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_dataset_round_trips_through_memory_mapped_arrays(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        pattern(80 + i, 70, i).save(src / f"{i:02d}.png")
    prepare(src, tmp_path / "ds", center_crop=True, val_fraction=0.25, workers=1, progress=False)
    ds = load_dataset(tmp_path / "ds")
    assert (len(ds.train), len(ds.val)) == (9, 3)
    val = ds.val_images()
    assert isinstance(val, np.memmap) and val.shape == (3, 64, 64, 3)
    assert ds.train_mean.shape == (64, 64, 3) and 0 < ds.train_mean.mean() < 1
    stacked = np.stack([ds.train[i] for i in range(len(ds.train))])
    assert np.allclose(stacked.mean(0) / 255.0, ds.train_mean, atol=1e-6)


def test_failed_prepare_leaves_no_output_and_refuses_to_overwrite(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("not an image")
    with pytest.raises(VaeganError, match="none of the 1 files"):
        prepare(bad, tmp_path / "out", workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no output, no temp folder
    (tmp_path / "exists").mkdir()
    with pytest.raises(VaeganError, match="--overwrite"):
        prepare(bad, tmp_path / "exists", workers=1, progress=False)
    with pytest.raises(VaeganError, match=r"no \.jpg"):
        prepare(tmp_path / "exists", tmp_path / "o2", workers=1, progress=False)
