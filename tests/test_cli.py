"""The command-line surface: help for every command, and the demo data renderer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vaegan.training.demo_data import FONT_PATHS, render

HAS_FONT = any(__import__("os").path.isfile(p) for p in FONT_PATHS)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["prepare"],
        ["train"],
        ["demo-data"],
        ["export"],
        ["triton"],
        ["serve"],
        ["generate"],
        ["encode"],
        ["interpolate"],
        ["info"],
        ["batch"],
    ],
)
def test_every_command_explains_its_flags(argv):
    out = subprocess.run(
        [sys.executable, "-m", "vaegan.cli", *argv, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "usage: vaegan" in out
    if argv == ["train"]:
        for flag in (
            "--data",
            "--out",
            "--preset",
            "--steps",
            "--resume",
            "--set",
            "balance_margin",
        ):
            assert flag in out


@pytest.mark.skipif(not HAS_FONT, reason="fonts-noto-color-emoji is not installed (make demo-font)")
def test_demo_data_renders_colour_emoji_into_group_folders(tmp_path):
    n = render(tmp_path, limit=40, progress=False)
    files = sorted(tmp_path.rglob("*.png"))
    assert n == len(files) > 30
    im = np.asarray(Image.open(files[0]))
    assert im.shape == (128, 128, 3)
    assert len(np.unique(im.reshape(-1, 3), axis=0)) > 50  # a colour picture, not a blank tile
