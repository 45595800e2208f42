"""Short fuzzing runs (atheris, libFuzzer) over image decoding and request handling; the
long runs are `make fuzz`. A crash makes atheris exit non-zero with the input it found."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from fuzz.seeds import write_seeds

RUNS = {"fuzz.fuzz_image": 3000, "fuzz.fuzz_requests": 3000}


@pytest.mark.slow
@pytest.mark.parametrize("target", list(RUNS))
def test_short_fuzz_run_finds_no_crash(target, tmp_path):
    images, requests = write_seeds(tmp_path / "seeds")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = images if target.endswith("image") else requests
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            target,
            str(corpus),
            str(seeds),
            f"-atheris_runs={RUNS[target]}",
            "-rss_limit_mb=2048",
            "-timeout=20",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert re.search(rf"Done {RUNS[target]} (runs )?in", out), out[-2000:]
    assert not list(tmp_path.glob("crash-*"))
