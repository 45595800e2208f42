"""The command-line surface: help for every command, and the demo data renderer."""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vaegan.cli import build_parser
from vaegan.export.options import ExportOptions
from vaegan.training.demo_data import FONT_PATHS, render

HAS_FONT = any(__import__("os").path.isfile(p) for p in FONT_PATHS)


def _commands(parser: argparse.ArgumentParser, path=()):
    """Every command path the parser knows, nested groups included (attributes add...)."""
    yield list(path)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(build_parser()))


def test_the_command_list_is_the_parsers():
    names = {" ".join(c) for c in COMMANDS}
    assert {"prepare", "train", "export", "evaluate", "serve", "playground", "sweep"} <= names
    assert {"attributes add", "attributes list", "info", "demo-data", "triton"} <= names


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda c: " ".join(c) or "vaegan")
def test_every_command_explains_its_flags(argv):
    out = subprocess.run(
        [sys.executable, "-m", "vaegan.cli", *argv, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "usage: vaegan" in out
    parser = build_parser()
    for name in argv:
        parser = next(
            a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
        ).choices[name]
    for action in parser._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            assert action.help, f"vaegan {' '.join(argv)} {action.option_strings[0]} has no help"
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


def test_export_flags_default_to_the_export_options_defaults():
    from vaegan.commands.export import options_from

    a = build_parser().parse_args(["export", "--checkpoint", "c.pt", "--repository", "r"])
    assert options_from(a) == ExportOptions()
    a = build_parser().parse_args(
        [
            "export",
            "--checkpoint",
            "c.pt",
            "--repository",
            "r",
            "--instances",
            "3",
            "--preferred-batch-size",
            "8",
            "16",
            "--trt-max-batch",
            "32",
            "--fp16",
        ]
    )
    opts = options_from(a)
    assert opts.batching.instance_count == 3 and opts.batching.preferred_batch_sizes == (8, 16)
    assert opts.trt_profile.max_batch == 32 and opts.fp16


def test_train_relaunches_the_command_line_it_was_given_less_nproc():
    from vaegan.commands.train import without_nproc

    argv = ["train", "--data", "d", "--nproc", "2", "--out", "r", "--nproc=4", "--quiet"]
    assert without_nproc(argv) == ["train", "--data", "d", "--out", "r", "--quiet"]


@pytest.mark.skipif(not HAS_FONT, reason="fonts-noto-color-emoji is not installed (make demo-font)")
def test_demo_data_renders_colour_emoji_into_group_folders(tmp_path):
    n = render(tmp_path, limit=40, progress=False)
    files = sorted(tmp_path.rglob("*.png"))
    assert n == len(files) > 30
    im = np.asarray(Image.open(files[0]))
    assert im.shape == (128, 128, 3)
    assert len(np.unique(im.reshape(-1, 3), axis=0)) > 50  # a colour picture, not a blank tile
