"""Reliability: bad input, limits, faults and shutdown, each through real gRPC on loopback
(and the real local Triton where Triton is involved)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import encode, pattern, png_header_only
from gateway_harness import GatewayThread, serve_process, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from vaegan.client import LatentClient
from vaegan.errors import VaeganError
from vaegan.export.local_triton import LocalTriton
from vaegan.host import free_port, open_fds, threads
from vaegan.service.metrics import metric_value
from vaegan.service.settings import Settings
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration
READY = health_pb2.HealthCheckRequest(service="vaegan.v1.LatentService")
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def gateway(repo):
    with GatewayThread(Settings(model_repository=str(repo))) as gw:
        yield gw


def _code(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def _backend_calls(gw) -> float:
    return metric_value(
        urllib.request.urlopen(gw.metrics_url).read().decode(), "vaegan_backend_requests_total"
    )


def _big_png(side: int) -> bytes:
    """A small file that would decode to side*side*3 bytes (mostly one colour compresses well)."""
    return encode(Image.new("RGB", (side, side), (10, 20, 30)), "PNG", optimize=True)


def _image_cases():
    jpeg, png = encode(pattern(300, 300), "JPEG"), encode(pattern(300, 300), "PNG")
    bomb = _big_png(11000)  # 121 Mpx: 363 MiB decoded, from a file of a few hundred KiB
    assert len(bomb) < 1 << 20
    return {
        "empty": (b"", "empty"),
        "not_an_image": (b"GIF89a? no, just text", "not a PNG or JPEG"),
        "truncated_png": (png[: len(png) // 3], "truncated"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 3], "truncated"),
        "gif": (encode(pattern(32, 32), "GIF"), "format GIF"),
        "bmp": (encode(pattern(32, 32), "BMP"), "format BMP"),
        "tiff": (encode(pattern(32, 32), "TIFF"), "format TIFF"),
        "webp": (encode(pattern(32, 32), "WEBP"), "format WEBP"),
        "png_header_20000x20000": (png_header_only(20000, 20000), "exceeds"),
        "decodes_to_363_mib": (bomb, "121000000 pixels"),
    }


@pytest.mark.parametrize("case", list(_image_cases()))
def test_bad_image_is_invalid_argument_without_a_backend_call_and_the_server_keeps_serving(
    gateway, case
):
    data, message = _image_cases()[case]
    stub = pb_grpc.LatentServiceStub(grpc.insecure_channel(gateway.target))
    before = _backend_calls(gateway)
    code, details = _code(lambda: stub.Encode(pb.EncodeRequest(images=[data]), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, details
    assert _backend_calls(gateway) == before  # nothing reached the model
    ok = stub.Encode(pb.EncodeRequest(images=[encode(pattern(64, 64), "PNG")]), timeout=10)
    assert len(ok.encodings) == 1
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(gateway.target))
    assert health.Check(READY).status == SERVING


def test_a_message_one_byte_over_the_limit_is_resource_exhausted_and_at_the_limit_is_read(repo):
    limit = 256 * 1024
    with GatewayThread(Settings(model_repository=str(repo), max_message_bytes=limit)) as gw:
        stub = pb_grpc.LatentServiceStub(
            grpc.insecure_channel(gw.target, options=[("grpc.max_send_message_length", 1 << 24)])
        )

        def request_of(size: int) -> pb.EncodeRequest:
            req = pb.EncodeRequest(images=[b"x" * (size - 10)])
            req.images[0] = b"x" * (len(req.images[0]) + size - req.ByteSize())
            assert req.ByteSize() == size
            return req

        code, _ = _code(lambda: stub.Encode(request_of(limit + 1), timeout=10))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        code, details = _code(lambda: stub.Encode(request_of(limit), timeout=10))
        assert (
            code == grpc.StatusCode.INVALID_ARGUMENT and "not a PNG or JPEG" in details
        )  # read, then judged
        assert (
            len(stub.Generate(pb.GenerateRequest(sample=pb.Sample(count=1)), timeout=10).images)
            == 1
        )


def test_decoding_a_large_image_does_not_stall_other_calls(gateway):
    # 25 Mpx: under the pixel cap and the decode budget's share for one image, slow to decode
    big = encode(pattern(5000, 5000, 3), "PNG")
    order: list[str] = []
    with LatentClient(gateway.target, timeout=60) as c:

        def encode_big():
            c.encode([big])
            order.append("encode")

        def inflight() -> float:
            text = urllib.request.urlopen(gateway.metrics_url, timeout=5).read().decode()
            return metric_value(text, "vaegan_inflight_requests")

        t = threading.Thread(target=encode_big)
        t.start()
        wait_until(lambda: inflight() == 1, timeout=30, every=0.005)  # the Encode is admitted
        for _ in range(5):
            c.generate(count=1)
            order.append("generate")
        still_decoding = inflight() == 1 and "encode" not in order
        t.join()
    # Had the decode held the event loop, no Generate could finish before the Encode.
    assert order.index("encode") > 0, order
    assert still_decoding, "the Encode finished before the Generates ran: nothing was shown"


def test_triton_absent_at_start_then_appearing(repo):
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    settings = Settings(triton_url=f"127.0.0.1:{grpc_port}", health_poll_s=0.2)
    with GatewayThread(settings) as gw:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(gw.target))
        assert health.Check(health_pb2.HealthCheckRequest()).status == SERVING  # alive
        assert health.Check(READY).status != SERVING  # not ready
        with LatentClient(gw.target, timeout=20) as c:
            t = time.monotonic()
            code, details = _code(lambda: c.generate(count=1))
            assert code == grpc.StatusCode.UNAVAILABLE and "Triton" in details
            assert time.monotonic() - t < 10  # fails fast, well inside the 20 s deadline
            with LocalTriton(
                repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port
            ):
                wait_until(lambda: health.Check(READY).status == SERVING)
                assert c.generate(count=1)[0].shape == (1, 32, 32, 3)


def _all_threads_stopped(pid: int) -> bool:
    try:
        stats = [
            Path(f"/proc/{pid}/task/{t}/stat").read_text() for t in os.listdir(f"/proc/{pid}/task")
        ]
    except FileNotFoundError:  # a thread ended meanwhile
        return False
    return all(stat.rsplit(")", 1)[1].split()[0] == "T" for stat in stats)


def test_a_frozen_triton_gives_deadline_exceeded_near_the_deadline_and_leaves_nothing_in_flight(
    repo,
):
    with (
        LocalTriton(repo) as triton,
        GatewayThread(Settings(triton_url=triton.grpc_url)) as gw,
        LatentClient(gw.target, timeout=10) as c,
    ):
        c.generate(count=1)
        os.kill(triton.process.pid, signal.SIGSTOP)  # alive but answering nothing
        try:
            # A stop takes effect thread by thread: until every thread has stopped, Triton may
            # still answer a call sent now.
            wait_until(lambda: _all_threads_stopped(triton.process.pid), timeout=5, every=0.01)
            with LatentClient(gw.target, timeout=1.0) as short:
                t = time.monotonic()
                code, _ = _code(lambda: short.generate(count=1))
                elapsed = time.monotonic() - t
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert 0.9 < elapsed < 3.0, elapsed
        finally:
            os.kill(triton.process.pid, signal.SIGCONT)
        wait_until(
            lambda: (
                metric_value(
                    urllib.request.urlopen(gw.metrics_url).read().decode(),
                    "vaegan_inflight_requests",
                )
                == 0
            )
        )
        assert c.generate(count=1)[0].shape == (1, 32, 32, 3)


def test_sigterm_under_load_finishes_accepted_calls_refuses_new_ones_and_exits_zero(repo):
    proc, target, _ = serve_process(repo, metrics=False, grace_s=10)
    try:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
        wait_until(lambda: _check(health) == SERVING)
        calls: list[tuple[float, str]] = []  # (start time, outcome)
        stop = threading.Event()

        def hammer():
            with LatentClient(target, timeout=15) as c:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        c.generate(count=8)
                        calls.append((started, "OK"))
                    except grpc.RpcError as e:
                        calls.append((started, e.code().name))
                        time.sleep(0.05)

        with ThreadPoolExecutor(8) as pool:
            for _ in range(8):
                pool.submit(hammer)
            time.sleep(1.0)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            stop.set()
        outcomes = [outcome for _, outcome in calls]
        after = [outcome for started, outcome in calls if started >= signalled]
        # Accepted calls finish; calls arriving while the gateway drains get its retryable
        # UNAVAILABLE. A call reaching the transport in the last instant, as gRPC itself shuts
        # down, is cancelled by gRPC core before any handler sees it: at most one such here.
        assert outcomes.count("OK") > 50
        assert (
            set(outcomes) <= {"OK", "UNAVAILABLE", "CANCELLED"} and outcomes.count("CANCELLED") <= 1
        ), set(outcomes)
        assert after and "OK" not in after
    finally:
        proc.kill()


def _check(health):
    try:
        return health.Check(READY, timeout=1).status
    except grpc.RpcError:
        return None


def test_generated_pngs_decode(gateway):
    # Guard against a codec regression in the error paths above: normal output still decodes.
    stub = pb_grpc.LatentServiceStub(grpc.insecure_channel(gateway.target))
    r = stub.Generate(pb.GenerateRequest(sample=pb.Sample(count=2)), timeout=10)
    assert [np.asarray(Image.open(io.BytesIO(i.data))).shape for i in r.images] == [(32, 32, 3)] * 2


def test_past_the_concurrency_cap_calls_are_refused_at_once(repo):
    with (
        LocalTriton(repo) as triton,
        GatewayThread(
            Settings(triton_url=triton.grpc_url, max_inflight=2, max_inflight_per_connection=2)
        ) as gw,
        LatentClient(gw.target, timeout=15) as c,
    ):
        c.generate(count=1)
        os.kill(triton.process.pid, signal.SIGSTOP)  # accepted calls now wait on Triton
        try:
            with ThreadPoolExecutor(2) as pool:
                stuck = [
                    pool.submit(
                        lambda: _code(lambda: LatentClient(gw.target, timeout=3).generate(count=1))
                    )
                    for _ in range(2)
                ]
                wait_until(
                    lambda: (
                        metric_value(
                            urllib.request.urlopen(gw.metrics_url).read().decode(),
                            "vaegan_inflight_requests",
                        )
                        == 2
                    )
                )
                t = time.monotonic()
                code, details = _code(lambda: c.generate(count=1))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "its limit" in details
                assert time.monotonic() - t < 1.0  # at once, not after the 15 s deadline
                assert [f.result()[0] for f in stuck] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
        finally:
            os.kill(triton.process.pid, signal.SIGCONT)
        wait_until(lambda: _ok(c))


def _ok(c) -> bool:
    try:
        return c.generate(count=1)[0].shape == (1, 32, 32, 3)
    except grpc.RpcError:
        return False


def test_tritons_full_queue_rejection_becomes_resource_exhausted():
    from tritonclient.utils import InferenceServerException

    from vaegan.errors import ResourceExhausted, Unavailable
    from vaegan.service.backends import triton_error

    full = InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")
    down = InferenceServerException(
        "failed to connect to all addresses", status="StatusCode.UNAVAILABLE"
    )
    assert isinstance(triton_error(full, "vaegan_decoder"), ResourceExhausted)
    assert isinstance(triton_error(down, "vaegan_decoder"), Unavailable)


def _proc_counts(pid: int) -> tuple[int, int]:
    """Open file descriptors and threads of a process (Linux /proc)."""
    return open_fds(pid), threads(pid)


KILLED_CLIENT = """
import sys, grpc
from vaegan.v1 import vaegan_pb2 as pb, vaegan_pb2_grpc as pb_grpc
stub = pb_grpc.LatentServiceStub(grpc.insecure_channel(sys.argv[1]))
data = open(sys.argv[2], "rb").read()
print("sending", flush=True)
stub.Encode(pb.EncodeRequest(images=[data] * 4), timeout=60)
"""


def test_clients_killed_mid_request_leak_no_descriptors_threads_or_calls(repo, tmp_path):
    gateway, target, metrics_url = serve_process(repo)
    image = tmp_path / "big.png"
    image.write_bytes(encode(pattern(3000, 3000, 2), "PNG"))  # slow enough to be killed mid-call
    try:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
        wait_until(lambda: _check(health) == SERVING)
        # Warm every pool to its full size before counting: the decode lanes and the
        # inference pool start threads as concurrent work first needs them (bounded, not
        # leaked), so the warm-up sends as many at once as the killed clients may overlap.
        with LatentClient(target) as c, ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: c.encode([image.read_bytes()]), range(4)))
        baseline = _proc_counts(gateway.pid)
        for _ in range(20):
            client = subprocess.Popen(
                [sys.executable, "-c", KILLED_CLIENT, target, str(image)], stdout=subprocess.PIPE
            )
            client.stdout.readline()  # "sending"
            time.sleep(0.15)  # the request is on its way or being decoded
            client.kill()
            client.wait()
        wait_until(
            lambda: (
                metric_value(
                    urllib.request.urlopen(metrics_url).read().decode(), "vaegan_inflight_requests"
                )
                == 0
            )
        )
        time.sleep(1.0)
        fds, threads = _proc_counts(gateway.pid)
        assert fds <= baseline[0] + 2, (
            baseline,
            fds,
        )  # a listening/metrics socket may churn, nothing grows
        assert threads <= baseline[1] + 1, (baseline, threads)
        with LatentClient(target) as c:
            assert c.generate(count=1)[0].shape == (1, 32, 32, 3)
    finally:
        gateway.kill()
        gateway.wait()


def test_triton_killed_under_load_recovers_and_no_call_outlives_its_deadline(repo):
    server = LocalTriton(repo)
    server.start()
    ports = dict(
        grpc_port=server.grpc_port, http_port=server.http_port, metrics_port=server.metrics_port
    )
    restarted = None
    try:
        with GatewayThread(Settings(triton_url=server.grpc_url, health_poll_s=0.2)) as gw:
            results: list[tuple[float, float, str]] = []  # (start, duration, outcome)
            stop = threading.Event()

            def hammer():
                # The gateway's behaviour is under test: a throttling client would also
                # refuse calls itself for a while after the outage.
                with LatentClient(gw.target, timeout=2.0, throttle=False) as c:
                    while not stop.is_set():
                        t = time.monotonic()
                        try:
                            c.generate(count=2)
                            outcome = "OK"
                        except grpc.RpcError as e:
                            outcome = e.code().name
                            time.sleep(0.05)
                        results.append((t, time.monotonic() - t, outcome))

            with ThreadPoolExecutor(6) as pool:
                for _ in range(6):
                    pool.submit(hammer)
                time.sleep(1.5)
                killed_at = time.monotonic()
                os.killpg(server.process.pid, signal.SIGKILL)
                server.process.wait()
                server.process = None
                time.sleep(2.0)
                restarted = LocalTriton(repo, **ports).start()
                back_at = time.monotonic()
                time.sleep(6.0)
                stop.set()
        assert max(d for _, d, _ in results) < 2.0 + 1.0  # nothing hung past its 2 s deadline
        errors = [(t, o) for t, _, o in results if o != "OK"]
        assert errors and {o for _, o in errors} <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, {
            o for _, o in errors
        }
        assert all(
            killed_at - 0.5 <= t <= back_at + 5.0 for t, _ in errors
        )  # only during the outage + a few s
        assert any(
            o == "OK" and t > back_at for t, _, o in results
        )  # recovered without a gateway restart
    finally:
        for s in (server, restarted):
            if s is not None:
                s.stop()


def test_a_connection_past_its_stream_limit_is_held_back_by_the_transport(repo):
    # The flood protection that costs no Python: streams past the per-connection limit never
    # reach a handler, so the gateway spends nothing on them and keeps serving the others.
    with (
        LocalTriton(repo) as triton,
        GatewayThread(Settings(triton_url=triton.grpc_url, max_streams_per_connection=2)) as gw,
    ):
        channel = grpc.insecure_channel(gw.target)
        stub = pb_grpc.LatentServiceStub(channel)
        req = pb.GenerateRequest(sample=pb.Sample(count=1))
        stub.Generate(req, timeout=15)
        os.kill(triton.process.pid, signal.SIGSTOP)  # the two accepted streams now wait
        try:
            # Long enough to be seen in flight on a busy machine, short enough to end the test.
            stuck = [stub.Generate.future(req, timeout=8) for _ in range(2)]
            wait_until(lambda: _inflight(gw) == 2, timeout=7)
            before = _handled_total(gw)
            code, _ = _code(lambda: stub.Generate(req, timeout=1))
            # A client that has the server's SETTINGS waits for a free stream (here: until its
            # deadline); a stream opened before it saw them is refused (UNAVAILABLE).
            assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            assert _handled_total(gw) == before  # it never reached a handler
            assert _inflight(gw) == 2
            for f in stuck:
                assert f.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            os.kill(triton.process.pid, signal.SIGCONT)
        wait_until(lambda: _ok_stub(stub, req))
        channel.close()


def _handled_total(gw) -> float:
    text = urllib.request.urlopen(gw.metrics_url).read().decode()
    return metric_value(text, "grpc_server_handled_total")


def _ok_stub(stub, req) -> bool:
    try:
        return len(stub.Generate(req, timeout=5).images) == 1
    except grpc.RpcError:
        return False


def _triton_count(triton: LocalTriton, name: str) -> float:
    text = urllib.request.urlopen(triton.metrics_url).read().decode()
    return metric_value(text, name, model="vaegan_decoder")


def test_a_caller_giving_up_does_not_cancel_the_call_triton_is_running(repo):
    """Triton 2.51 can crash when a call is cancelled as its response completes
    (triton-inference-server/server#7368); the gateway lets Triton finish instead."""
    import asyncio

    from vaegan.service.backends import TritonBackend
    from vaegan.service.metrics import Metrics

    names = {"encoder": "vaegan_encoder", "decoder": "vaegan_decoder"}
    z = np.zeros((2, 16), np.float32)
    with LocalTriton(repo) as triton:
        # Triton's counters are published with a delay: wait for each expected value.
        def finished(n: int) -> bool:
            return _triton_count(triton, "nv_inference_request_success_total") == n

        async def run():
            backend = TritonBackend(triton.grpc_url, names, "", Metrics("triton", "t"))
            await backend.infer("decoder", "1", z, 5.0)  # connected, one call finished
            await asyncio.to_thread(wait_until, lambda: finished(1))
            os.kill(triton.process.pid, signal.SIGSTOP)  # the call below waits on Triton
            try:
                caller = asyncio.ensure_future(backend.infer("decoder", "1", z, 5.0))
                await asyncio.sleep(0.3)
                caller.cancel()  # the caller's deadline passed, or it went away
                with pytest.raises(asyncio.CancelledError):
                    await caller
            finally:
                os.kill(triton.process.pid, signal.SIGCONT)
            # Triton runs the abandoned call to completion: nothing was cancelled under it.
            await asyncio.to_thread(wait_until, lambda: finished(2), 15.0)
            await backend.close()

        asyncio.run(run())


def test_at_the_cap_calls_are_refused_before_their_request_is_parsed(repo):
    with GatewayThread(Settings(model_repository=str(repo), max_inflight=4)) as gw:
        channel = grpc.insecure_channel(gw.target)
        raw = channel.unary_unary("/vaegan.v1.LatentService/Generate")  # bytes in, bytes out
        raw_stream = channel.unary_stream("/vaegan.v1.LatentService/InterpolateStream")
        not_protobuf = b"\xff\xff\xff\xff"

        async def hold(n):  # the cap is reached: as if four calls were running
            gw.running.lifecycle.inflight += n

        gw.call(hold(4))
        try:
            with pytest.raises(grpc.RpcError) as e:
                raw(not_protobuf, timeout=5)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "its limit" in e.value.details()
            with pytest.raises(grpc.RpcError) as e:
                list(raw_stream(not_protobuf, timeout=5))
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            gw.call(hold(-4))
        # Below the cap the same bytes are parsed, and fail as the malformed request they are.
        with pytest.raises(grpc.RpcError) as e:
            raw(not_protobuf, timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        text = urllib.request.urlopen(gw.metrics_url).read().decode()
        assert metric_value(text, "grpc_server_handled_total", grpc_code="RESOURCE_EXHAUSTED") == 2
        with LatentClient(gw.target, timeout=10) as c:
            assert c.generate(count=1)[0].shape == (1, 32, 32, 3)


def test_a_request_that_is_not_protobuf_is_invalid_argument_naming_the_message(gateway):
    channel = grpc.insecure_channel(gateway.target)
    unary = channel.unary_unary("/vaegan.v1.LatentService/Generate")  # bytes in, bytes out
    stream = channel.unary_stream("/vaegan.v1.LatentService/InterpolateStream")
    for method, send in (
        ("Generate", lambda body: unary(body, timeout=5)),
        ("InterpolateStream", lambda body: list(stream(body, timeout=5))),
    ):
        with pytest.raises(grpc.RpcError) as e:
            send(b"\xff\xff\xff\xff")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert "is not a valid vaegan.v1." in e.value.details()
        assert "class" not in e.value.details()  # no Python exception type leaks
    with LatentClient(gateway.target, timeout=10) as c:
        assert c.generate(count=1)[0].shape[0] == 1


def _bombs(side: int) -> dict[str, bytes]:
    """Small files under the pixel cap that are expensive to decode: RGBA, a palette with a
    transparent colour, 16-bit greyscale (all zeros: they compress to almost nothing)."""
    out = {}
    for name, im, extra in (
        ("rgba", Image.new("RGBA", (side, side)), {}),
        ("palette", Image.new("P", (side, side)), {"transparency": 0}),
        ("16bit", Image.new("I;16", (side, side)), {}),
    ):
        buf = io.BytesIO()
        im.save(buf, format="PNG", **extra)
        out[name] = buf.getvalue()
    return out


def test_decompression_bombs_sent_together_stay_inside_the_decode_memory_budget(repo):
    from vaegan.host import peak_rss_mib
    from vaegan.service.process import spawn, wait_ready

    budget_mb = 64  # large images get three quarters of it: 48 MiB
    gw = spawn(
        {
            "model_repository": str(repo),
            "decode_memory_mb": str(budget_mb),
            "decode_threads": "4",  # room for four decodes at once, were it not for the budget
            "max_image_pixels": "4000000",
        },
        by_env=True,
    )
    try:
        wait_ready(gw.target)
        bombs = _bombs(1700)  # 2.9 Mpx each: 38-43 MiB to decode, one at a time fits
        assert max(len(b) for b in bombs.values()) < 100_000
        # The attacker's own connection (other channel options than the victim's client).
        attacker = grpc.insecure_channel(gw.target, options=[("grpc.enable_retries", 0)])
        stub = pb_grpc.LatentServiceStub(attacker)
        with LatentClient(gw.target, timeout=120) as victim:
            victim.encode([encode(pattern(64, 64), "PNG")])  # warm: the baseline has a decode
            before = peak_rss_mib(gw.process.pid)
            with ThreadPoolExecutor(12) as pool:
                requests = [pb.EncodeRequest(images=[b]) for b in bombs.values()] * 4
                jobs = [pool.submit(stub.Encode, r, timeout=120) for r in requests]
                wait_until(lambda: _inflight(gw) >= 6, timeout=30, every=0.01)
                # Another caller's ordinary image does not wait behind the queued bombs.
                assert victim.encode([encode(pattern(64, 64), "PNG")]).mu.shape == (1, 16)
                assert sum(j.done() for j in jobs) < len(jobs) // 2
                results = [j.result() for j in jobs]
            assert all(len(r.encodings) == 1 for r in results)  # served, not refused
            grown = peak_rss_mib(gw.process.pid) - before
        assert grown < budget_mb + 40, f"peak RSS grew {grown:.0f} MiB; budget {budget_mb} MiB"
        attacker.close()
    finally:
        gw.process.terminate()
        gw.process.wait(30)


def _gzip_bomb(size: int) -> pb.EncodeRequest:
    """A request of ``size`` bytes of zeros: gzip sends it in about a thousandth of that."""
    return pb.EncodeRequest(images=[bytes(size)])


def test_a_compressed_request_is_refused_before_it_is_inflated(repo):
    from vaegan.host import peak_rss_mib
    from vaegan.service.process import spawn, wait_ready

    gw = spawn({"model_repository": str(repo)})
    try:
        wait_ready(gw.target)
        channel = grpc.insecure_channel(gw.target, options=[("grpc.max_send_message_length", -1)])
        stub = pb_grpc.LatentServiceStub(channel)
        stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        before = peak_rss_mib(gw.process.pid)
        bomb = _gzip_bomb(15 << 20)  # under the 16 MiB message cap once inflated
        with ThreadPoolExecutor(16) as pool:
            codes = list(
                pool.map(
                    lambda _: _code(
                        lambda: stub.Encode(bomb, compression=grpc.Compression.Gzip, timeout=30)
                    ),
                    range(16),
                )
            )
        assert {c for c, _ in codes} == {grpc.StatusCode.UNIMPLEMENTED}, codes[0]
        assert "gzip" in codes[0][1] and "disabled" in codes[0][1]
        grown = peak_rss_mib(gw.process.pid) - before
        assert grown < 30, f"peak RSS grew {grown:.0f} MiB for requests that were refused"
        ok = stub.Encode(pb.EncodeRequest(images=[encode(pattern(64, 64), "PNG")]), timeout=10)
        assert len(ok.encodings) == 1
        channel.close()
    finally:
        gw.process.terminate()
        gw.process.wait(30)


def test_an_accepted_compressed_request_is_capped_by_the_message_limit_once_inflated(repo):
    settings = Settings(
        model_repository=str(repo), compressed_requests=True, max_message_bytes=1 << 20
    )
    with GatewayThread(settings) as gw:
        stub = pb_grpc.LatentServiceStub(
            grpc.insecure_channel(gw.target, options=[("grpc.max_send_message_length", -1)])
        )
        code, _ = _code(
            lambda: stub.Encode(_gzip_bomb(2 << 20), compression=grpc.Compression.Gzip, timeout=10)
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        small = pb.EncodeRequest(images=[encode(pattern(64, 64), "PNG")])
        assert len(stub.Encode(small, compression=grpc.Compression.Gzip, timeout=10).encodings)


def _noise_png(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


def test_request_bytes_held_in_flight_are_bounded_and_given_back(repo):
    # Each request carries a ~0.8 MB keyframe and is a stream nobody reads, so it stays in
    # flight holding its bytes: with a 1 MiB budget the second one cannot be admitted.
    settings = Settings(
        model_repository=str(repo),
        max_message_bytes=1 << 20,
        request_memory_mb=1,
        max_stream_message_bytes=64 * 1024,  # an open GenerateStream's share fits the budget
        max_frames=1024,
        max_steps=1024,
    )
    image = _noise_png(512)
    assert 600_000 < len(image) < 1 << 20
    request = pb.InterpolateRequest(
        keyframes=[pb.Keyframe(image=image), pb.Keyframe(embedding=pb.Embedding(values=[0] * 16))],
        steps=1022,
    )
    with GatewayThread(settings) as gw:
        channel = grpc.insecure_channel(gw.target)
        stub = pb_grpc.LatentServiceStub(channel)
        hog = stub.InterpolateStream(request)
        wait_until(lambda: _inflight(gw) == 1, timeout=30, every=0.05)
        code, details = _code(lambda: list(stub.InterpolateStream(request, timeout=10)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--request-memory-mb" in details, details
        # Small requests still fit beside it.
        with LatentClient(gw.target, timeout=10) as other:
            assert other.generate(count=1)[0].shape[0] == 1
        hog.cancel()
        wait_until(lambda: _inflight(gw) == 0, timeout=10, every=0.05)
        frames = list(stub.InterpolateStream(request, timeout=60))  # its bytes were given back
        assert len(frames) == 1024
        channel.close()


def test_a_request_memory_budget_below_the_message_cap_stops_the_gateway_at_start():
    settings = Settings(model_repository="unused", max_message_bytes=4 << 20, request_memory_mb=2)
    with pytest.raises(VaeganError, match="--request-memory-mb 2 is smaller"):
        settings.check()
    one_stream = Settings(model_repository="unused", max_message_bytes=1 << 20, request_memory_mb=1)
    with pytest.raises(VaeganError, match="cannot hold one GenerateStream's --max-stream-pending"):
        one_stream.check()


def _unread_streams(target: str, n: int, frames: int = 1024):
    """``n`` InterpolateStream calls on one connection that never read a frame: the server
    fills the flow-control window and then waits on the writes. No BDP probing, so the windows
    stay small: grown by it, they can hold all 1,024 of the tiny model's frames, and a call
    that finishes frees its slot (a CI run once saw 3 calls in flight where 4 were held)."""
    channel = grpc.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)])
    stub = pb_grpc.LatentServiceStub(channel)
    keys = [pb.Keyframe(embedding=pb.Embedding(values=[v] * 16)) for v in (0.0, 1.0)]
    request = pb.InterpolateRequest(keyframes=keys, steps=frames - 2)
    return channel, [stub.InterpolateStream(request) for _ in range(n)]


def _inflight(gw) -> float:
    text = urllib.request.urlopen(gw.metrics_url, timeout=5).read().decode()
    return metric_value(text, "vaegan_inflight_requests")


def test_one_connection_cannot_take_every_in_flight_slot(repo):
    settings = Settings(model_repository=str(repo), max_inflight=8, max_frames=1024, max_steps=1024)
    with GatewayThread(settings) as gw:
        channel, hog = _unread_streams(gw.target, 8)  # as many calls as the gateway's cap
        try:
            wait_until(lambda: _inflight(gw) >= 4, timeout=30, every=0.05)
            time.sleep(0.5)  # every call of the hog has reached the gateway by now
            assert _inflight(gw) == 4  # half of the 8 slots
            with LatentClient(gw.target, timeout=10) as victim:  # its own connection
                assert victim.generate(count=1)[0].shape[0] == 1
        finally:
            for call in hog:
                call.cancel()
            channel.close()


def test_streams_whose_reader_stopped_are_ended_with_their_connection_and_free_their_slots(repo):
    # A message gRPC is writing cannot be cancelled (cancelling the write hangs the call), so
    # --max-call-s never fires on a stream stuck in a write: its connection's age limit
    # does, GOAWAY and then a forced close once --grace-s has passed, which ends its calls.
    settings = Settings(
        model_repository=str(repo),
        max_inflight=8,
        max_frames=1024,
        max_steps=1024,
        max_call_s=0.5,
        max_connection_age_s=2.0,
        grace_s=1.0,
    )
    with GatewayThread(settings) as gw:
        channel, hog = _unread_streams(gw.target, 8)
        try:
            wait_until(lambda: _inflight(gw) >= 4, timeout=30, every=0.05)
            time.sleep(1.0)  # past --max-call-s: the calls are held by their writes alone
            assert _inflight(gw) == 4
            wait_until(lambda: _inflight(gw) == 0, timeout=20, every=0.1)
            codes = []
            for call in hog:  # ended by the server: what they hold is buffered frames, then
                with pytest.raises(grpc.RpcError) as e:  # their status
                    for _ in call:
                        pass
                codes.append(e.value.code())
            # Half were refused their share at once; the held half ended with the connection.
            assert sorted(c.name for c in codes) == ["RESOURCE_EXHAUSTED"] * 4 + ["UNAVAILABLE"] * 4
            with LatentClient(gw.target, timeout=10) as c:  # and the gateway serves on
                assert c.generate(count=1)[0].shape[0] == 1
        finally:
            for call in hog:
                call.cancel()
            channel.close()


def test_a_call_that_outlives_the_servers_limit_ends_with_deadline_exceeded(repo):
    # No client deadline; the server's own limit (50 ms) is shorter than producing 1,024
    # frames takes, so the call must end there, its slot freed.
    settings = Settings(
        model_repository=str(repo), max_call_s=0.05, max_frames=1024, max_steps=1024
    )
    with GatewayThread(settings) as gw:
        channel, (call,) = _unread_streams(gw.target, 1)
        try:
            got = 0
            with pytest.raises(grpc.RpcError) as e:
                for _ in call:
                    got += 1
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.value.details()
            assert "--max-call-s" in e.value.details() and got < 1024
            wait_until(lambda: _inflight(gw) == 0, timeout=10, every=0.05)
        finally:
            channel.close()


def test_a_unary_call_past_the_servers_limit_ends_there_whatever_its_deadline(repo):
    # The server's limit applies to calls without a deadline and to calls whose deadline
    # is later than it; a call whose own deadline comes first ends at that deadline.
    with GatewayThread(Settings(model_repository=str(repo), max_call_s=0.3)) as gw:
        real = gw.running.core.backend.infer

        async def slow(role, version, array, timeout):
            await asyncio.sleep(1.0)
            return await real(role, version, array, timeout)

        gw.running.core.backend.infer = slow
        for deadline in (None, 30.0):
            with LatentClient(gw.target, timeout=deadline, throttle=False) as c:
                with pytest.raises(grpc.RpcError) as e:
                    c.generate(count=1)
                assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "--max-call-s" in e.value.details()
        with LatentClient(gw.target, timeout=0.1, throttle=False) as c:
            with pytest.raises(grpc.RpcError) as e:
                c.generate(count=1)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "--max-call-s" not in (e.value.details() or "")
        gw.running.core.backend.infer = real
        with LatentClient(gw.target, throttle=False) as c:  # and the gateway serves on
            assert c.generate(count=1)[0].shape[0] == 1
        wait_until(lambda: _inflight(gw) == 0, timeout=10, every=0.05)


def test_a_call_whose_deadline_passes_while_queued_is_counted_as_deadline_exceeded(repo, caplog):
    # grpc.aio cancels the handler at the caller's deadline; the outcome is the deadline,
    # not a caller who went away (dashboards and SLOs count the two differently).
    from vaegan.errors import DeadlineExceeded

    with GatewayThread(Settings(model_repository=str(repo))) as gw:

        async def late(role, version, array, timeout):
            await asyncio.sleep(1.5)
            raise DeadlineExceeded("vaegan_decoder: inference did not finish before the deadline")

        def handled(code: str) -> float:
            text = urllib.request.urlopen(gw.metrics_url, timeout=5).read().decode()
            return metric_value(
                text, "grpc_server_handled_total", grpc_method="Generate", grpc_code=code
            )

        gw.running.core.backend.infer = late
        # Deadlines long enough that every handler starts well before them, even on a loaded
        # machine: a CI run with 100 ms deadlines once counted only 2 of the 3 calls.
        with LatentClient(gw.target, timeout=0.5, throttle=False) as c:
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as e:
                    c.generate(count=1)
                assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: handled("DEADLINE_EXCEEDED") + handled("CANCELLED") >= 3, timeout=10)
        time.sleep(1.5)  # the backend calls have ended too: nothing is logged after them
        assert handled("DEADLINE_EXCEEDED") == 3
        assert handled("CANCELLED") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


class _ExpiredContext:
    """A servicer context whose deadline has passed: gRPC has ended the call already."""

    aborted = False

    def time_remaining(self):
        return -0.01

    def done(self):
        return False

    async def abort(self, code, details):
        self.aborted = True  # grpc.aio would fail here and log an ERROR with a traceback


def test_an_error_raised_after_the_deadline_sends_no_status_on_the_ended_call():
    from vaegan.errors import DeadlineExceeded
    from vaegan.service.interceptors import Outcomes, StatusInterceptor
    from vaegan.service.metrics import Metrics

    outcomes = Outcomes(Metrics("test", "0"))
    status = StatusInterceptor(outcomes)._status("Generate")
    context = _ExpiredContext()

    async def call():
        async with status(object(), context):
            raise DeadlineExceeded("vaegan_decoder: inference did not finish before the deadline")

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(call())
    assert not context.aborted


def _handled(metrics, method: str, *codes: str) -> dict[str, float]:
    """grpc_server_handled_total of ``method`` by code, read from the gateway's registry."""
    from vaegan.service.interceptors import SERVICE

    labels = {"grpc_service": SERVICE, "grpc_method": method}
    sample = metrics.registry.get_sample_value
    return {c: sample("grpc_server_handled_total", {**labels, "grpc_code": c}) for c in codes}


class _CancelledContext:
    """A servicer context of a call that gRPC cancels with ``left`` seconds to its deadline."""

    def __init__(self, left):
        self.left = left

    def time_remaining(self):
        return self.left

    def done(self):
        return True


@pytest.mark.parametrize(
    "left, code",
    [
        (0.0, "DEADLINE_EXCEEDED"),
        # The caller's own deadline ran out and its cancel arrived just before the server's
        # copy of that deadline (which started when the headers arrived): seen in CI.
        (0.0006, "DEADLINE_EXCEEDED"),
        (5.0, "CANCELLED"),  # the caller went away long before its deadline
        (None, "CANCELLED"),  # a call without a deadline
    ],
)
def test_a_cancel_at_the_callers_deadline_counts_as_the_deadline_and_an_earlier_one_as_cancelled(
    left, code
):
    from vaegan.service.interceptors import Outcomes, StatusInterceptor
    from vaegan.service.metrics import Metrics

    metrics = Metrics("test", "0")
    status = StatusInterceptor(Outcomes(metrics))._status("Generate")

    async def call():
        async with status(object(), _CancelledContext(left)):
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(call())
    counted = _handled(metrics, "Generate", "DEADLINE_EXCEEDED", "CANCELLED")
    assert counted == {c: float(c == code) for c in counted}


def test_a_response_stream_gRPC_drops_unfinished_counts_as_cancelled_and_stops_its_work():
    # When a connection is closed under a stream (recycled past its grace), gRPC's write of
    # the next message fails and it drops the handler's generator without finishing it.
    from types import SimpleNamespace

    from vaegan.service.interceptors import SERVICE, Outcomes, StatusInterceptor
    from vaegan.service.metrics import Metrics

    stopped = []

    async def answers(requests, context):
        try:
            for i in range(10):
                yield i
        finally:
            stopped.append(True)  # the servicer's own clean-up: its tasks are cancelled

    async def continuation(details):
        return grpc.stream_stream_rpc_method_handler(answers)

    metrics = Metrics("test", "0")
    interceptor = StatusInterceptor(Outcomes(metrics))
    details = SimpleNamespace(method=f"/{SERVICE}/GenerateStream", invocation_metadata=())

    async def call():
        handler = await interceptor.intercept_service(continuation, details)
        stream = handler.stream_stream(None, _CancelledContext(None))
        assert await anext(stream) == 0  # one message written, then the write of the next fails
        await stream.aclose()
        assert stopped  # at once, not whenever the garbage collector gets to it

    asyncio.run(call())
    assert _handled(metrics, "GenerateStream", "OK", "CANCELLED") == {"OK": 0.0, "CANCELLED": 1.0}
