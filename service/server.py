"""``vaegan serve``: the asyncio gRPC server, its interceptor, health and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from vaegan import __version__
from vaegan.errors import InvalidInput, VaeganError
from vaegan.service.backends import Backend, OnnxBackend, TritonBackend
from vaegan.service.gateway import Gateway
from vaegan.service.metrics import Metrics
from vaegan.service.servicer import LatentServicer
from vaegan.service.settings import Settings
from vaegan.v1 import vaegan_pb2, vaegan_pb2_grpc

log = logging.getLogger("vaegan.service")
SERVICE = vaegan_pb2.DESCRIPTOR.services_by_name["LatentService"].full_name


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


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps the project's errors to their gRPC codes, hides everything else behind a
    generic INTERNAL (logged with its traceback), records the RPC metrics, and refuses
    new calls while draining (UNAVAILABLE) or at the concurrency cap (RESOURCE_EXHAUSTED)."""

    def __init__(self, metrics: Metrics, lifecycle: Lifecycle, max_inflight: int):
        self.metrics, self.lifecycle, self.max_inflight = metrics, lifecycle, max_inflight
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}  # by method, built once
        self._refusals: dict[tuple[str, str], grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(f"/{SERVICE}/"):
            return handler
        # Refuse before the request is parsed when the answer is already known, with a handler
        # built once: an overloaded gateway mostly refuses, and a refusal then costs what
        # grpc.aio itself costs (benchmarks/grpc_floor.py), whatever the request's size.
        life = self.lifecycle
        if life.draining:
            return self._refusal(details.method, handler, "UNAVAILABLE")
        if life.inflight >= self.max_inflight:
            return self._refusal(details.method, handler, "RESOURCE_EXHAUSTED")
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            wrapped = self._wrapped[details.method] = self._wrap(details.method, handler)
        return wrapped

    def _wrap(self, full_method: str, handler):
        method = full_method.rsplit("/", 1)[-1]
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request, context):
                async with self._call(method, context):
                    _check_parsed(request)
                    return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=parse, response_serializer=handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                async with self._call(method, context):
                    _check_parsed(request)
                    async for item in inner_stream(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=parse, response_serializer=handler.response_serializer
            )
        return handler

    def _refusal(self, full_method: str, handler, code_name: str):
        """A handler that answers ``code_name`` without parsing the request (raw bytes in)
        and without raising (setting the status is cheaper than an abort)."""
        key = (full_method, code_name)
        if key in self._refusals:
            return self._refusals[key]
        method = full_method.rsplit("/", 1)[-1]
        counted = self.metrics.handled.labels(SERVICE, method, code_name)
        code = getattr(grpc.StatusCode, code_name)
        details = self._refusal_message(code_name)

        def refuse(context) -> None:
            counted.inc()
            context.set_code(code)
            context.set_details(details)

        if handler.unary_stream is not None:

            async def refuse_stream(request, context):
                refuse(context)
                return
                yield  # an async generator that sends nothing

            built = grpc.unary_stream_rpc_method_handler(refuse_stream)
        else:

            async def refuse_unary(request, context):
                refuse(context)
                return b""

            built = grpc.unary_unary_rpc_method_handler(refuse_unary)
        self._refusals[key] = built
        return built

    def _refusal_message(self, code_name: str) -> str:
        if code_name == "UNAVAILABLE":
            return "the gateway is shutting down; retry (another replica)"
        return f"the gateway is handling {self.max_inflight} calls, its limit; retry with backoff"

    @contextlib.asynccontextmanager
    async def _call(self, method: str, context):
        """Admission (draining, the concurrency cap), then the call, its status and metrics."""
        m, life, cap = self.metrics, self.lifecycle, self.max_inflight
        code = "OK"
        start = time.perf_counter()
        if life.draining:
            m.handled.labels(SERVICE, method, "UNAVAILABLE").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, self._refusal_message("UNAVAILABLE"))
        # Checked again here: calls that passed intercept_service together can overshoot.
        if life.inflight >= cap:  # the concurrency cap: refuse now rather than queue up latency
            m.handled.labels(SERVICE, method, "RESOURCE_EXHAUSTED").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, self._refusal_message("RESOURCE_EXHAUSTED")
            )
        m.inflight.inc()
        life.enter()
        try:
            yield
        except VaeganError as e:
            code = e.grpc_code
            await context.abort(getattr(grpc.StatusCode, code), str(e))
        except asyncio.CancelledError:
            code = "CANCELLED"
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
            life.leave()
            m.inflight.dec()
            m.handled.labels(SERVICE, method, code).inc()
            m.handling.labels(SERVICE, method).observe(time.perf_counter() - start)


class _Malformed:
    """What a request that is not valid protobuf parses to, so the handler can answer
    INVALID_ARGUMENT (grpc.aio itself would answer UNKNOWN, naming a Python exception)."""

    def __init__(self, message: str):
        self.message = message


def _tolerant(deserializer):
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as e:  # protobuf's DecodeError, or anything a parser raises
            return _Malformed(f"the request body is not a valid {name} message ({e})")

    return parse


