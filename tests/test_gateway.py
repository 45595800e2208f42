"""The gateway through a real gRPC channel on loopback, against both backends: the
embedded ONNX Runtime and the real local Triton serving the same exported repository."""

from __future__ import annotations

import io
import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
from conftest import encode, pattern
from gateway_harness import GatewayThread, serve_process, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from vaegan.client import LatentClient
from vaegan.export.local_triton import LocalTriton
from vaegan.preprocess import CropPolicy, preprocess
from vaegan.service.metrics import metric_value
from vaegan.service.settings import Settings
from vaegan.training.checkpoint import load_model
from vaegan.training.model import from_pixels, to_pixels
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration
LATENT = 16
READY = health_pb2.HealthCheckRequest(
    service="vaegan.v1.LatentService"
)  # readiness; "" is liveness


@pytest.fixture(scope="module")
def triton(repo):
    with LocalTriton(repo) as server:
        yield server


@pytest.fixture(scope="module", params=["embedded", "triton"])
def gateway(request, repo):
    if request.param == "embedded":
        settings = Settings(model_repository=str(repo))
    else:
        settings = Settings(triton_url=request.getfixturevalue("triton").grpc_url)
    with GatewayThread(settings) as gw:
        yield gw


@pytest.fixture(scope="module")
def torch_model(tiny_checkpoint):
    return load_model(tiny_checkpoint)[0]


@pytest.fixture
def client(gateway):
    with LatentClient(gateway.target, timeout=30) as c:
        yield c


def test_generate_on_fixed_z_matches_pytorch_within_one_level(client, torch_model):
    z = np.random.default_rng(0).standard_normal((5, LATENT)).astype(np.float32)
    images, used = client.generate(z)
    with torch.no_grad():
        ref = to_pixels(torch_model.decode(torch.from_numpy(z))).numpy()
    assert images.shape == (5, 32, 32, 3)
    assert np.abs(images.astype(int) - ref.astype(int)).max() <= 1
    assert np.array_equal(used, z)


def test_generate_from_the_prior_is_reproducible_per_seed(client):
    a_img, a_z = client.generate(count=4, seed=7)
    b_img, b_z = client.generate(count=4, seed=7)
    _, c_z = client.generate(count=4, seed=8, temperature=0.5)
    assert np.array_equal(a_z, b_z) and np.array_equal(a_img, b_img)
    assert not np.array_equal(a_z, c_z)
    _, z = client.generate(count=64, seed=1)
    assert 0.85 < z.std() < 1.15  # the unit prior, not 5 * N(0, I)


def test_png_and_jpeg_outputs_decode_to_the_raw_pixels(gateway):
    stub = pb_grpc.LatentServiceStub(grpc.insecure_channel(gateway.target))
    z = pb.EmbeddingList(items=[pb.Embedding(values=[0.1] * LATENT)])
    raw = stub.Generate(
        pb.GenerateRequest(embeddings=z, output=pb.OutputOptions(format=pb.IMAGE_FORMAT_RAW))
    )
    png = stub.Generate(pb.GenerateRequest(embeddings=z))  # PNG by default
    jpg = stub.Generate(
        pb.GenerateRequest(
            embeddings=z, output=pb.OutputOptions(format=pb.IMAGE_FORMAT_JPEG, jpeg_quality=95)
        )
    )
    px = np.frombuffer(raw.images[0].data, np.uint8).reshape(32, 32, 3)
    assert png.images[0].format == pb.IMAGE_FORMAT_PNG
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.images[0].data))), px)
    assert (
        np.abs(np.asarray(Image.open(io.BytesIO(jpg.images[0].data))).astype(int) - px).mean() < 8
    )
    assert raw.decoder_version == "1"


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (32, 32), (64, 48)])
def test_png_writer_makes_standard_files_that_decode_to_the_exact_pixels(shape):
    from vaegan.service.codecs import encode_png

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (2, *shape, 3), dtype=np.uint8)  # every byte value, wraps
    y, x = np.mgrid[: shape[0], : shape[1]]
    smooth = np.stack([x * 3, y * 5, x + y], -1).astype(np.uint8)[None]
    pixels = np.concatenate([noise, smooth])
    files = encode_png(pixels)
    assert len(files) == 3
    for data, px in zip(files, pixels, strict=True):
        Image.open(io.BytesIO(data)).verify()  # signature, chunk CRCs
        im = Image.open(io.BytesIO(data))
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (shape[1], shape[0]))
        assert np.array_equal(np.asarray(im), px)


