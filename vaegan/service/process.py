"""Run `vaegan serve` as a child process in front of a Triton and wait until it is ready:
what `make demo`, the benchmarks, the load test and the soak all need."""

from __future__ import annotations

import os
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


def spawn(
    settings: dict[str, str],
    *extra_args: str,
    by_env: bool = False,
    metrics: bool = True,
    output: str = "quiet",
    cpus: set[int] | None = None,
) -> GatewayProcess:
    """Start `vaegan serve` with ``settings`` (field -> value, as `vaegan serve` names them)
    on free loopback ports, given as flags or, with ``by_env``, as VAEGAN_* environment
    variables (the 12-factor path). ``output``: "quiet", "capture" (readable from
    ``process.stdout``) or "inherit". The caller stops it; ``gateway_process`` does.

    It runs in its own session, as LocalTriton does, so each is its own scheduling group
    (Linux autogroups), as separate containers would be. Left in the caller's session, a
    load generator busy on other cores shares its group: a gateway saturated by a refusal
    storm then took all of the core it shared with Triton, and Triton, runnable, got no CPU
    (/proc/<tid>/sched), until its python backend called its stub dead and Triton aborted."""
    port, metrics_port = free_port(), (free_port() if metrics else 0)
    given = {"host": "127.0.0.1", "port": str(port), "metrics_port": str(metrics_port), **settings}
    cmd = [sys.executable, "-m", "vaegan.cli", "serve"]
    env = None
    if by_env:
        env = dict(os.environ, **{f"VAEGAN_{k.upper()}": v for k, v in given.items()})
    else:
        cmd += [a for k, v in given.items() for a in ("--" + k.replace("_", "-"), v)]
    streams = {
        "quiet": dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        "capture": dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        "inherit": {},
    }[output]
    with pinned(cpus):
        proc = subprocess.Popen([*cmd, *extra_args], env=env, start_new_session=True, **streams)
    return GatewayProcess(
        proc, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics" if metrics else None
    )


@contextmanager
def gateway_process(
    triton_url: str,
    *extra_args: str,
    metrics: bool = True,
    quiet: bool = True,
    cpus: set[int] | None = None,
) -> Iterator[GatewayProcess]:
    """`vaegan serve --triton-url ...` (``spawn``), ready when yielded; SIGTERM and wait on
    exit."""
    gw = spawn(
        {"triton_url": triton_url},
        *extra_args,
        metrics=metrics,
        output="quiet" if quiet else "inherit",
        cpus=cpus,
    )
    proc, target = gw.process, gw.target
    try:
        wait_ready(target)
        yield gw
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
