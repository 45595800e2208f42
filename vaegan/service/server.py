"""``vaegan serve``: the asyncio gRPC server, health, and shutdown (its interceptors:
``vaegan.service.interceptors``)."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from vaegan import __version__
from vaegan.errors import VaeganError
from vaegan.service.backends import Backend, OnnxBackend, TritonBackend
from vaegan.service.core import LatentCore
from vaegan.service.interceptors import (
    SERVICE,
    AdmissionInterceptor,
    AuthInterceptor,
    Lifecycle,
    Outcomes,
    StatusInterceptor,
)
from vaegan.service.metrics import Metrics
from vaegan.service.servicer import LatentServicer
from vaegan.service.settings import MiB, Settings
from vaegan.v1 import vaegan_pb2_grpc

log = logging.getLogger("vaegan.service")


def make_backend(s: Settings, metrics: Metrics) -> Backend:
    names = {"encoder": s.encoder_model, "decoder": s.decoder_model}
    if s.triton_url:
        return TritonBackend(
            s.triton_url,
            names,
            s.model_version,
            metrics,
            s.triton_shm,
            s.triton_shm_min_items,
            s.triton_admin_key(),
        )
    if s.model_repository:
        return OnnxBackend(s.model_repository, names, s.model_version, metrics)
    raise VaeganError(
        "give --model-repository REPO (embedded ONNX Runtime) or --triton-url HOST:PORT"
    )


def metrics_endpoint(s: Settings, registry):
    """The /metrics HTTP server on --metrics-host (default: --host, in gRPC's form "[::]"
    or an address). "::" on a host without IPv6 falls back to every IPv4 interface, as
    gRPC itself does for "[::]"."""
    host = s.metrics_host or s.host
    addr = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return start_http_server(s.metrics_port, addr=addr, registry=registry)[0]
    except OSError:
        if addr != "::":
            raise
        return start_http_server(s.metrics_port, addr="0.0.0.0", registry=registry)[0]


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
    core: LatentCore
    servicer: LatentServicer
    metrics: Metrics
    watcher: asyncio.Task
    metrics_http: object | None
    lifecycle: Lifecycle
    health_server: grpc.aio.Server | None = None

    async def stop(self, grace: float | None = None, drain_delay: float = 0.0) -> None:
        """NOT_SERVING first, let endpoints update, refuse new calls with UNAVAILABLE, let
        in-flight calls finish within ``grace``, then stop the server and the backend."""
        self.metrics.draining.set(1)
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
        if self.health_server is not None:
            await self.health_server.stop(0)
        self.watcher.cancel()
        await self.core.close()
        if self.metrics_http is not None:
            self.metrics_http.shutdown()


def interceptors(
    s: Settings, metrics: Metrics, lifecycle: Lifecycle
) -> list[grpc.aio.ServerInterceptor]:
    """The chain every call of the service goes through, in order (vaegan.service.interceptors)."""
    outcomes = Outcomes(metrics)
    tokens = s.tokens()
    return [
        *([AuthInterceptor(tokens, outcomes)] if tokens else []),
        AdmissionInterceptor(
            lifecycle,
            s.max_inflight,
            outcomes,
            s.max_inflight_per_connection,
            s.request_memory_mb * MiB,
            s.stream_reserve_bytes,
        ),
        StatusInterceptor(outcomes, s.max_call_s, s.max_stream_message_bytes),
    ]


async def start(s: Settings) -> Running:
    s.check()
    metrics = Metrics("triton" if s.triton_url else "onnxruntime", __version__)
    backend = make_backend(s, metrics)
    try:
        await backend.start()
    except VaeganError as e:  # e.g. Triton absent: start anyway, report NOT_SERVING
        log.warning("backend not ready at start: %s", e)
    core = LatentCore(backend, s, metrics)
    options = [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        # identity only (bit 0) unless compressed requests are accepted (identity, deflate, gzip)
        ("grpc.compression_enabled_algorithms_bitset", 0b111 if s.compressed_requests else 0b1),
        ("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(s.grace_s * 1000)),
        ("grpc.max_concurrent_streams", s.max_streams_per_connection),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    lifecycle = Lifecycle()
    server = grpc.aio.server(interceptors=interceptors(s, metrics, lifecycle), options=options)
    servicer = LatentServicer(core)
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
    health_server = None
    if s.health_port:
        # Plaintext and health only: kubelet's gRPC probes cannot speak TLS.
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        if not health_server.add_insecure_port(f"{s.host}:{s.health_port}"):
            raise VaeganError(f"cannot listen on {s.host}:{s.health_port} (--health-port)")
        await health_server.start()
    metrics_http = metrics_endpoint(s, metrics.registry) if s.metrics_port else None
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await _set_health(backend, health_servicer, metrics)
    watcher = asyncio.create_task(_watch_health(backend, health_servicer, metrics, s.health_poll_s))
    return Running(
        server,
        port,
        health_servicer,
        core,
        servicer,
        metrics,
        watcher,
        metrics_http,
        lifecycle,
        health_server,
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


def uses_uvloop(kind: str) -> bool:
    """Whether ``--event-loop kind`` runs on uvloop (auto: when it is installed)."""
    if kind == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if kind == "uvloop":
            raise VaeganError(
                "--event-loop uvloop: uvloop is not installed (pip install uvloop)"
            ) from None
        return False
    return True


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    if uses_uvloop(kind):
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(s: Settings) -> None:
    """``serve(s)`` on the event loop ``s.event_loop`` names, until SIGTERM or SIGINT."""
    s.check()
    if uses_uvloop(s.event_loop):
        import uvloop

        uvloop.run(serve(s))
    else:
        asyncio.run(serve(s))


async def serve(s: Settings) -> None:
    running = await start(s)
    log.info(
        "vaegan gateway %s on port %d (%s, %s event loop); settings: %s",
        __version__,
        running.port,
        running.core.backend.kind,
        type(asyncio.get_running_loop()).__module__.split(".")[0],
        s.describe(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: NOT_SERVING, draining for up to %.0fs", s.grace_s)
    await running.stop(grace=s.grace_s, drain_delay=s.drain_delay_s)
