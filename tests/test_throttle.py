"""Client-side adaptive throttling: the rule on a fake clock, then the sync and asyncio
interceptors against a real gateway that refuses calls (its concurrency cap reached)."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from gateway_harness import GatewayThread

from vaegan.client import LatentClient
from vaegan.service.metrics import metric_value
from vaegan.service.settings import Settings
from vaegan.throttle import REFUSED, AdaptiveThrottle, AioThrottlingInterceptor
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_nothing_is_refused_while_the_gateway_accepts():
    t = AdaptiveThrottle(clock=Clock(), rand=lambda: 0.0)  # rand 0: refuse whenever p > 0
    for _ in range(1000):
        assert t.allow()
        t.record(grpc.StatusCode.OK)
    assert t.probability() == 0.0 and t.refused_locally == 0


def test_refusals_raise_the_probability_by_the_sre_rule_and_accepts_lower_it():
    t = AdaptiveThrottle(k=2, clock=Clock(), rand=lambda: 1.0)  # rand 1: never refuse locally
    for _ in range(30):
        t.allow()
        t.record(grpc.StatusCode.OK)
    for _ in range(70):
        t.allow()
        t.record(REFUSED)
    assert t.probability() == pytest.approx((100 - 2 * 30) / 101)
    for _ in range(20):  # accepted again: requests 120, accepts 50 -> (120 - 100) / 121
        t.allow()
        t.record(grpc.StatusCode.INVALID_ARGUMENT)  # the caller's fault, not overload
    assert t.probability() == pytest.approx(20 / 121)


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, REFUSED]
)
def test_stream_refusals_and_deadlines_count_as_overload_like_refusals(code):
    """A gateway whose core is full shows overload as HTTP/2 stream refusals (UNAVAILABLE)
    and calls queued past their deadline, more than as its own RESOURCE_EXHAUSTED."""
    t = AdaptiveThrottle(k=2, clock=Clock(), rand=lambda: 1.0)
    for _ in range(100):
        t.allow()
        t.record(code)
    assert t.probability() == pytest.approx(100 / 101)


def test_a_client_with_few_calls_is_never_throttled():
    """Two calls that met an outage must not make the client refuse its next call."""
    t = AdaptiveThrottle(clock=Clock(), rand=lambda: 0.0, min_requests=20)
    for _ in range(19):
        assert t.allow()
        t.record(grpc.StatusCode.UNAVAILABLE)
    assert t.probability() == 0.0 and t.allow()
    t.record(grpc.StatusCode.UNAVAILABLE)  # the 20th: now the rule applies
    assert t.probability() == pytest.approx(20 / 21) and not t.allow()


def test_old_outcomes_leave_the_window():
    clock = Clock()
    t = AdaptiveThrottle(window_s=10, clock=clock, rand=lambda: 1.0)
    for _ in range(50):
        t.allow()
        t.record(REFUSED)
    assert t.probability() > 0.9
    clock.now += 10.5
    assert t.probability() == 0.0


def test_k_below_one_is_refused():
    with pytest.raises(ValueError, match="k must be at least 1"):
        AdaptiveThrottle(k=0.5)


@pytest.fixture(scope="module")
def gateway(repo):
    with GatewayThread(Settings(model_repository=str(repo))) as gw:
        yield gw


def _set_full(gw, full: bool) -> None:
    """Holds the gateway's in-flight count at (or releases it from) its cap, so every new call
    is refused by the real admission check, as when it is saturated."""

    async def change():
        gw.running.lifecycle.inflight += 10_000 if full else -10_000

    gw.call(change())


def _refused_by_gateway(gw) -> float:
    text = urllib.request.urlopen(gw.metrics_url).read().decode()
    return metric_value(text, "grpc_server_handled_total", grpc_code="RESOURCE_EXHAUSTED")


@pytest.mark.integration
def test_sync_client_stops_sending_most_calls_while_the_gateway_refuses_and_recovers(gateway):
    now = [0.0]  # a clock the test moves: the window passes without real waiting
    throttle = AdaptiveThrottle(window_s=2.0, clock=lambda: now[0])
    with LatentClient(gateway.target, timeout=10, throttle=throttle) as c:
        c.generate(count=1)
        before = _refused_by_gateway(gateway)
        _set_full(gateway, True)
        try:
            codes, local = [], 0
            for _ in range(200):
                with pytest.raises(grpc.RpcError) as e:
                    c.generate(count=1)
                codes.append(e.value.code())
                local += "adaptive throttle" in e.value.details()
            with pytest.raises(grpc.RpcError) as e:  # a streaming call is throttled as well
                list(c.interpolate_stream([[0.0] * 16, [1.0] * 16], steps=4))
            assert e.value.code() == REFUSED
        finally:
            _set_full(gateway, False)
        sent = _refused_by_gateway(gateway) - before
        assert set(codes) == {REFUSED}
        assert local <= throttle.refused_locally <= local + 1  # + the streaming call
        # Only the calls that were sent cost the gateway anything: a small fraction of them.
        assert sent + throttle.refused_locally == 201 and sent < 40
        now[0] += 2.1  # the refusals leave the window: the client sends every call again
        images, _ = c.generate(count=1)
        assert images.shape[0] == 1 and throttle.probability() == 0.0


@pytest.mark.integration
def test_asyncio_interceptor_refuses_locally_and_counts_the_gateways_answers(gateway):
    throttle = AdaptiveThrottle()

    async def run():
        async with grpc.aio.insecure_channel(
            gateway.target, interceptors=[AioThrottlingInterceptor(throttle)]
        ) as channel:
            stub = pb_grpc.LatentServiceStub(channel)
            req = pb.GenerateRequest(sample=pb.Sample(count=1))
            for _ in range(20):
                await stub.Generate(req, timeout=10)
            await asyncio.sleep(0.1)  # the last answers are recorded by a callback
            accepted = throttle.probability()
            _set_full(gateway, True)
            try:
                codes = []
                for _ in range(300):
                    try:
                        await stub.Generate(req, timeout=10)
                    except grpc.aio.AioRpcError as e:
                        codes.append(e.code())
                keys = [pb.Keyframe(embedding=pb.Embedding(values=[v] * 16)) for v in (0.0, 1.0)]
                try:  # a streaming call goes through the same throttle
                    async for _ in stub.InterpolateStream(
                        pb.InterpolateRequest(keyframes=keys, steps=4), timeout=10
                    ):
                        pass
                except grpc.aio.AioRpcError as e:
                    codes.append(e.code())
                await asyncio.sleep(0.1)  # its answer, if sent, is recorded by a callback
            finally:
                _set_full(gateway, False)
            return accepted, codes

    before = _refused_by_gateway(gateway)
    accepted, codes = asyncio.run(run())
    sent = _refused_by_gateway(gateway) - before
    assert accepted == 0.0
    assert codes == [REFUSED] * 301
    assert sent + throttle.refused_locally == 301 and throttle.refused_locally > 150


def test_calls_still_in_flight_do_not_count_as_refused():
    t = AdaptiveThrottle(clock=Clock(), rand=lambda: 0.0)
    assert all(t.allow() for _ in range(50))  # 50 concurrent first calls, none answered yet
    for _ in range(50):
        t.record(grpc.StatusCode.OK)
    assert t.probability() == 0.0 and t.refused_locally == 0
