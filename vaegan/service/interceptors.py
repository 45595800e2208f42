"""The gateway's server interceptors, one job each, in the order a call meets them:

1. ``AuthInterceptor``: bearer tokens, before the request is parsed, on the service and on
   reflection (which describes the service to whoever may call it); health stays open.
2. ``AdmissionInterceptor``: draining (UNAVAILABLE) and the concurrency cap
   (RESOURCE_EXHAUSTED), refused before parsing; admitted calls are counted in flight, and
   the bytes of their request messages are held against a budget (RESOURCE_EXHAUSTED past
   it, before the bytes are parsed).
3. ``StatusInterceptor``: a body that is not valid protobuf becomes INVALID_ARGUMENT, the
   project's errors their gRPC codes, anything else a generic INTERNAL (logged with its
   traceback, never sent), and the call's latency is recorded.

Every outcome is counted in one place, ``Outcomes``, under a method label taken only from
the service's own method names: a caller inventing method names cannot grow the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import logging
import time

import grpc

from vaegan.errors import DeadlineExceeded, InvalidInput, VaeganError
from vaegan.service.batching import caller
from vaegan.service.metrics import Metrics
from vaegan.v1 import vaegan_pb2

log = logging.getLogger("vaegan.service")
_DESCRIPTOR = vaegan_pb2.DESCRIPTOR.services_by_name["LatentService"]
SERVICE = _DESCRIPTOR.full_name
METHODS = frozenset(m.name for m in _DESCRIPTOR.methods)
PREFIX = f"/{SERVICE}/"
REFLECTION_PREFIX = "/grpc.reflection."


def method_label(full_method: str) -> str:
    """The method's name if the service has it, else ``unknown``."""
    name = full_method.rsplit("/", 1)[-1]
    return name if name in METHODS else "unknown"