def test_jpeg_writer_subsamples_chroma_as_pillow_does_and_honours_quality():
    from PIL import JpegImagePlugin

    from vaegan.service.codecs import encode_jpeg

    y, x = np.mgrid[:64, :64]
    px = np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8)
    low, high = encode_jpeg(px, 30), encode_jpeg(px, 95)
    im = Image.open(io.BytesIO(high))
    assert im.format == "JPEG" and JpegImagePlugin.get_sampling(im) == 2  # 4:2:0
    assert len(low) < len(high)
    err = {
        q: np.abs(np.asarray(Image.open(io.BytesIO(d))).astype(int) - px).mean()
        for q, d in ((30, low), (95, high))
    }
    assert err[95] < err[30] and err[95] < 2


def test_encode_is_deterministic_and_preprocesses_as_training_did(client, torch_model):
    data = [encode(pattern(120, 90, 3), "PNG"), encode(pattern(200, 300, 4), "JPEG", quality=95)]
    a, b = client.encode(data), client.encode(data)
    assert np.array_equal(a.mu, b.mu) and a.z is None and a.encoder_version == "1"
    x = np.stack([preprocess(d, CropPolicy("center", 0.75, 32)) for d in data])
    with torch.no_grad():
        ref = torch_model.encode(from_pixels(torch.from_numpy(x)))[0].numpy()
    assert np.abs(a.mu - ref).max() < 1e-4
    s1, s2 = client.encode(data, sample=True, seed=3), client.encode(data, sample=True, seed=3)
    assert np.array_equal(s1.z, s2.z) and not np.array_equal(s1.z, s1.mu)
    r = client.encode(data, reconstruction_error=True)
    assert r.reconstruction_mse.shape == (2,) and (r.reconstruction_mse > 0).all()


def test_interpolate_returns_the_whole_path_with_endpoints_in_order(client):
    a, b, c = (
        np.random.default_rng(i).standard_normal(LATENT).astype(np.float32) for i in range(3)
    )
    images, path = client.interpolate([a, b, c], steps=3)
    assert images.shape == (9, 32, 32, 3) and path.shape == (9, LATENT)  # 2 * (3 + 1) + 1
    assert np.allclose(path[0], a) and np.allclose(path[4], b) and np.allclose(path[8], c)
    _, linear = client.interpolate([a, b], steps=3, spherical=False)
    assert np.allclose(linear[2], (a + b) / 2, atol=1e-6)
    _, sph = client.interpolate([a, b], steps=3)
    assert not np.allclose(sph[2], linear[2])
    gen, _ = client.generate(path)
    assert np.abs(gen.astype(int) - images.astype(int)).max() <= 1  # frames are the path's decodes


def test_interpolate_between_images_starts_at_their_encodings(client):
    data = [encode(pattern(64, 64, 5), "PNG"), encode(pattern(64, 64, 6), "PNG")]
    mu = client.encode(data).mu
    _, path = client.interpolate(data, steps=2)
    assert np.allclose(path[0], mu[0], atol=1e-5) and np.allclose(path[-1], mu[1], atol=1e-5)


def test_model_info_names_sizes_versions_and_limits(client):
    info = client.info()
    assert (info.latent_dim, info.image_size, info.crop_mode) == (LATENT, 32, "center")
    assert info.encoder.name == "vaegan_encoder" and info.decoder.version == "1"
    assert info.decoder.facts["checkpoint_step"] == "6"
    assert info.limits.max_items == 64 and info.limits.max_message_bytes == 16 * 1024 * 1024
    assert not info.fitted_prior


