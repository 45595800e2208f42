"""The prepared dataset on disk: ragged uint8 image arrays, memory-mapped.

Layout of a dataset folder (written by ``vaegan prepare``)::

    manifest.json          counts, crop policy, source folder, skipped files and why
    train.u8 train.idx.npy training images (ragged: canvases for random crops)
    val.u8   val.idx.npy   validation images, always the exact serving crop
    train_mean.npy         float32 [size, size, 3] in [0, 1]: mean training crop

``*.u8`` holds the images' bytes back to back; ``*.idx.npy`` is int64 [N, 3] holding
(offset, height, width) per image, so variable-size canvases need no padding and nothing
is decoded again at train time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaegan.errors import VaeganError
from vaegan.preprocess import CropPolicy, random_window

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class RaggedWriter:
    """Appends uint8 [h, w, 3] arrays to ``<prefix>.u8`` without keeping them in memory."""

    def __init__(self, prefix: Path):
        self.prefix = prefix
        self._f = open(f"{prefix}.u8", "wb")  # noqa: SIM115 (closed in close())
        self._index: list[tuple[int, int, int]] = []
        self._offset = 0

    def append(self, arr: np.ndarray) -> None:
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3, arr.shape
        data = np.ascontiguousarray(arr).tobytes()
        self._f.write(data)
        self._index.append((self._offset, arr.shape[0], arr.shape[1]))
        self._offset += len(data)

    def __len__(self) -> int:
        return len(self._index)

    def close(self) -> None:
        self._f.close()
        np.save(f"{self.prefix}.idx.npy", np.asarray(self._index, np.int64).reshape(-1, 3))


class RaggedImages:
    """Read side of :class:`RaggedWriter`: ``images[i]`` is a uint8 [h, w, 3] view."""

    def __init__(self, prefix: Path):
        self.index = np.load(f"{prefix}.idx.npy")
        size = Path(f"{prefix}.u8").stat().st_size
        # np.memmap refuses empty files; an empty split is legal (e.g. val_fraction=0).
        self._data = np.memmap(f"{prefix}.u8", np.uint8, "r") if size else np.empty(0, np.uint8)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        off, h, w = (int(v) for v in self.index[i])
        return self._data[off : off + h * w * 3].reshape(h, w, 3)

    def stacked(self) -> np.ndarray:
        """All images as one [N, h, w, 3] view; only when they all share one size."""
        if len(self) == 0:
            raise VaeganError("the split is empty")
        shapes = {(int(h), int(w)) for _, h, w in self.index}
        if len(shapes) != 1:
            raise VaeganError("images differ in size; crop them first")
        (h, w), n = shapes.pop(), len(self)
        return self._data[: n * h * w * 3].reshape(n, h, w, 3)


@dataclass
class Dataset:
    root: Path
    manifest: dict[str, Any]
    train: RaggedImages
    val: RaggedImages
    train_mean: np.ndarray

    @property
    def crop(self) -> CropPolicy:
        return CropPolicy.from_dict(self.manifest["crop"])

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.root.name))

    def val_images(self) -> np.ndarray:
        return self.val.stacked()

    def center_crop(self, i: int) -> np.ndarray:
        """Training image ``i`` as serving sees it: a stored crop, or a canvas's centre window."""
        img, size = self.train[int(i)], self.crop.size
        top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
        return img[top : top + size, left : left + size]

    def train_batch(
        self, indices: np.ndarray, key: list[int], first: int = 0, mirror: bool = False
    ) -> np.ndarray:
        """uint8 [B, size, size, 3]: stored crops, or fresh random windows of canvases, each
        flipped left-right with probability 1/2 when ``mirror``. The window and flip of the
        image at position ``first + j`` of a batch come from its own generator seeded by
        ``key + [first + j]``, so a rank loading positions 32..63 of a batch cuts the same
        windows one rank loading all 64 would."""
        size = self.crop.size
        out = np.empty((len(indices), size, size, 3), np.uint8)
        for j, i in enumerate(indices):
            img = self.train[int(i)]
            stored = img.shape[0] == size == img.shape[1]
            # A generator only where one is drawn from: a stored crop without mirror needs none.
            rng = None if stored and not mirror else np.random.default_rng([*key, first + j])
            out[j] = img if stored else random_window(img, size, rng)
            if mirror and rng.random() < 0.5:
                out[j] = out[j, :, ::-1]
        return out


def load_dataset(root: str | Path) -> Dataset:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise VaeganError(f"{root} is not a prepared dataset (no {MANIFEST}); run 'vaegan prepare'")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise VaeganError(
            f"{root} was prepared by another version (format {manifest.get('format_version')},"
            f" expected {FORMAT_VERSION}); run 'vaegan prepare' again"
        )
    return Dataset(
        root=root,
        manifest=manifest,
        train=RaggedImages(root / "train"),
        val=RaggedImages(root / "val"),
        train_mean=np.load(root / "train_mean.npy"),
    )
