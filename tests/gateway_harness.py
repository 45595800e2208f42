"""Runs a real gateway (grpc.aio server) on its own event loop in a thread, so tests can
call it through a real gRPC channel on loopback with the sync client."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import replace

from vaegan.host import free_port
from vaegan.service.server import Running, new_event_loop, start
from vaegan.service.settings import Settings


class GatewayThread:
    def __init__(self, settings: Settings):
        # Always free loopback ports: the defaults (50051, 9090) would collide between gateways.
        # VAEGAN_EVENT_LOOP runs the suite on another loop, as it does `vaegan serve`.
        self.settings = replace(
            settings,
            host="127.0.0.1",
            port=free_port(),
            metrics_port=free_port(),
            event_loop=os.environ.get("VAEGAN_EVENT_LOOP", settings.event_loop),
        )
        self.loop = new_event_loop(self.settings.event_loop)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.running: Running | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.settings.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.metrics_port}/metrics"

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> GatewayThread:
        self.thread.start()
        self.running = self.call(start(self.settings))
        return self

    def __exit__(self, *exc) -> None:
        if self.running is not None:
            self.call(self.running.stop(grace=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def wait_until(cond, timeout: float = 30.0, every: float = 0.1) -> None:
    """Poll ``cond`` until it is true; fail the test after ``timeout`` seconds."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"condition not reached within {timeout:.0f}s")


def serve_process(repo, *, metrics: bool = True, grace_s: float = 10.0, capture: bool = False):
    """A real `vaegan serve` child process on the embedded backend, configured only through
    VAEGAN_* environment variables (the 12-factor path), on free loopback ports.
    Returns (process, target, metrics URL or None); ``capture`` keeps its output readable."""
    from vaegan.service.process import spawn

    gw = spawn(
        {"model_repository": str(repo), "grace_s": str(grace_s)},
        by_env=True,
        metrics=metrics,
        output="capture" if capture else "quiet",
    )
    return gw.process, gw.target, gw.metrics_url