def _status(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


BAD_REQUESTS = {
    "wrong_length": (
        lambda s: s.Generate(
            pb.GenerateRequest(embeddings=pb.EmbeddingList(items=[pb.Embedding(values=[0.0] * 15)]))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "embeddings.items[0].values: length 15; this model's latent size is 16",
    ),
    "nan": (
        lambda s: s.Generate(
            pb.GenerateRequest(
                embeddings=pb.EmbeddingList(items=[pb.Embedding(values=[float("nan")] * 16)])
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NaN or Inf",
    ),
    "inf_in_a_later_item": (  # the batch is checked at once; the message still names the item
        lambda s: s.Generate(
            pb.GenerateRequest(
                embeddings=pb.EmbeddingList(
                    items=[pb.Embedding(values=[0.0] * 16)] * 2
                    + [pb.Embedding(values=[0.0] * 15 + [float("inf")])]
                    + [pb.Embedding(values=[float("nan")] * 16)]
                )
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "embeddings.items[2].values: contains NaN or Inf",
    ),
    "empty_generate": (
        lambda s: s.Generate(pb.GenerateRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "source: set either",
    ),
    "empty_embeddings": (
        lambda s: s.Generate(pb.GenerateRequest(embeddings=pb.EmbeddingList())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "at least one",
    ),
    "too_many_samples": (
        lambda s: s.Generate(pb.GenerateRequest(sample=pb.Sample(count=65))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sample.count: 65",
    ),
    "bad_temperature": (
        lambda s: s.Generate(pb.GenerateRequest(sample=pb.Sample(count=1, temperature=-1))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "temperature",
    ),
    "temperature_that_would_overflow": (  # 3e38 x N(0, 1) draws are Inf in float32
        lambda s: s.Generate(pb.GenerateRequest(sample=pb.Sample(count=4, temperature=3e38))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected 0 < temperature <= 10",
    ),
    "too_many_refine_steps": (
        lambda s: s.Generate(pb.GenerateRequest(sample=pb.Sample(count=1, refine_steps=17))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sample.refine_steps: 17; expected 0..16",
    ),
    "no_fitted_prior": (  # the tiny model was exported without --data
        lambda s: s.Generate(pb.GenerateRequest(sample=pb.Sample(count=1, prior=pb.PRIOR_FITTED))),
        grpc.StatusCode.FAILED_PRECONDITION,
        "has no fitted prior; export it with 'vaegan export --data'",
    ),
    "empty_encode": (
        lambda s: s.Encode(pb.EncodeRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "images: at least one",
    ),
    "undecodable": (
        lambda s: s.Encode(pb.EncodeRequest(images=[b"not an image"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "images[0]: not a PNG or JPEG",
    ),
    "gif": (
        lambda s: s.Encode(pb.EncodeRequest(images=[encode(pattern(16, 16), "GIF")])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "format GIF",
    ),
    "oversize_image": (
        lambda s: s.Encode(pb.EncodeRequest(images=[b"\x89PNG" + bytes(9 * 1024 * 1024)])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "at most 8388608",
    ),
    "too_many_steps": (
        lambda s: s.Interpolate(
            pb.InterpolateRequest(
                keyframes=[pb.Keyframe(embedding=pb.Embedding(values=[0.0] * 16))] * 2, steps=257
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "steps: 257; at most 256",
    ),
    "one_keyframe": (
        lambda s: s.Interpolate(
            pb.InterpolateRequest(
                keyframes=[pb.Keyframe(embedding=pb.Embedding(values=[0.0] * 16))], steps=2
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "at least 2",
    ),
    # Image and embedding keyframes mix (images are encoded first); these cannot be combined.
    "keyframe_of_no_kind": (
        lambda s: s.Interpolate(
            pb.InterpolateRequest(
                keyframes=[pb.Keyframe(embedding=pb.Embedding(values=[0.0] * 16)), pb.Keyframe()],
                steps=2,
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "keyframes[1]: set either embedding or image",
    ),
    "keyframes_of_different_sizes": (
        lambda s: s.Interpolate(
            pb.InterpolateRequest(
                keyframes=[
                    pb.Keyframe(embedding=pb.Embedding(values=[0.0] * 16)),
                    pb.Keyframe(embedding=pb.Embedding(values=[0.0] * 8)),
                ],
                steps=2,
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "keyframes[1].embedding",
    ),
    "non_canonical_version": (  # "01" is not read as version 1
        lambda s: s.Generate(pb.GenerateRequest(sample=pb.Sample(count=1), model_version="01")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model_version: '01' is not a version number",
    ),
    "version_that_is_a_path": (  # never part of a file path, never a file's content echoed
        lambda s: s.ListAttributes(pb.ListAttributesRequest(model_version="1/../../../x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "is not a version number",
    ),
    "unknown_version": (
        lambda s: s.Generate(pb.GenerateRequest(sample=pb.Sample(count=1), model_version="9")),
        grpc.StatusCode.NOT_FOUND,
        "9",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_its_status_and_the_next_call_succeeds(gateway, case):
    call, code, message = BAD_REQUESTS[case]
    stub = pb_grpc.LatentServiceStub(
        grpc.insecure_channel(gateway.target, options=[("grpc.max_send_message_length", 64 << 20)])
    )
    got_code, details = _status(lambda: call(stub))
    assert got_code == code and message in details, details
    assert "Traceback" not in details
    ok = stub.Generate(pb.GenerateRequest(sample=pb.Sample(count=1)))
    assert len(ok.images) == 1


def test_message_over_the_limit_is_resource_exhausted(repo):
    with GatewayThread(Settings(model_repository=str(repo), max_message_bytes=1 << 20)) as gw:
        stub = pb_grpc.LatentServiceStub(
            grpc.insecure_channel(gw.target, options=[("grpc.max_send_message_length", 8 << 20)])
        )
        code, _ = _status(lambda: stub.Encode(pb.EncodeRequest(images=[bytes(1 << 20)])))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(stub.Generate(pb.GenerateRequest(sample=pb.Sample(count=1))).images) == 1


def test_concurrent_calls_are_batched_into_fewer_backend_calls_with_the_same_results(repo):
    zs = np.random.default_rng(5).standard_normal((24, LATENT)).astype(np.float32)
    with (
        GatewayThread(Settings(model_repository=str(repo), batching=False)) as gw,
        LatentClient(gw.target) as c,
    ):
        alone = [c.generate(z[None])[0] for z in zs]
    with (
        GatewayThread(Settings(model_repository=str(repo), max_wait_ms=50)) as gw,
        LatentClient(gw.target) as c,
    ):
        with ThreadPoolExecutor(24) as pool:
            batched = list(pool.map(lambda z: c.generate(z[None])[0], zs))
        text = urllib.request.urlopen(gw.metrics_url).read().decode()
    calls = metric_value(text, "vaegan_backend_requests_total", model="vaegan_decoder")
    assert 1 <= calls < 24, calls
    assert metric_value(text, "vaegan_batch_size_sum", model="vaegan_decoder") == 24
    for a, b in zip(alone, batched, strict=True):
        assert np.array_equal(a, b)


def test_health_is_serving_and_reflection_lists_the_service(gateway):
    channel = grpc.insecure_channel(gateway.target)
    h = health_pb2_grpc.HealthStub(channel)
    assert (
        h.Check(health_pb2.HealthCheckRequest(service="vaegan.v1.LatentService")).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    r = reflection_pb2_grpc.ServerReflectionStub(channel)
    (resp,) = r.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    assert "vaegan.v1.LatentService" in {s.name for s in resp.list_services_response.service}


def test_metrics_count_requests_by_method_and_code(gateway, client):
    client.generate(count=2, seed=0)
    with pytest.raises(grpc.RpcError):
        client.generate(np.zeros((1, 3), np.float32))
    text = urllib.request.urlopen(gateway.metrics_url).read().decode()
    assert (
        metric_value(text, "grpc_server_handled_total", grpc_method="Generate", grpc_code="OK") >= 1
    )
    assert (
        metric_value(
            text, "grpc_server_handled_total", grpc_method="Generate", grpc_code="INVALID_ARGUMENT"
        )
        >= 1
    )
    assert metric_value(text, "grpc_server_handling_seconds_count", grpc_method="Generate") >= 2
    assert metric_value(text, "vaegan_backend_ready") == 1


def test_calls_waiting_on_an_expired_version_cache_share_one_triton_metadata_query(triton):
    import asyncio

    from vaegan.service.backends import TritonBackend
    from vaegan.service.metrics import Metrics

    names = {"encoder": "vaegan_encoder", "decoder": "vaegan_decoder"}

    async def run():
        backend = TritonBackend(triton.grpc_url, names, "", Metrics("triton", "test"))
        queries = []
        real = backend.client.get_model_metadata

        async def counted(*args, **kwargs):  # the real Triton answers; this only counts
            queries.append(args)
            return await real(*args, **kwargs)

        backend.client.get_model_metadata = counted
        try:
            first = await asyncio.gather(*(backend.meta("decoder") for _ in range(50)))
            backend._newest.clear()  # the cache expires while 50 calls wait on it
            second = await asyncio.gather(*(backend.meta("decoder") for _ in range(50)))
        finally:
            await backend.close()
        return queries, first + second

    queries, metas = asyncio.run(run())
    assert len(queries) == 2  # one per expiry, not one per waiting call
    assert {m.version for m in metas} == {"1"} and len(metas) == 100


def test_triton_going_away_makes_calls_unavailable_and_coming_back_recovers(repo):
    server = LocalTriton(repo)
    server.start()
    try:
        with (
            GatewayThread(Settings(triton_url=server.grpc_url, health_poll_s=0.2)) as gw,
            LatentClient(gw.target, timeout=10) as c,
        ):
            c.generate(count=1)
            h = health_pb2_grpc.HealthStub(grpc.insecure_channel(gw.target))
            server.stop()
            code, _ = _status(lambda: c.generate(count=1))
            assert code == grpc.StatusCode.UNAVAILABLE
            wait_until(lambda: h.Check(READY).status == health_pb2.HealthCheckResponse.NOT_SERVING)
            # Liveness (the overall status) stays SERVING: an outage must not restart gateways.
            assert (
                h.Check(health_pb2.HealthCheckRequest()).status
                == health_pb2.HealthCheckResponse.SERVING
            )
            LocalTriton(
                repo,
                grpc_port=server.grpc_port,
                http_port=server.http_port,
                metrics_port=server.metrics_port,
            ).__enter__()
            server = None  # replaced; stopped below through the new handle
            wait_until(lambda: h.Check(READY).status == health_pb2.HealthCheckResponse.SERVING)
            images, _ = c.generate(count=1)
            assert images.shape == (1, 32, 32, 3)
    finally:
        if server is not None:
            server.stop()
        _kill_tritons(repo)


def _kill_tritons(repo) -> None:
    """Stop any tritonserver still serving ``repo`` (the restarted one in the test above)."""
    import contextlib
    import os
    import signal
    import subprocess

    out = subprocess.run(
        ["pgrep", "-f", f"tritonserver.*{repo}"], capture_output=True, text=True
    ).stdout.split()
    for pid in out:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pid), signal.SIGTERM)


def test_many_png_frames_are_encoded_off_the_event_loop_and_few_or_raw_on_it(gateway, monkeypatch):
    import threading

    from vaegan.service import codecs

    seen: list[tuple[int, str]] = []
    real = codecs.encode_images

    def recording(pixels, options):
        seen.append((len(pixels), threading.current_thread().name))
        return real(pixels, options)

    monkeypatch.setattr(codecs, "encode_images", recording)
    stub = pb_grpc.LatentServiceStub(grpc.insecure_channel(gateway.target))
    keys = [pb.Keyframe(embedding=pb.Embedding(values=[v] * LATENT)) for v in (0.0, 1.0)]
    walk = stub.Interpolate(pb.InterpolateRequest(keyframes=keys, steps=98), timeout=30)
    assert len(walk.images) == 100 and walk.images[0].format == pb.IMAGE_FORMAT_PNG
    off_loop = list(seen)
    seen.clear()
    stub.Generate(pb.GenerateRequest(sample=pb.Sample(count=2)), timeout=30)  # PNG, few
    raw = pb.OutputOptions(format=pb.IMAGE_FORMAT_RAW)
    stub.Generate(pb.GenerateRequest(sample=pb.Sample(count=64), output=raw), timeout=30)
    assert sum(n for n, _ in off_loop) == 100
    assert all(name.startswith("decode") for _, name in off_loop), off_loop
    loop_thread = {name for _, name in seen}
    assert len(loop_thread) == 1 and not loop_thread.pop().startswith("decode")


def test_batch_job_answers_every_line_in_order_and_reports_bad_lines(gateway, tmp_path):
    import base64
    import json

    from vaegan.batch_job import run_job

    png = base64.b64encode(encode(pattern(64, 64, 1), "PNG")).decode()
    lines = [
        {"embeddings": [0.0] * LATENT, "key": "0"},
        {"image_bytes": {"b64": png}, "key": "1"},
        {"embeddings": [0.0] * 3, "key": "2"},
        {"image_bytes": {"b64": base64.b64encode(b"nope").decode()}, "key": "3"},
        {"key": "4"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    with LatentClient(gateway.target) as client:
        counts = run_job(client, src, tmp_path / "out.jsonl", progress=False)
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert counts == {"ok": 2, "errors": 4}
    assert [o.get("key") for o in out] == ["0", "1", "2", "3", "4", None]
    img = Image.open(io.BytesIO(base64.b64decode(out[0]["image_png_b64"])))
    assert img.size == (32, 32)
    assert len(out[1]["mu"]) == LATENT
    assert [o["error"]["code"] for o in out[2:]] == ["INVALID_ARGUMENT"] * 4
    assert "latent size is 16" in out[2]["error"]["message"]


def test_batch_job_survives_lines_json_itself_chokes_on_and_keeps_order_over_many_lines(
    gateway, tmp_path
):
    import json

    from vaegan.batch_job import run_job

    hostile = [
        '{"embeddings": [' + "9" * 5000 + "]}",  # more digits than Python parses
        "[" * 100_000 + "]" * 100_000,  # nesting deeper than the parser's recursion
        '{"embeddings": [' + "1" + "0" * 400 + "]}",  # an integer beyond any float
        '{"embeddings": [1e400]}',  # parses to inf
        '{"embeddings": [true, false]}',  # booleans are not numbers
        "\xff\xfe not text",
    ]
    good = [json.dumps({"embeddings": [0.0] * LATENT, "key": i}) for i in range(40)]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(hostile + good) + "\n", errors="surrogateescape")
    with LatentClient(gateway.target) as client:
        counts = run_job(client, src, tmp_path / "out.jsonl", concurrency=3, progress=False)
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert counts == {"ok": 40, "errors": len(hostile)}
    assert [o["error"]["code"] for o in out[: len(hostile)]] == ["INVALID_ARGUMENT"] * len(hostile)
    assert [o["key"] for o in out[len(hostile) :]] == list(range(40))  # input order


def test_vaegan_serve_process_takes_env_settings_and_exits_cleanly_on_sigterm(repo):
    import signal

    proc, target, _ = serve_process(repo, grace_s=5, capture=True)
    port = int(target.rsplit(":", 1)[1])
    try:
        h = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        wait_until(lambda: _serving(h))
        with LatentClient(f"127.0.0.1:{port}") as c:
            assert c.generate(count=1)[0].shape == (1, 32, 32, 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        out = proc.stdout.read()
        assert f"port={port}" in out and "shutting down" in out  # settings printed at start
        loop = "asyncio" if os.environ.get("VAEGAN_EVENT_LOOP") == "asyncio" else "uvloop"
        assert f"{loop} event loop" in out
    finally:
        proc.kill()


def test_event_loop_setting_picks_uvloop_when_installed_and_asyncio_when_asked():
    import asyncio

    import uvloop

    from vaegan.errors import VaeganError
    from vaegan.service.server import new_event_loop

    for kind, expected in (("auto", uvloop.Loop), ("uvloop", uvloop.Loop)):
        loop = new_event_loop(kind)
        assert isinstance(loop, expected)
        loop.close()
    loop = new_event_loop("asyncio")
    assert type(loop) is type(asyncio.new_event_loop()) and not isinstance(loop, uvloop.Loop)
    loop.close()
    with pytest.raises(
        VaeganError, match="--event-loop 'trio': choose one of auto, asyncio, uvloop"
    ):
        Settings(model_repository="x", event_loop="trio").check()


def _serving(h) -> bool:
    try:
        return h.Check(READY, timeout=1).status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def test_client_cli_verbs_write_their_files_against_a_live_gateway(repo, tmp_path, capsys):
    import json

    from vaegan.cli import main

    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    a.write_bytes(encode(pattern(80, 60, 1), "PNG"))
    b.write_bytes(encode(pattern(60, 80, 2), "JPEG"))
    with GatewayThread(Settings(model_repository=str(repo), auth_tokens="cli-token")) as gw:
        common = ["--target", gw.target, "--token", "cli-token"]
        assert main(["info", *common]) == 0
        assert json.loads(capsys.readouterr().out)["latent_dim"] == LATENT
        assert (
            main(
                [
                    "generate",
                    *common,
                    "--random",
                    "6",
                    "--seed",
                    "2",
                    "--out",
                    str(tmp_path / "g.png"),
                ]
            )
            == 0
        )
        assert Image.open(tmp_path / "g.png").size == (
            3 * 34 + 2,
            2 * 34 + 2,
        )  # 6 tiles of 32 px, 2 px gaps
        refined = ["generate", *common, "--random", "6", "--seed", "2", "--refine", "2"]
        assert main([*refined, "--out", str(tmp_path / "r.png")]) == 0
        drawn, moved = (np.asarray(Image.open(tmp_path / f)) for f in ("g.png", "r.png"))
        assert drawn.shape == moved.shape and not np.array_equal(drawn, moved)
        assert (
            main(
                [
                    "encode",
                    *common,
                    str(a),
                    str(b),
                    "--out",
                    str(tmp_path / "z.npy"),
                    "--reconstruction-error",
                ]
            )
            == 0
        )
        assert np.load(tmp_path / "z.npy").shape == (2, LATENT)
        np.save(tmp_path / "one.npy", np.load(tmp_path / "z.npy")[1])  # a keyframe is one vector
        assert (
            main(
                [
                    "interpolate",
                    *common,
                    str(a),
                    str(tmp_path / "one.npy"),
                    "--steps",
                    "3",
                    "--out",
                    str(tmp_path / "s.png"),
                ]
            )
            == 0
        )
        assert Image.open(tmp_path / "s.png").size == (5 * 34 + 2, 34 + 2)
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_text(json.dumps({"embeddings": [0.0] * LATENT, "key": "k"}) + "\n")
        assert (
            main(
                [
                    "batch",
                    *common,
                    "--input",
                    str(jobs),
                    "--output",
                    str(tmp_path / "out.jsonl"),
                    "--quiet",
                ]
            )
            == 0
        )
        assert json.loads((tmp_path / "out.jsonl").read_text())["key"] == "k"
        capsys.readouterr()
        assert main(["info", "--target", gw.target]) == 2  # no token: one line, non-zero
        assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_an_interpolation_longer_than_the_queue_is_decoded_not_refused(repo):
    # 2 keyframes, 254 steps: 256 frames through a queue of 64 items (batches of 16).
    settings = Settings(model_repository=str(repo), max_queue=64, max_batch_size=16)
    with GatewayThread(settings) as gw:
        stub = pb_grpc.LatentServiceStub(grpc.insecure_channel(gw.target))
        keys = [pb.Keyframe(embedding=pb.Embedding(values=[v] * 16)) for v in (0.0, 1.0)]
        r = stub.Interpolate(
            pb.InterpolateRequest(
                keyframes=keys, steps=254, output=pb.OutputOptions(format=pb.IMAGE_FORMAT_RAW)
            ),
            timeout=60,
        )
        assert len(r.images) == 256


def test_settings_that_make_a_limit_unreachable_stop_the_gateway_at_start(repo):
    from vaegan.errors import VaeganError

    with pytest.raises(VaeganError, match="a full batch could never be queued"):
        Settings(model_repository=str(repo), max_queue=8, max_batch_size=16).check()


def test_bad_output_options_are_refused_before_any_inference(gateway):
    import urllib.request

    def backend_calls() -> float:
        text = urllib.request.urlopen(gateway.metrics_url, timeout=5).read().decode()
        return metric_value(text, "vaegan_backend_requests_total")

    stub = pb_grpc.LatentServiceStub(grpc.insecure_channel(gateway.target))
    before = backend_calls()
    bad = pb.OutputOptions(format=pb.IMAGE_FORMAT_JPEG, jpeg_quality=101)
    with pytest.raises(grpc.RpcError) as e:
        stub.Generate(pb.GenerateRequest(sample=pb.Sample(count=4), output=bad), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output.jpeg_quality: 101" in e.value.details()
    assert backend_calls() == before
