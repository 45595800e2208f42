"""GenerateStream: many Generate requests over one bidirectional stream, against a real
gateway over loopback (embedded backend, and the real local Triton)."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from gateway_harness import GatewayThread, wait_until

from vaegan.export.local_triton import LocalTriton
from vaegan.service.metrics import metric_value
from vaegan.service.settings import Settings
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc

LATENT = 16
RAW = pb.OutputOptions(format=pb.IMAGE_FORMAT_RAW)


@pytest.fixture(scope="module", params=["embedded", "triton"])
def gateway(request, repo):
    if request.param == "embedded":
        with GatewayThread(Settings(model_repository=str(repo))) as gw:
            yield gw
    else:
        with LocalTriton(repo) as triton, GatewayThread(Settings(triton_url=triton.grpc_url)) as gw:
            yield gw


def _generate(values, **kw) -> pb.GenerateRequest:
    items = [pb.Embedding(values=list(map(float, v))) for v in values]
    return pb.GenerateRequest(embeddings=pb.EmbeddingList(items=items), output=RAW, **kw)


def _metrics(gw) -> str:
    return urllib.request.urlopen(gw.metrics_url, timeout=5).read().decode()


def test_every_message_is_answered_with_its_index_as_unary_generate_answers_it(gateway):
    stub = pb_grpc.LatentServiceStub(grpc.insecure_channel(gateway.target))
    z = np.random.default_rng(0).standard_normal((30, 2, LATENT)).astype(np.float32)
    answers = list(stub.GenerateStream(iter([_generate(v) for v in z]), timeout=60))
    assert sorted(a.index for a in answers) == list(range(30))
    for a in answers:
        unary = stub.Generate(_generate(z[a.index]), timeout=30)
        assert a.WhichOneof("result") == "response"
        assert [i.data for i in a.response.images] == [i.data for i in unary.images]
        assert a.response.decoder_version == unary.decoder_version


def test_a_bad_message_gets_its_own_error_and_the_stream_goes_on(gateway):
    stub = pb_grpc.LatentServiceStub(grpc.insecure_channel(gateway.target))
    good = _generate([[0.1] * LATENT])
    bad = [
        _generate([[0.1] * (LATENT + 1)]),  # wrong length
        _generate([[float("nan")] * LATENT]),
        pb.GenerateRequest(sample=pb.Sample(count=1, temperature=3e38)),
        pb.GenerateRequest(sample=pb.Sample(count=1, refine_steps=17)),
        pb.GenerateRequest(),  # no source
        _generate([[0.1] * LATENT], model_version="01"),
    ]
    before = metric_value(
        _metrics(gateway), "vaegan_stream_messages_total", grpc_code="INVALID_ARGUMENT"
    )
    answers = list(stub.GenerateStream(iter([good, *bad, good]), timeout=30))
    by_index = {a.index: a for a in answers}
    assert sorted(by_index) == list(range(len(bad) + 2))
    assert by_index[0].HasField("response") and by_index[len(bad) + 1].HasField("response")
    for i in range(1, len(bad) + 1):
        err = by_index[i].error
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], err
        assert err.message and "Traceback" not in err.message
    assert "latent size is 16" in by_index[1].error.message
    after = metric_value(
        _metrics(gateway), "vaegan_stream_messages_total", grpc_code="INVALID_ARGUMENT"
    )
    assert after - before == len(bad)


def test_a_message_over_the_size_limit_is_answered_unparsed_and_so_is_a_malformed_one(gateway):
    channel = grpc.insecure_channel(gateway.target)
    # Raw bytes on the wire: a body that is not protobuf, and one over 256 KiB.
    call = channel.stream_stream(
        "/vaegan.v1.LatentService/GenerateStream",
        request_serializer=None,
        response_deserializer=pb.GenerateStreamResponse.FromString,
    )
    good = _generate([[0.2] * LATENT]).SerializeToString()
    big = _generate([[0.2] * LATENT] * 5000).SerializeToString()
    assert len(big) > 256 * 1024
    answers = {a.index: a for a in call(iter([b"\xff\xff\xff", big, good]), timeout=30)}
    assert (
        answers[0].error.code == answers[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    )
    assert "not a valid vaegan.v1.GenerateRequest" in answers[0].error.message
    assert "--max-stream-message-bytes" in answers[1].error.message
    assert answers[2].HasField("response")
    channel.close()


def test_a_client_that_sends_without_reading_is_held_back_not_buffered(repo):
    # No BDP probing: the flow-control windows stay small, so the gateway's answers back up
    # after a few, and then it must stop reading the client's messages.
    options = [("grpc.http2.bdp_probe", 0)]
    with GatewayThread(Settings(model_repository=str(repo), max_stream_pending=4)) as gw:
        channel = grpc.insecure_channel(gw.target, options=options)
        stub = pb_grpc.LatentServiceStub(channel)
        sent = 0
        msg = _generate([[0.3] * LATENT] * 64)  # 64 RAW 32x32 images per answer: ~200 KB

        def requests():
            nonlocal sent
            for _ in range(2000):
                sent += 1
                yield msg

        call = stub.GenerateStream(requests())
        time.sleep(3.0)  # nothing is read meanwhile
        answered = metric_value(_metrics(gw), "vaegan_stream_messages_total", grpc_code="OK")
        # What the gateway took in is its 4 in progress plus what fits in the windows.
        assert answered < 40, answered
        assert sent < 2000
        for got, _ in enumerate(call, 1):  # reading lets everything through
            if got == 100:
                break
        call.cancel()
        wait_until(lambda: metric_value(_metrics(gw), "vaegan_inflight_requests") == 0, timeout=10)
        channel.close()


def test_a_stream_cut_by_connection_recycling_while_its_answers_back_up_counts_as_cancelled(repo):
    # The reader is behind, so the gateway is waiting to write when the recycled connection's
    # grace ends: the stream never finishes, and the dashboards must not count it OK.
    settings = Settings(model_repository=str(repo), max_connection_age_s=1.0, grace_s=0.5)
    with GatewayThread(settings) as gw:
        channel = grpc.insecure_channel(gw.target, options=[("grpc.http2.bdp_probe", 0)])
        stub = pb_grpc.LatentServiceStub(channel)
        call = stub.GenerateStream(iter([_generate([[0.3] * LATENT] * 64)] * 200))

        def handled(code: str) -> float:
            return metric_value(
                _metrics(gw),
                "grpc_server_handled_total",
                grpc_method="GenerateStream",
                grpc_code=code,
            )

        wait_until(lambda: handled("CANCELLED") == 1, timeout=15)
        assert handled("OK") == 0
        with pytest.raises(grpc.RpcError) as e:
            for _ in call:
                pass
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()


def test_an_open_stream_holds_its_share_of_the_request_memory_budget(repo):
    # Each stream reserves 4 x 128 KiB = 512 KiB of a 1 MiB budget: two fit, a third waits
    # for neither and is refused at once.
    settings = Settings(
        model_repository=str(repo),
        request_memory_mb=1,
        max_message_bytes=1 << 20,
        max_stream_pending=4,
        max_stream_message_bytes=128 * 1024,
    )
    with GatewayThread(settings) as gw:
        channel = grpc.insecure_channel(gw.target)
        stub = pb_grpc.LatentServiceStub(channel)
        hold = threading.Event()

        def idle():
            yield _generate([[0.0] * LATENT])
            hold.wait(30)

        open_streams = [stub.GenerateStream(idle(), timeout=60) for _ in range(2)]
        for s in open_streams:
            assert next(s).HasField("response")
        with pytest.raises(grpc.RpcError) as e:
            list(stub.GenerateStream(iter([_generate([[0.0] * LATENT])]), timeout=10))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--request-memory-mb" in e.value.details()
        hold.set()
        for s in open_streams:
            assert list(s) == []  # ended OK once the client half-closed
        # Their reservations were given back.
        answers = list(stub.GenerateStream(iter([_generate([[0.0] * LATENT])]), timeout=10))
        assert len(answers) == 1 and answers[0].HasField("response")
        channel.close()


def test_a_stream_needs_a_token_like_any_call(repo):
    with GatewayThread(Settings(model_repository=str(repo), auth_tokens="s3cret")) as gw:
        channel = grpc.insecure_channel(gw.target)
        stub = pb_grpc.LatentServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            list(stub.GenerateStream(iter([_generate([[0.0] * LATENT])]), timeout=10))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = stub.GenerateStream(
            iter([_generate([[0.0] * LATENT])]),
            timeout=10,
            metadata=[("authorization", "Bearer s3cret")],
        )
        assert [a.HasField("response") for a in answers] == [True]
        channel.close()


def test_a_stream_past_the_servers_call_limit_ends_with_deadline_exceeded(repo):
    with GatewayThread(Settings(model_repository=str(repo), max_call_s=0.5)) as gw:
        channel = grpc.insecure_channel(gw.target)
        stub = pb_grpc.LatentServiceStub(channel)

        def forever():
            while True:
                yield _generate([[0.0] * LATENT])
                time.sleep(0.05)

        got = 0
        with pytest.raises(grpc.RpcError) as e:
            for _ in stub.GenerateStream(forever()):
                got += 1
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "--max-call-s" in e.value.details() and got > 0
        wait_until(lambda: metric_value(_metrics(gw), "vaegan_inflight_requests") == 0, timeout=10)
        channel.close()


def test_the_python_client_streams_requests_and_returns_each_answer_or_its_error(gateway):
    from vaegan.client import LatentClient

    z = np.random.default_rng(1).standard_normal((12, 3, LATENT)).astype(np.float32)
    requests = [*z[:6], np.zeros((1, LATENT + 2), np.float32), *z[6:]]
    with LatentClient(gateway.target) as c:
        answers = {a.index: a for a in c.generate_stream(requests)}
        assert sorted(answers) == list(range(13))
        assert answers[6].error[0] == "INVALID_ARGUMENT" and answers[6].images is None
        for i, want in enumerate([*range(6), *range(6, 12)]):
            a = answers[i if i < 6 else i + 1]
            images, used = c.generate(z[want])
            assert np.array_equal(a.images, images) and np.array_equal(a.embeddings, used)


def test_batch_job_sends_embedding_lines_as_stream_messages_not_calls(gateway, tmp_path):
    import json

    from vaegan.batch_job import run_job
    from vaegan.client import LatentClient

    def count(name, **labels):
        return metric_value(_metrics(gateway), name, **labels)

    before = (
        count("vaegan_stream_messages_total", grpc_code="OK"),
        count("grpc_server_handled_total", grpc_method="Generate"),
        count("grpc_server_handled_total", grpc_method="GenerateStream"),
    )
    lines = [{"embeddings": [0.1 * i] * LATENT, "key": i} for i in range(30)]
    lines[7] = {"embeddings": [0.0] * (LATENT + 1), "key": 7}  # the gateway refuses this one
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with LatentClient(gateway.target) as client:
        counts = run_job(client, src, tmp_path / "out.jsonl", concurrency=16, progress=False)
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert counts == {"ok": 29, "errors": 1}
    assert [o["key"] for o in out] == list(range(30))
    assert (
        out[7]["error"]["code"] == "INVALID_ARGUMENT"
        and "latent size" in out[7]["error"]["message"]
    )
    after = (
        count("vaegan_stream_messages_total", grpc_code="OK"),
        count("grpc_server_handled_total", grpc_method="Generate"),
        count("grpc_server_handled_total", grpc_method="GenerateStream"),
    )
    assert after[0] - before[0] == 29  # every good line was a stream message
    assert after[1] == before[1]  # and none a Generate call
    assert after[2] - before[2] == 2  # 16 concurrent lines: two streams of 8 in progress each


def test_batch_job_opens_a_new_stream_when_the_server_ends_one_and_loses_no_line(repo, tmp_path):
    import json
    import os

    from vaegan.batch_job import run_job
    from vaegan.client import LatentClient

    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)

    def slow_writer():  # a producer slower than the gateway's call limit
        with open(fifo, "w") as f:
            for i in range(16):
                f.write(json.dumps({"embeddings": [0.0] * LATENT, "key": i}) + "\n")
                f.flush()
                time.sleep(0.1)

    with GatewayThread(Settings(model_repository=str(repo), max_call_s=0.5)) as gw:
        writer = threading.Thread(target=slow_writer)
        writer.start()
        with LatentClient(gw.target) as client:
            counts = run_job(client, fifo, tmp_path / "out.jsonl", concurrency=8, progress=False)
        writer.join()
        streams = metric_value(
            _metrics(gw), "grpc_server_handled_total", grpc_method="GenerateStream"
        )
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["key"] for o in out] == list(range(16))  # every line answered, in order
    # A line the gateway held just as the limit ended its stream is sent again on the next.
    assert counts == {"ok": 16, "errors": 0}
    assert streams >= 3  # 1.6 s of input over 0.5 s streams


def test_a_batch_job_sends_again_the_lines_a_recycled_connection_left_unanswered(repo, tmp_path):
    # Connections recycled every half second with 0.1 s of grace cut streams mid-job (the
    # gateway counts them CANCELLED); the lines they held go out again on new streams, so
    # none ends as an error line.
    import json

    from vaegan.batch_job import run_job
    from vaegan.client import LatentClient

    rng = np.random.default_rng(0)
    src = tmp_path / "in.jsonl"
    with open(src, "w") as f:
        for i in range(8000):
            f.write(json.dumps({"embeddings": rng.standard_normal(LATENT).tolist(), "key": i}))
            f.write("\n")
    settings = Settings(model_repository=str(repo), max_connection_age_s=0.5, grace_s=0.1)
    with GatewayThread(settings) as gw:
        with LatentClient(gw.target) as client:
            counts = run_job(client, src, tmp_path / "out.jsonl", progress=False)
        text = _metrics(gw)
        cut = sum(  # streams that did not end OK: cut by the recycling
            metric_value(
                text, "grpc_server_handled_total", grpc_method="GenerateStream", grpc_code=c
            )
            for c in ("CANCELLED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN")
        )
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert cut >= 1  # the job did lose streams
    assert counts == {"ok": 8000, "errors": 0}
    assert [o["key"] for o in out] == list(range(8000))
