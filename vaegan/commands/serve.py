"""Server commands: ``serve`` (the gRPC gateway), ``triton`` (the local Triton on a
repository) and ``playground`` (the web page in front of a gateway)."""

from __future__ import annotations

import argparse
import os

from vaegan.errors import VaeganError


def register(sub) -> None:
    from vaegan.commands.client import connection_flags
    from vaegan.service.settings import add_arguments

    sv = sub.add_parser(
        "serve",
        help="run the gRPC gateway",
        description="Serve vaegan.v1.LatentService over gRPC with health, reflection and Prometheus metrics. "
        "With --triton-url the models run on Triton; otherwise the model repository runs in-process "
        "with ONNX Runtime. Every flag can also be set as an environment variable VAEGAN_<FLAG>.",
    )
    add_arguments(sv)
    sv.set_defaults(func=serve)

    tr = sub.add_parser(
        "triton",
        help="run the local Triton server (from nvidia-pytriton) on a model repository",
        description="Start the real tritonserver from the nvidia-pytriton wheel with the python backend "
        "for this Python, wait until every model is ready, and run until Ctrl-C or SIGTERM.",
    )
    tr.add_argument("--repository", required=True, metavar="REPO", help="model repository folder")
    tr.add_argument(
        "--grpc-port", type=int, default=8001, help="KServe v2 gRPC port (default 8001)"
    )
    tr.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    tr.add_argument(
        "--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002)"
    )
    tr.add_argument("--log", default=None, help="server log file (default: a temporary file)")
    tr.set_defaults(func=triton)

    pg = sub.add_parser(
        "playground",
        help="a web page for exploring the served model: reconstructions, sliders, walks",
    )
    connection_flags(pg)  # how the playground reaches the gateway
    pg.add_argument("--host", default="127.0.0.1", help="address to serve the page on")
    pg.add_argument("--port", type=int, default=8080, help="port of the page (default 8080)")
    pg.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the page is served under (repeatable; IP addresses and localhost "
        "always are; '*' = any, which gives up the DNS-rebinding check)",
    )
    pg.add_argument(
        "--access-token",
        default=None,
        help="require this token on every API call (default: $VAEGAN_PLAYGROUND_TOKEN); "
        "open the page as http://HOST:PORT/#token=TOKEN",
    )
    pg.set_defaults(func=playground)


def serve(a: argparse.Namespace) -> int:
    import logging

    from vaegan.service.server import run
    from vaegan.service.settings import from_args

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from vaegan.host import return_large_allocations

    settings = from_args(a)
    # Decoded images are large and short-lived: give their memory back when freed, so the
    # decode memory budget bounds what the process holds.
    return_large_allocations()
    print(f"vaegan serve: {settings.describe()}", flush=True)
    if settings.workers > 1:
        from vaegan.service.workers import supervise

        settings.check()
        return supervise(settings)
    run(settings)
    return 0


def triton(a: argparse.Namespace) -> int:
    import signal
    import threading

    from vaegan.export.local_triton import LocalTriton

    server = LocalTriton(
        a.repository,
        grpc_port=a.grpc_port,
        http_port=a.http_port,
        metrics_port=a.metrics_port,
        log_path=a.log,
    )
    stop, ready = threading.Event(), threading.Event()

    def on_signal(*_) -> None:
        stop.set()
        if not ready.is_set():
            raise KeyboardInterrupt  # out of start(): it stops what it started, stubs too

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        server.start()
        ready.set()
    except KeyboardInterrupt:
        server.stop()  # nothing left to stop unless start() had returned
        print("stopped while Triton was loading the models", flush=True)
        return 0
    with server:
        print(
            f"Triton ready: gRPC {server.grpc_url}, HTTP 127.0.0.1:{server.http_port}, "
            f"metrics {server.metrics_url}; log {server.log_path}. Ctrl-C stops it.",
            flush=True,
        )
        while not stop.wait(1.0):
            if server.process is None or server.process.poll() is not None:
                raise VaeganError(f"tritonserver stopped: {server.errors()}")
    return 0


def playground(a: argparse.Namespace) -> int:
    import grpc

    from vaegan.commands.client import tls, token
    from vaegan.playground import run

    material = tls(a)
    credentials = (
        grpc.ssl_channel_credentials(
            material["tls_ca"], material["client_key"], material["client_cert"]
        )
        if material
        else None
    )
    run(
        a.target,
        a.host,
        a.port,
        token=token(a),
        timeout=a.timeout,
        allowed_hosts=frozenset(a.allowed_host),
        access_token=a.access_token or os.environ.get("VAEGAN_PLAYGROUND_TOKEN") or None,
        credentials=credentials,
    )
    return 0
