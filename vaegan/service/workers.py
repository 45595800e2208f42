"""``vaegan serve --workers N``: N gateway processes on one port, one metrics endpoint.

One gateway process is bound by one core (its event loop and gRPC's machinery). Workers
are ordinary gateways started with the same settings: each binds ``--port`` itself (gRPC
sets SO_REUSEPORT) and the kernel hands each new connection to one of them, so a client
spreads its calls by opening several connections (``LatentClient(connections=k)``). Each
worker answers health checks for itself. The supervisor (this module) serves /metrics
from the files the workers write (prometheus_client's multiprocess mode), forwards SIGTERM
and SIGINT so every worker drains, and starts a worker again if one dies.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

from vaegan.service.settings import Settings

log = logging.getLogger("vaegan.service")

RESTART_DELAY_S = 1.0  # between a worker's death and its replacement
# A worker that exits this soon after it started did not start (a port taken without
# SO_REUSEPORT, a repository it cannot read): the others would fail alike, so all stop.
START_S = 5.0


def worker_environment(s: Settings, metrics_dir: str) -> dict[str, str]:
    """The environment a worker runs ``vaegan serve`` in: every setting as its VAEGAN_*
    variable (tokens stay out of the command line), one worker, no metrics endpoint of its
    own, and the directory its metrics go to."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAEGAN_")}
    for name, value in asdict(s).items():
        if value is not None:
            env["VAEGAN_" + name.upper()] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    env["VAEGAN_WORKERS"] = "1"
    env["VAEGAN_METRICS_PORT"] = "0"
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    return env


def supervise(s: Settings) -> int:
    """Run ``s.workers`` workers until SIGTERM or SIGINT, then until every one has drained.
    The exit status is 0 when every worker exited cleanly at the end."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    from vaegan.service.server import metrics_endpoint

    # $PROMETHEUS_MULTIPROC_DIR when set, else a temporary folder (the chart: its /tmp emptyDir).
    # Files left by an earlier run would be counted again: they go first.
    given_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics_dir = given_dir or tempfile.mkdtemp(prefix="vaegan-metrics-")
    os.makedirs(metrics_dir, exist_ok=True)
    for old in glob.glob(os.path.join(metrics_dir, "*.db")):
        os.remove(old)
    env = worker_environment(s, metrics_dir)
    command = [sys.executable, "-m", "vaegan.cli", "serve"]
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    http = metrics_endpoint(s, registry) if s.metrics_port else None
    workers: list[subprocess.Popen | None] = [None] * s.workers
    restart_at = [0.0] * s.workers
    started = [0.0] * s.workers
    stopping = False

    def on_signal(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for w in workers:
            if w is not None and w.poll() is None:
                w.send_signal(signal.SIGTERM)  # each drains on its own: NOT_SERVING, grace

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        while True:
            for i, w in enumerate(workers):
                if w is not None and w.poll() is not None:
                    mark_process_dead(w.pid, metrics_dir)  # its live gauges stop counting
                    if not stopping and time.monotonic() - started[i] < START_S:
                        log.error(
                            "worker %d (pid %d) exited with %s while starting; stopping all",
                            i,
                            w.pid,
                            w.returncode,
                        )
                        status = 1
                        on_signal(signal.SIGTERM, None)
                    elif not stopping:
                        log.error(
                            "worker %d (pid %d) exited with %s; starting it again",
                            i,
                            w.pid,
                            w.returncode,
                        )
                        restart_at[i] = time.monotonic() + RESTART_DELAY_S
                    elif w.returncode not in (0, -signal.SIGTERM):
                        status = 1  # (-SIGTERM: stopped while starting, before it served)
                    workers[i] = None
                    continue
                if w is None and not stopping and time.monotonic() >= restart_at[i]:
                    workers[i] = subprocess.Popen(command, env=env)
                    started[i] = time.monotonic()
                    log.info("worker %d: pid %d", i, workers[i].pid)
            if stopping and all(w is None for w in workers):
                break
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for w in workers:
            if w is not None and w.poll() is None:
                w.kill()
        if http is not None:
            http.shutdown()
        if not given_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("all %d workers stopped", s.workers)
    return 1 if status else 0