class Outcomes:
    """grpc_server_handled_total and grpc_server_handling_seconds, with their label children
    bound once per (method, code). Every method's series start at zero with the gateway (as
    go-grpc-prometheus does): Prometheus takes a counter's first scraped value as its
    baseline, so calls made before a series first appears would count in no rate() or
    alert."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._handled: dict[tuple[str, str], object] = {
            (method, code.name): metrics.handled.labels(SERVICE, method, code.name)
            for method in METHODS
            for code in grpc.StatusCode
        }
        self._handling = {method: metrics.handling.labels(SERVICE, method) for method in METHODS}

    def count(self, method: str, code: str) -> None:
        child = self._handled.get((method, code))
        if child is None:
            child = self._handled[(method, code)] = self.metrics.handled.labels(
                SERVICE, method, code
            )
        child.inc()

    def observe(self, method: str, seconds: float) -> None:
        self._handling[method].observe(seconds)


def refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str, on_refuse):
    """A handler of ``handler``'s kind that answers ``code`` without parsing the request
    (raw bytes in) and without raising (setting the status is cheaper than an abort)."""

    def refuse(context) -> None:
        on_refuse()
        context.set_code(code)
        context.set_details(details)

    if handler is not None and (handler.unary_stream or handler.stream_stream) is not None:

        async def refuse_stream(request, context):
            refuse(context)
            return
            yield  # an async generator that sends nothing

        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(refuse_stream)
        return grpc.unary_stream_rpc_method_handler(refuse_stream)

    async def refuse_unary(request, context):
        refuse(context)
        return b""

    return grpc.unary_unary_rpc_method_handler(refuse_unary)


def _over_limit(limit: float) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"the call ran past the gateway's limit of {limit:g} s (--max-call-s); "
        "split the work into smaller calls"
    )


def _needs_limit(context, limit: float) -> bool:
    """Whether the server must bound this call itself: not when its deadline comes first
    (gRPC ends the call then), which saves a timer on every call that sets one."""
    if not limit:
        return False
    left = context.time_remaining()
    return left is None or left > limit


async def _timed(items, limit: float):
    """The messages of a response stream, ended once producing the next would pass ``limit``
    seconds from now. Only our own work is timed out, never gRPC's write of a message:
    cancelling that would leave the call hanging."""
    end = asyncio.get_running_loop().time() + limit
    try:
        while True:
            try:
                async with asyncio.timeout_at(end):
                    item = await items.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise _over_limit(limit) from None
            yield item
    finally:
        await items.aclose()


def _wrap(handler: grpc.RpcMethodHandler, around, parse=None, limit: float = 0.0):
    """``handler`` with its behaviour run inside ``around(request, context)``, an async
    context manager (``request`` is None for a streaming request: ``parse`` then applies to
    each of its messages). With ``limit``, the server's own bound on the call's work,
    deadline or not: a unary call is cut off at it, and a response stream ends once
    producing its next message would pass it."""
    deserializer = parse or handler.request_deserializer
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(request, context):
            async with around(request, context):
                if not _needs_limit(context, limit):
                    return await inner(request, context)
                try:
                    async with asyncio.timeout(limit):
                        return await inner(request, context)
                except TimeoutError:
                    raise _over_limit(limit) from None

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )

    def streaming(inner, unary_request: bool):
        async def respond(request, context):
            async with around(request if unary_request else None, context):
                items = inner(request, context)
                if _needs_limit(context, limit):
                    items = _timed(items, limit)
                try:
                    async for item in items:
                        yield item
                finally:  # also when gRPC drops this stream unfinished: stop its work now
                    await items.aclose()

        return respond

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            streaming(handler.unary_stream, True),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            streaming(handler.stream_stream, False),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Bearer tokens from the ``authorization`` metadata, checked before the request is
    parsed: a caller without a valid token costs no decoding. Comparison is constant-time."""

    DETAILS = "missing or invalid bearer token (metadata 'authorization: Bearer <token>')"

    def __init__(self, tokens: frozenset[str], outcomes: Outcomes):
        self.tokens = tuple(t.encode() for t in tokens)
        self.outcomes = outcomes

    def _valid(self, metadata) -> bool:
        for key, value in metadata or ():
            # The scheme is case-insensitive (RFC 7235): "bearer" and "BEARER" are "Bearer".
            if key == "authorization" and isinstance(value, str) and value[:7].lower() == "bearer ":
                given = value[7:].strip().encode()
                return any(hmac.compare_digest(given, t) for t in self.tokens)
        return False

    async def intercept_service(self, continuation, details):
        guarded = details.method.startswith((PREFIX, REFLECTION_PREFIX))
        if not guarded or self._valid(details.invocation_metadata):
            return await continuation(details)
        method = method_label(details.method)
        # The handler's kind is not looked up for an unauthenticated caller: a unary refusal
        # answers a streaming method just as well (status, no messages).
        return refusal(
            None,
            grpc.StatusCode.UNAUTHENTICATED,
            self.DETAILS,
            lambda: self.outcomes.count(method, "UNAUTHENTICATED"),
        )


class Lifecycle:
    """In-flight RPCs and the draining switch. Once draining, new calls are refused with a
    retryable UNAVAILABLE by the gateway itself; gRPC's own server shutdown would cancel
    calls that arrive while it runs."""

    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()


