"""Client-side adaptive throttling, as in Google's SRE book ("Handling Overload").

A gateway refusing a call still pays for it: in grpc.aio a refused call costs about as much
CPU as a served one (benchmarks/grpc_floor.py measures both), so callers that keep sending
into an overloaded gateway can starve the calls it did accept. Each client therefore keeps, over the last two minutes,

    requests: calls the application attempted (including those refused locally)
    accepts:  calls that did not end in a sign of overload: RESOURCE_EXHAUSTED (the
              gateway refused), UNAVAILABLE (HTTP/2 refused the stream, or no backend) or
              DEADLINE_EXCEEDED (queued past the deadline)

and refuses a new call itself, without sending it, with probability

    max(0, (requests - k * accepts) / (requests + 1))

While the gateway accepts everything this is 0. Once it refuses more than it accepts
(k = 2), the client sends roughly k times what gets accepted and refuses the rest at no cost
to the gateway. Lower k throttles harder. A locally refused call ends with
RESOURCE_EXHAUSTED like a refused one, so callers handle both alike.

``ThrottlingInterceptor`` (sync channels) and ``AioThrottlingInterceptor`` (grpc.aio) apply
it to every unary and server-streaming call of a channel; ``LatentClient`` uses it.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections import deque

import grpc

REFUSED = grpc.StatusCode.RESOURCE_EXHAUSTED
# How an overloaded gateway answers. Past its cap it refuses (RESOURCE_EXHAUSTED), but when
# its core is full the calls wait before Python sees them, and show up as HTTP/2 stream
# refusals (UNAVAILABLE) and deadlines: counting only RESOURCE_EXHAUSTED, throttled callers
# refused nothing at 3x once Triton got a fair share of the CPU (benchmarks.loadtest).
OVERLOAD = frozenset({REFUSED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class AdaptiveThrottle:
    def __init__(
        self,
        k: float = 2.0,
        window_s: float = 120.0,
        *,
        clock=time.monotonic,
        rand=random.random,
        bucket_s: float = 1.0,
        min_requests: int = 20,
    ):
        if k < 1:
            raise ValueError(
                "k must be at least 1 (k < 1 would refuse calls a healthy gateway accepts)"
            )
        self.k, self.window_s, self.bucket_s = k, window_s, bucket_s
        # Below this many calls in the window the client never throttles (as Envoy's
        # admission control has an RPS threshold): on a few calls the rule is noise (one
        # failure gives p = 0.5), and so few calls cannot overload anything. Without it, a
        # caller whose two calls met a Triton outage refused its first call after recovery.
        self.min_requests = min_requests
        self._clock, self._rand = clock, rand
        self._buckets: deque[list] = deque()  # [start, requests, accepts], oldest first
        self._requests = self._accepts = 0
        self.refused_locally = 0  # calls this client never sent
        self._lock = threading.Lock()  # sync channels call from many threads

    def _bucket(self, now: float) -> list:
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            _, r, a = self._buckets.popleft()
            self._requests -= r
            self._accepts -= a
        if not self._buckets or self._buckets[-1][0] + self.bucket_s <= now:
            self._buckets.append([math.floor(now / self.bucket_s) * self.bucket_s, 0, 0])
        return self._buckets[-1]

    def _p(self) -> float:  # with the lock held, the window current
        if self._requests < self.min_requests:
            return 0.0
        return max(0.0, (self._requests - self.k * self._accepts) / (self._requests + 1))

    def probability(self) -> float:
        with self._lock:
            self._bucket(self._clock())
            return self._p()

    def allow(self) -> bool:
        """False means refuse this call locally (it then counts as a request at once)."""
        with self._lock:
            bucket = self._bucket(self._clock())
            p = self._p()
            if p > 0 and self._rand() < p:
                bucket[1] += 1
                self._requests += 1
                self.refused_locally += 1
                return False
            return True

    def record(self, code: grpc.StatusCode | None) -> None:
        """The outcome of a call that was sent: anything but a sign of overload is an accept.
        A sent call counts as a request only now, with its outcome: counted when sent, calls
        still in flight would look refused (50 concurrent first calls would give p = 0.98)."""
        with self._lock:
            bucket = self._bucket(self._clock())
            bucket[1] += 1
            self._requests += 1
            if code not in OVERLOAD:
                bucket[2] += 1
                self._accepts += 1

    def message(self) -> str:
        return (
            f"refused by the client's adaptive throttle: the gateway has been overloaded "
            f"(calls refused or past their deadline); this call was not sent "
            f"(p={self.probability():.2f}); "
            "retry with backoff"
        )


class _LocallyRefused(grpc.RpcError, grpc.Call, grpc.Future):
    """What a sync call refused by the throttle raises or returns: RESOURCE_EXHAUSTED."""

    def __init__(self, details: str):
        super().__init__()
        self._details = details

    def code(self):
        return REFUSED

    def details(self):
        return self._details

    def initial_metadata(self):
        return ()

    def trailing_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False

    def cancelled(self):
        return False

    def running(self):
        return False

    def done(self):
        return True

    def result(self, timeout=None):
        raise self

    def exception(self, timeout=None):
        return self

    def traceback(self, timeout=None):
        return None

    def add_done_callback(self, fn):
        fn(self)

    def __iter__(self):  # a refused server-streaming call raises on its first item
        raise self

    def __next__(self):
        raise self

    def __str__(self):
        return f"RESOURCE_EXHAUSTED: {self._details}"


class ThrottlingInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """For ``grpc.intercept_channel(channel, ThrottlingInterceptor(throttle))``."""

    def __init__(self, throttle: AdaptiveThrottle):
        self.throttle = throttle

    def intercept_unary_unary(self, continuation, client_call_details, request):
        if not self.throttle.allow():
            return _LocallyRefused(self.throttle.message())
        outcome = continuation(client_call_details, request)
        outcome.add_done_callback(lambda call: self.throttle.record(call.code()))
        return outcome

    def intercept_unary_stream(self, continuation, client_call_details, request):
        if not self.throttle.allow():
            return _LocallyRefused(self.throttle.message())
        call = continuation(client_call_details, request)
        call.add_callback(lambda: self.throttle.record(call.code()))
        return call


class AioThrottlingInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor
):
    """For ``grpc.aio.insecure_channel(target, interceptors=[AioThrottlingInterceptor(t)])``."""

    def __init__(self, throttle: AdaptiveThrottle):
        self.throttle = throttle
        self._recording: set[asyncio.Future] = set()

    def _refuse(self):
        raise grpc.aio.AioRpcError(
            REFUSED, grpc.aio.Metadata(), grpc.aio.Metadata(), self.throttle.message()
        )

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        if not self.throttle.allow():
            self._refuse()
        call = await continuation(client_call_details, request)
        call.add_done_callback(self._done)
        return call

    # grpc.aio hands both kinds of call the same way: a call object with done callbacks.
    intercept_unary_stream = intercept_unary_unary

    def _done(self, call) -> None:
        if call.cancelled():  # the caller gave up: not a refusal by the gateway
            self.throttle.record(None)
        else:  # aio gives a finished call's status only through a coroutine
            task = asyncio.ensure_future(self._record(call))
            self._recording.add(task)  # held until done, so it is not collected mid-way
            task.add_done_callback(self._recording.discard)

    async def _record(self, call) -> None:
        self.throttle.record(await call.code())