def _check_parsed(request) -> None:
    if type(request) is _Malformed:
        raise InvalidInput(request.message)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Bearer tokens from the ``authorization`` metadata, checked before the request is even
    parsed: a caller without a valid token costs no decoding. Health (for probes) and
    reflection stay open. Token comparison is constant-time."""

    def __init__(self, tokens: frozenset[str], metrics: Metrics):
        self.tokens = tuple(t.encode() for t in tokens)
        self.metrics = metrics

    def _valid(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                given = value[len("Bearer ") :].encode()
                return any(hmac.compare_digest(given, t) for t in self.tokens)
        return False

    async def intercept_service(self, continuation, details):
        if not details.method.startswith(f"/{SERVICE}/") or self._valid(
            details.invocation_metadata
        ):
            return await continuation(details)
        method = details.method.rsplit("/", 1)[-1]
        self.metrics.handled.labels(SERVICE, method, "UNAUTHENTICATED").inc()

        async def deny(request, context):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid bearer token (metadata 'authorization: Bearer <token>')",
            )

        return grpc.unary_unary_rpc_method_handler(deny, request_deserializer=lambda _: None)


def make_backend(s: Settings, metrics: Metrics) -> Backend:
    names = {"encoder": s.encoder_model, "decoder": s.decoder_model}
    if s.triton_url:
        return TritonBackend(s.triton_url, names, s.model_version, metrics, s.max_message_bytes)
    if s.model_repository:
        return OnnxBackend(s.model_repository, names, s.model_version, metrics)
    raise VaeganError(
        "give --model-repository REPO (embedded ONNX Runtime) or --triton-url HOST:PORT"
    )


def _listen(server: grpc.aio.Server, s: Settings) -> int:
    address = f"{s.host}:{s.port}"
    if not (s.tls_cert or s.tls_key):
        if s.tls_client_ca:
            raise VaeganError("--tls-client-ca needs --tls-cert and --tls-key")
        return server.add_insecure_port(address)
    if not (s.tls_cert and s.tls_key):
        raise VaeganError("TLS needs both --tls-cert and --tls-key")

    def read(path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise VaeganError(f"cannot read {path}: {e.strerror}") from None

    creds = grpc.ssl_server_credentials(
        [(read(s.tls_key), read(s.tls_cert))],
        root_certificates=read(s.tls_client_ca) if s.tls_client_ca else None,
        require_client_auth=bool(s.tls_client_ca),
    )
    return server.add_secure_port(address, creds)


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    gateway: Gateway
    servicer: LatentServicer
    metrics: Metrics
    watcher: asyncio.Task
    metrics_http: object | None
    lifecycle: Lifecycle

    async def stop(self, grace: float | None = None, drain_delay: float = 0.0) -> None:
        """NOT_SERVING first, let endpoints update, refuse new calls with UNAVAILABLE, let
        in-flight calls finish within ``grace``, then stop the server and the backend."""
        await self.health.enter_graceful_shutdown()
        if drain_delay:
            await asyncio.sleep(drain_delay)
        self.lifecycle.draining = True
        try:
            await asyncio.wait_for(self.lifecycle.idle.wait(), grace)
        except TimeoutError:
            log.warning(
                "%d calls still running after the %.0fs grace period",
                self.lifecycle.inflight,
                grace or 0,
            )
        # Keep refusing with UNAVAILABLE a moment longer: calls still on the wire get a
        # retryable answer from us instead of a CANCELLED from gRPC's transport shutdown.
        await asyncio.sleep(min(0.3, grace or 0))
        await self.server.stop(0.5)
        self.watcher.cancel()
        await self.gateway.close()
        self.servicer.close()
        if self.metrics_http is not None:
            self.metrics_http.shutdown()


async def start(s: Settings) -> Running:
    metrics = Metrics("triton" if s.triton_url else "onnxruntime", __version__)
    backend = make_backend(s, metrics)
    try:
        await backend.start()
    except VaeganError as e:  # e.g. Triton absent: start anyway, report NOT_SERVING
        log.warning("backend not ready at start: %s", e)
    gateway = Gateway(backend, s, metrics)
    options = [
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(s.grace_s * 1000)),
        ("grpc.max_concurrent_streams", s.max_streams_per_connection),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    interceptors: list[grpc.aio.ServerInterceptor] = []
    tokens = s.tokens()
    if tokens:
        interceptors.append(AuthInterceptor(tokens, metrics))
    lifecycle = Lifecycle()
    interceptors.append(ErrorInterceptor(metrics, lifecycle, s.max_inflight))
    server = grpc.aio.server(interceptors=interceptors, options=options)
    servicer = LatentServicer(gateway)
    vaegan_pb2_grpc.add_LatentServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if s.reflection:
        reflection.enable_server_reflection(
            [SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
    port = _listen(server, s)
    if port == 0:
        raise VaeganError(f"cannot listen on {s.host}:{s.port}")
    metrics_http = (
        start_http_server(s.metrics_port, registry=metrics.registry)[0] if s.metrics_port else None
    )
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await _set_health(backend, health_servicer, metrics)
    watcher = asyncio.create_task(_watch_health(backend, health_servicer, metrics, s.health_poll_s))
    return Running(
        server, port, health_servicer, gateway, servicer, metrics, watcher, metrics_http, lifecycle
    )


async def _set_health(backend: Backend, h, metrics: Metrics) -> bool:
    """Readiness lives on the service name: SERVING only while the backend's models answer.
    The overall status ("") is liveness: SERVING while this process serves at all, so a
    Triton outage makes pods unready, never restarts them."""
    ok = await backend.ready()
    status = (
        health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    await h.set(SERVICE, status)
    metrics.backend_ready.set(1 if ok else 0)
    return ok


async def _watch_health(backend: Backend, h, metrics: Metrics, every: float) -> None:
    """SERVING only while the backend's models answer; follows Triton going and coming."""
    while True:
        await asyncio.sleep(every)
        try:
            await _set_health(backend, h, metrics)
        except Exception:  # never let the watcher die
            log.exception("health check failed")


async def serve(s: Settings) -> None:
    running = await start(s)
    log.info(
        "vaegan gateway %s on port %d (%s); settings: %s",
        __version__,
        running.port,
        running.gateway.backend.kind,
        s.describe(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: NOT_SERVING, draining for up to %.0fs", s.grace_s)
    await running.stop(grace=s.grace_s, drain_delay=s.drain_delay_s)