# The bytes of the request message this call holds against the budget. grpc.aio parses a
# request and then runs its handler in the same task, so what the parser sets here the
# handler's admission reads, and gives back when the call ends.
_held_bytes: contextvars.ContextVar[int] = contextvars.ContextVar("held_bytes", default=0)
_OVER_BUDGET = object()  # what a request parses to when its bytes do not fit the budget


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """Refuses new calls while draining or at the concurrency cap, before the request is
    parsed, with a handler built once: an overloaded gateway mostly refuses, and a refusal
    then costs what grpc.aio itself costs, whatever the request's size. With
    ``request_bytes``, the request messages of all admitted calls may hold at most that many
    bytes together: a call count alone does not bound memory when each request may be
    large."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        max_inflight: int,
        outcomes: Outcomes,
        per_connection: int = 0,
        request_bytes: int = 0,
        stream_reserve: int = 0,
    ):
        self.lifecycle, self.max_inflight, self.outcomes = lifecycle, max_inflight, outcomes
        self.request_bytes, self.held_bytes = request_bytes, 0
        # A request stream holds this many bytes of the budget while it is open: what its
        # messages in progress may take at most (--max-stream-pending x their size limit).
        self.stream_reserve = stream_reserve
        # One connection may hold at most this many of the slots, so no single caller can
        # take them all (0: half of them; behind a proxy that funnels every caller through
        # one connection, set it to max_inflight).
        self.per_connection = per_connection or max(1, max_inflight // 2)
        self._by_peer: dict[str, int] = {}
        self._admitted: dict[str, grpc.RpcMethodHandler] = {}
        self._refusals: dict[tuple[str, str], grpc.RpcMethodHandler] = {}

    def details(self, code: str) -> str:
        if code == "UNAVAILABLE":
            return "the gateway is shutting down; retry (another replica)"
        return f"the gateway is handling {self.max_inflight} calls, its limit; retry with backoff"

    def _verdict(self) -> str | None:
        if self.lifecycle.draining:
            return "UNAVAILABLE"
        if self.lifecycle.inflight >= self.max_inflight:
            return "RESOURCE_EXHAUSTED"
        return None

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(PREFIX):
            return handler
        method = method_label(details.method)
        code = self._verdict()
        if code is not None:
            key = (method, code)
            if key not in self._refusals:
                self._refusals[key] = refusal(
                    handler,
                    getattr(grpc.StatusCode, code),
                    self.details(code),
                    lambda: self.outcomes.count(method, code),
                )
            return self._refusals[key]
        admitted = self._admitted.get(details.method)
        if admitted is None:
            if handler.stream_stream is not None:  # its messages are held by its reservation
                admitted = _wrap(handler, self._admit(method, self.stream_reserve))
            else:
                parse = self._budgeted(handler.request_deserializer)
                admitted = _wrap(handler, self._admit(method), parse=parse)
            self._admitted[details.method] = admitted
        return admitted

    def _budgeted(self, deserializer):
        """``deserializer`` that first takes the request's bytes from the budget, or parses
        nothing when they do not fit (the handler then refuses)."""
        if not self.request_bytes or deserializer is None:
            return deserializer

        def parse(data: bytes):
            n = len(data)
            if self.held_bytes + n > self.request_bytes:
                _held_bytes.set(-n)  # refused: nothing held, the size kept for the message
                return _OVER_BUDGET
            self.held_bytes += n
            _held_bytes.set(n)
            try:
                return deserializer(data)
            except BaseException:
                self.held_bytes -= n
                _held_bytes.set(0)
                raise

        return parse

    def _over_budget(self, n: int) -> str:
        return (
            f"this request's {n} bytes do not fit: the gateway already holds {self.held_bytes} "
            f"bytes of requests in flight, its limit is {self.request_bytes} "
            "(--request-memory-mb); retry with backoff"
        )

    def _admit(self, method: str, reserve: int = 0):
        @contextlib.asynccontextmanager
        async def admitted(request, context):
            n = _held_bytes.get() if request is not None else 0
            try:
                if reserve and self.request_bytes:
                    if self.held_bytes + reserve > self.request_bytes:
                        request, n = _OVER_BUDGET, -reserve
                    else:
                        self.held_bytes += reserve
                        n = reserve
                if request is _OVER_BUDGET:
                    self.outcomes.count(method, "RESOURCE_EXHAUSTED")
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._over_budget(-n))
                # Checked again: calls that passed intercept_service together can overshoot.
                code = self._verdict()
                if code is not None:
                    self.outcomes.count(method, code)
                    await context.abort(getattr(grpc.StatusCode, code), self.details(code))
                peer = context.peer() or ""
                held = self._by_peer.get(peer, 0)
                if held >= self.per_connection:
                    self.outcomes.count(method, "RESOURCE_EXHAUSTED")
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"this connection already has {held} calls in flight, its share of the "
                        f"gateway's {self.max_inflight}; wait for them or retry with backoff",
                    )
                self._by_peer[peer] = held + 1
                caller.set(peer)  # shared work (image decoding) is granted in turn by peer
                self.lifecycle.enter()
                self.outcomes.metrics.inflight.inc()
                try:
                    yield
                finally:
                    self.lifecycle.leave()
                    self.outcomes.metrics.inflight.dec()
                    left = self._by_peer[peer] - 1
                    if left:
                        self._by_peer[peer] = left
                    else:
                        del self._by_peer[peer]
            finally:
                if n > 0:
                    self.held_bytes -= n

        return admitted


class _Malformed:
    """What a request that is not valid protobuf parses to, so the handler can answer
    INVALID_ARGUMENT (grpc.aio itself would answer UNKNOWN, naming a Python exception)."""

    def __init__(self, message: str):
        self.message = message

    def __str__(self) -> str:
        return self.message


def _tolerant(deserializer, max_bytes: int = 0):
    """``deserializer`` that turns a body it cannot parse, or one over ``max_bytes`` (left
    unparsed), into a ``_Malformed`` the handler answers INVALID_ARGUMENT."""
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

    def parse(data: bytes):
        if max_bytes and len(data) > max_bytes:
            return _Malformed(
                f"this message is {len(data)} bytes; a stream's messages may have at most "
                f"{max_bytes} (--max-stream-message-bytes)"
            )
        try:
            return deserializer(data)
        except Exception as e:  # protobuf's DecodeError, or anything a parser raises
            return _Malformed(f"the request body is not a valid {name} message ({e})")

    return parse


def _expired(context, slack: float = 0.0) -> bool:
    """Whether the call's deadline has passed, or is within ``slack`` seconds (a call
    without one never expires)."""
    left = context.time_remaining()
    return left is not None and left <= slack


# A caller whose deadline passes cancels the call itself (RST_STREAM), and the server's copy
# of that deadline runs from when the headers arrived, a little after the caller's: the cancel
# can land just before it. A cancel this close to the deadline is the deadline.
DEADLINE_SLACK_S = 0.1


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Maps what a handler raises to a gRPC status, and records the call's outcome."""

    def __init__(self, outcomes: Outcomes, max_call_s: float = 0.0, stream_message_bytes: int = 0):
        self.outcomes, self.max_call_s = outcomes, max_call_s
        self.stream_message_bytes = stream_message_bytes
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(PREFIX):
            return handler
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            method = method_label(details.method)
            # A streaming request's messages each get their own answer, so a malformed or
            # oversized one is handed to the handler as such instead of ending the stream.
            cap = self.stream_message_bytes if handler.stream_stream is not None else 0
            wrapped = self._wrapped[details.method] = _wrap(
                handler,
                self._status(method),
                parse=_tolerant(handler.request_deserializer, cap),
                limit=self.max_call_s,
            )
        return wrapped

    def _status(self, method: str):
        outcomes = self.outcomes

        @contextlib.asynccontextmanager
        async def status(request, context):
            code = "OK"
            start = time.perf_counter()
            try:
                if type(request) is _Malformed:
                    raise InvalidInput(request.message)
                yield
            except VaeganError as e:
                code = e.grpc_code
                if context.done() or _expired(context):
                    # The deadline passed: gRPC has ended the call itself, and a status sent
                    # now fails inside grpc.aio, which logs it as an error with a traceback.
                    code = "DEADLINE_EXCEEDED"
                    raise asyncio.CancelledError from None
                await context.abort(getattr(grpc.StatusCode, code), str(e))
            except (asyncio.CancelledError, GeneratorExit):
                # grpc.aio cancels the handler when the caller goes away and when its
                # deadline passes: dashboards must tell the two apart. A response stream
                # whose write failed (its connection closed under it) is dropped unfinished
                # instead, and closed as a generator.
                code = "DEADLINE_EXCEEDED" if _expired(context, DEADLINE_SLACK_S) else "CANCELLED"
                raise
            except grpc.aio.AbortError:
                code = context.code().name if context.code() else "UNKNOWN"
                raise
            except Exception:
                code = "INTERNAL"
                log.exception("unexpected error in %s", method)
                await context.abort(
                    grpc.StatusCode.INTERNAL, "internal error; the gateway's log has the details"
                )
            finally:
                outcomes.count(method, code)
                outcomes.observe(method, time.perf_counter() - start)

        return status
