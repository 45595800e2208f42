"""`vaegan serve --workers N`: real gateway processes on one port, one metrics endpoint,
SIGTERM draining every worker (embedded backend, loopback)."""

from __future__ import annotations

import glob
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from gateway_harness import wait_until
from prometheus_client.multiprocess import MultiProcessCollector

from vaegan.client import LatentClient
from vaegan.host import free_port
from vaegan.service.metrics import metric_value
from vaegan.service.process import wait_ready
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc

LATENT = 16
CONNECTIONS = 16  # all on one worker of two: a chance of 2 in 65,536


def _start(repo, tmp_path, port: int, **settings):
    metrics_port = free_port()
    env = dict(
        os.environ,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        VAEGAN_MODEL_REPOSITORY=str(repo),
        VAEGAN_HOST="127.0.0.1",
        VAEGAN_PORT=str(port),
        VAEGAN_METRICS_PORT=str(metrics_port),
        VAEGAN_WORKERS="2",
        **{f"VAEGAN_{k.upper()}": str(v) for k, v in settings.items()},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaegan.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", lines


def _pids(lines: list[str]) -> dict[int, int]:
    """worker index -> its latest pid, from the supervisor's log."""
    found = {}
    for line in list(lines):
        if m := re.search(r"worker (\d+): pid (\d+)", line):
            found[int(m.group(1))] = int(m.group(2))
    return found


def _per_worker(metrics_dir, pid: int, method: str) -> float:
    """One worker's own count of OK ``method`` calls, from its files alone."""
    files = glob.glob(os.path.join(metrics_dir, f"*_{pid}.db"))
    total = 0.0
    for family in MultiProcessCollector.merge(files, accumulate=True):
        for s in family.samples:
            if (
                s.name == "grpc_server_handled_total"
                and s.labels.get("grpc_method") == method
                and s.labels.get("grpc_code") == "OK"
            ):
                total += s.value
    return total


def _scrape(url: str, method: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return metric_value(text, "grpc_server_handled_total", grpc_method=method, grpc_code="OK")


def test_two_workers_answer_on_one_port_and_one_scrape_sums_both_even_after_one_dies(
    repo, tmp_path
):
    proc, target, url, lines = _start(repo, tmp_path, free_port())
    started = time.monotonic()
    try:
        wait_until(lambda: len(_pids(lines)) == 2)
        wait_ready(target)
        with LatentClient(target, connections=CONNECTIONS) as c:
            for _ in range(2 * CONNECTIONS):  # two calls on each connection
                assert c.generate(count=1)[0].shape == (1, 32, 32, 3)
        first = _pids(lines)
        counts = [_per_worker(tmp_path / "metrics", pid, "Generate") for pid in first.values()]
        assert all(n > 0 for n in counts) and sum(counts) == 2 * CONNECTIONS, counts
        assert _scrape(url, "Generate") == 2 * CONNECTIONS
        # A worker that dies is started again; what it counted still counts.
        time.sleep(max(0.0, started + 6 - time.monotonic()))  # past the start-up window
        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: _pids(lines).get(0) not in (None, first[0]))
        wait_ready(target)
        with LatentClient(target, connections=CONNECTIONS) as c:
            for _ in range(CONNECTIONS):
                c.generate(count=1)
        assert _scrape(url, "Generate") == 3 * CONNECTIONS
        assert any("exited with -9; starting it again" in line for line in lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_sigterm_drains_every_worker_and_their_calls_in_flight_finish(repo, tmp_path):
    proc, target, _, lines = _start(repo, tmp_path, free_port(), grace_s=10)
    wait_until(lambda: len(_pids(lines)) == 2)
    wait_ready(target)
    pids = list(_pids(lines).values())
    results: list = [None] * CONNECTIONS
    sent = threading.Barrier(CONNECTIONS + 1, timeout=30)

    def stream(k: int) -> None:  # one slow stream per connection, in flight at SIGTERM
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        answered = threading.Event()

        def messages():
            for i in range(6):
                if i == 1:  # its worker has answered once: the call is in flight there
                    answered.wait(30)
                    sent.wait()  # SIGTERM goes out once every stream is this far
                yield pb.GenerateRequest(
                    embeddings=pb.EmbeddingList(items=[pb.Embedding(values=[0.1 * i] * LATENT)])
                )
                time.sleep(0.2)

        try:
            answers = []
            for a in pb_grpc.LatentServiceStub(channel).GenerateStream(messages()):
                answers.append(a)
                answered.set()
            results[k] = sorted(a.index for a in answers if a.HasField("response"))
        except grpc.RpcError as e:
            results[k] = e.code()
        finally:
            channel.close()

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(CONNECTIONS)]
    for t in threads:
        t.start()
    sent.wait()  # every stream has had an answer from its worker
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert results == [list(range(6))] * CONNECTIONS  # every message of every stream answered
    assert proc.wait(30) == 0
    for pid in pids:  # both workers had streams in flight, and both have exited
        assert _per_worker(tmp_path / "metrics", pid, "GenerateStream") > 0
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert sum(1 for line in lines if "shutting down: NOT_SERVING" in line) == 2


def test_a_worker_that_cannot_start_stops_them_all_with_an_error(repo, tmp_path):
    taken = socket.socket()  # bound without SO_REUSEPORT: no worker can bind it
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        proc, *_, lines = _start(repo, tmp_path, taken.getsockname()[1])
        assert proc.wait(30) == 1
        time.sleep(0.2)
        assert any("while starting; stopping all" in line for line in lines), lines
    finally:
        taken.close()


def test_workers_need_a_fixed_port():
    from vaegan.errors import VaeganError
    from vaegan.service.settings import Settings

    with pytest.raises(VaeganError, match="--workers needs a fixed --port"):
        Settings(model_repository="x", port=0, workers=2).check()
    with pytest.raises(VaeganError, match="--workers must be at least 1"):
        Settings(model_repository="x", workers=0).check()
