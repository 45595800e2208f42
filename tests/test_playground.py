"""The playground page: its JSON API over real HTTP and gRPC, and the page itself in a real
browser (Debian's chromium driven by playwright-core, no browser download)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import mutual_tls
from gateway_harness import GatewayThread, wait_until

from vaegan.host import free_port
from vaegan.service.settings import Settings

BROWSER_DIR = Path(__file__).with_name("browser")


ACCESS = "page-token-for-tests"  # the playground's own access token
GATEWAY_TOKEN = "gateway-token-for-tests"
AUTH = {"Authorization": f"Bearer {ACCESS}"}


@pytest.fixture(scope="module")
def playground(latent_repo, pki):
    """The gateway (embedded backend, the latent_rpc repository with its directions) behind
    mutual TLS and a bearer token, and `vaegan playground` in front of it as a separate
    process, reaching it with a client certificate and the token, with its own access token."""
    d = pki["dir"]
    settings = Settings(
        model_repository=str(latent_repo), **mutual_tls(pki), auth_tokens=GATEWAY_TOKEN
    )
    with GatewayThread(settings) as gw:
        port = free_port()
        flags = {
            "--target": f"localhost:{gw.settings.port}",
            "--tls-ca": d / "ca.pem",
            "--tls-cert": d / "client.pem",
            "--tls-key": d / "client.key",
            "--port": port,
            "--allowed-host": "playground.test",
        }
        env = dict(os.environ, VAEGAN_TOKEN=GATEWAY_TOKEN, VAEGAN_PLAYGROUND_TOKEN=ACCESS)
        proc = subprocess.Popen(
            [sys.executable, "-m", "vaegan.cli", "playground"]
            + [str(x) for kv in flags.items() for x in kv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _get(url + "/api/info") is not None, timeout=30)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _request(url, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=data, headers={**AUTH, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _get(url):
    try:
        status, body = _request(url)
    except (urllib.error.URLError, ConnectionError):
        return None
    return json.loads(body) if status == 200 else None


def _post(url, data: bytes, content_type="application/octet-stream", **headers):
    return _request(url, data, {"Content-Type": content_type, **headers})


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


def test_playground_api_draws_from_the_fitted_prior_and_repeats_with_the_seed(playground):
    info = _get(playground + "/api/info")
    assert info["fitted_prior"]  # latent_repo stores one

    def draw(**body):
        return _post(playground + "/api/sample", json.dumps(body).encode(), "application/json")

    status, body = draw(seed=5, prior="fitted", refine_steps=2)
    first = json.loads(body)
    assert status == 200 and len(first["embedding"]) == 16
    assert first["image"].startswith("data:image/png;base64,") and first["version"] == "1"
    assert json.loads(draw(seed=5, prior="fitted", refine_steps=2)[1]) == first
    assert json.loads(draw(seed=5, prior="fitted")[1])["embedding"] != first["embedding"]
    status, body = draw(seed=5, refine_steps=17)  # the gateway's bound, in its own words
    assert status == 400 and "sample.refine_steps: 17; expected 0..16" in json.loads(body)["error"]


def test_playground_api_needs_its_access_token(playground):
    for token in (None, "Bearer wrong"):
        req = urllib.request.Request(
            playground + "/api/info", headers={"Authorization": token} if token else {}
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 401
        assert "#token=" in json.loads(e.value.read())["error"]
    page = urllib.request.urlopen(playground + "/", timeout=10)  # the page itself holds no data
    assert page.status == 200


def test_playground_refuses_other_hosts_and_cross_site_origins(playground):
    port = playground.rsplit(":", 1)[1]
    # DNS rebinding: a page of the attacker's name that resolves to this address.
    status, body = _request(playground + "/api/info", headers={"Host": f"evil.example:{port}"})
    assert status == 403 and "--allowed-host" in json.loads(body)["error"]
    for host in (f"localhost:{port}", f"playground.test:{port}", f"[::1]:{port}"):
        assert _request(playground + "/api/info", headers={"Host": host})[0] == 200, host
    status, body = _post(
        playground + "/api/edit",
        json.dumps({"embedding": [0.0] * 16, "weights": {}}).encode(),
        "application/json",
        Origin="http://evil.example",
    )
    assert status == 403 and "cross-origin" in json.loads(body)["error"]
    same = {"Origin": playground}
    status, _ = _post(
        playground + "/api/edit",
        json.dumps({"embedding": [0.0] * 16, "weights": {}}).encode(),
        "application/json",
        **same,
    )
    assert status == 200


def test_playground_takes_only_json_or_image_bodies(playground):
    # The content types a cross-site form may send without a CORS preflight.
    for path, kind in (
        ("/api/edit", "text/plain"),
        ("/api/interpolate", "application/x-www-form-urlencoded"),
        ("/api/encode", "multipart/form-data; boundary=x"),
        ("/api/encode", "text/plain"),
    ):
        status, body = _post(playground + path, b"{}", kind)
        assert status == 415 and "expected" in json.loads(body)["error"], (path, kind)


@pytest.mark.parametrize(
    "path, body, says",
    [
        ("/api/edit", b"[1, 2]", "JSON object"),
        ("/api/edit", b"{not json", "not valid JSON"),
        ("/api/edit", b'{"embedding": [0], "weights": [1]}', "weights"),
        ("/api/edit", b'{"embedding": "abc", "weights": {}}', "embedding"),
        ("/api/interpolate", b'{"a": [0], "b": [0], "steps": "many"}', "steps"),
        ("/api/interpolate", b'{"a": [0], "b": [true], "steps": 3}', "b: expected"),
        ("/api/edit", b'{"embedding": [1' + b"0" * 400 + b'], "weights": {}}', "embedding"),
        ("/api/edit", b'{"embedding": [0], "weights": {"round": 1e400}}', "weights"),
        ("/api/sample", b'{"seed": -1}', "seed: expected a whole number"),
        ("/api/sample", b'{"seed": 1.5}', "seed: expected a whole number"),
        ("/api/sample", b'{"prior": "uniform"}', 'prior: expected "fitted" or "standard"'),
        ("/api/sample", b'{"refine_steps": true}', "refine_steps: expected a whole number"),
    ],
)
def test_playground_answers_a_malformed_body_with_400_and_what_it_expected(
    playground, path, body, says
):
    status, answer = _post(playground + path, body, "application/json")
    assert status == 400, answer
    assert says in json.loads(answer)["error"]


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
            f"{playground}/#token={ACCESS}",
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
    assert seen["draw_caption"].startswith("drawn from the fitted prior, seed ")
    assert seen["drawn_shown"] and seen["drawn_width"] == 32 and seen["edit_from_the_draw"]
    assert all(w == 32 for w in seen["images_loaded"])  # every picture on the page decoded
    assert seen["console_errors"] == []
    assert not seen["token_left_in_url"]  # taken from the fragment, then dropped from the URL
    payload = '<img src=x onerror="window.__xss = 1">'
    assert payload in seen["xss_label_texts"]  # shown as text
    assert seen["xss_images_in_sliders"] == 0 and not seen["xss_ran"]
    assert shot.stat().st_size > 10_000
    keep = Path(__file__).resolve().parent.parent / "outputs" / "playground.png"
    keep.parent.mkdir(exist_ok=True)
    shutil.copy(shot, keep)  # for a person to look at
