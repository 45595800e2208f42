"""The playground page: its JSON API over real HTTP and gRPC, and the page itself in a real
browser (Debian's chromium driven by playwright-core, no browser download)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gateway_harness import GatewayThread, wait_until

from vaegan.host import free_port
from vaegan.service.settings import Settings

BROWSER_DIR = Path(__file__).with_name("browser")


@pytest.fixture(scope="module")
def playground(latent_repo):
    """The gateway (embedded backend, the latent_rpc repository with its directions) and
    `vaegan playground` in front of it, as a separate process."""
    with GatewayThread(Settings(model_repository=str(latent_repo))) as gw:
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vaegan.cli",
                "playground",
                "--target",
                gw.target,
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _get(url + "/api/info") is not None, timeout=30)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _get(url):
    try:
        return json.loads(urllib.request.urlopen(url, timeout=5).read())
    except (urllib.error.URLError, ConnectionError):
        return None


def _post(url, data: bytes, content_type="application/octet-stream"):
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_playground_api_reports_the_model_and_its_directions(playground):
    info = _get(playground + "/api/info")
    assert info["decoder_version"] == "1" and info["latent_dim"] == 16
    assert {a["name"] for a in info["attributes"]} == {"round", "pc1", "pc2", "pc3"}


def test_playground_api_rejects_a_bad_upload_with_the_gateways_message(playground):
    status, body = _post(playground + "/api/encode", b"this is not an image")
    assert status == 400
    err = json.loads(body)
    assert err["code"] == "INVALID_ARGUMENT" and "not a PNG or JPEG" in err["error"]


def test_playground_api_edit_and_walk(playground, latent_repo):
    image = next((latent_repo.parent / "discs").iterdir()).read_bytes()
    status, body = _post(playground + "/api/encode", image)
    assert status == 200
    z = json.loads(body)["embedding"]
    status, body = _post(
        playground + "/api/edit",
        json.dumps({"embedding": z, "weights": {"round": 1}}).encode(),
        "application/json",
    )
    assert status == 200 and json.loads(body)["image"].startswith("data:image/png;base64,")
    status, body = _post(
        playground + "/api/interpolate",
        json.dumps({"a": z, "b": [0.0] * 16, "steps": 3}).encode(),
        "application/json",
    )
    frames = [json.loads(line) for line in body.decode().splitlines()]
    assert status == 200 and [f["index"] for f in frames] == [0, 1, 2, 3, 4]


def _browser_missing() -> str | None:
    if not shutil.which("chromium"):
        return "Debian's chromium is not installed (apt-get install chromium)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (make browser)"
    if not shutil.which("node"):
        return "node is not installed"
    return None


@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
def test_playground_page_in_a_real_browser(playground, latent_repo, tmp_path):
    discs = sorted((latent_repo.parent / "discs").iterdir())
    junk = tmp_path / "notes.png"
    junk.write_text("not really a PNG")
    shot = tmp_path / "playground.png"
    r = subprocess.run(
        [
            "node",
            str(BROWSER_DIR / "playground.mjs"),
            playground,
            str(discs[0]),
            str(discs[1]),
            str(junk),
            str(shot),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=BROWSER_DIR,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["version"].startswith("model version 1 · latent 16 · 32px")
    assert set(seen["sliders"]) == {"round", "pc1", "pc2", "pc3"}
    assert "notes.png was rejected: INVALID_ARGUMENT" in seen["rejection"]
    assert seen["error_after_good_upload"] == ""
    assert json.loads(seen["edited_weights"]) == {seen["sliders"][0]: 2}  # the edit came back
    assert seen["walk_caption"] == "frame 16 of 16"
    assert all(w == 32 for w in seen["images_loaded"])  # every picture on the page decoded
    assert seen["console_errors"] == []
    assert shot.stat().st_size > 10_000
    keep = Path(__file__).resolve().parent.parent / "outputs" / "playground.png"
    keep.parent.mkdir(exist_ok=True)
    shutil.copy(shot, keep)  # for a person to look at
