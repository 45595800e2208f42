"""Run `vaegan serve` as a child process in front of a Triton and wait until it is ready:
what `make demo`, the benchmarks, the load test and the soak all need."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vaegan.errors import VaeganError
from vaegan.host import free_port, pinned

READY = health_pb2.HealthCheckRequest(service="vaegan.v1.LatentService")


def wait_ready(target: str, timeout: float = 60.0) -> None:
    """Until the gateway's readiness (the LatentService health status) is SERVING."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if stub.Check(READY, timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise VaeganError(f"gateway at {target} was not ready within {timeout:.0f}s")


@dataclass
class GatewayProcess:
    process: subprocess.Popen
    target: str
    metrics_url: str | None


@contextmanager
def gateway_process(
    triton_url: str,
    *extra_args: str,
    metrics: bool = True,
    quiet: bool = True,
    cpus: set[int] | None = None,
) -> Iterator[GatewayProcess]:
    """`vaegan serve --triton-url ...` on free loopback ports, on ``cpus`` if given; SIGTERM
    and wait on exit.

    It runs in its own session, as LocalTriton does, so each is its own scheduling group
    (Linux autogroups), as separate containers would be. Left in the caller's session, a
    load generator busy on other cores shares its group: a gateway saturated by a refusal
    storm then took all of the core it shared with Triton, and Triton, runnable, got 0 ms
    of CPU in 2 s here (/proc/<tid>/sched), until its python backend called its stub dead
    and Triton aborted."""
    port, metrics_port = free_port(), (free_port() if metrics else 0)
    out = subprocess.DEVNULL if quiet else None
    with pinned(cpus):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vaegan.cli",
                "serve",
                "--triton-url",
                triton_url,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--metrics-port",
                str(metrics_port),
                *extra_args,
            ],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    target = f"127.0.0.1:{port}"
    try:
        wait_ready(target)
        yield GatewayProcess(
            proc, target, f"http://127.0.0.1:{metrics_port}/metrics" if metrics else None
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
