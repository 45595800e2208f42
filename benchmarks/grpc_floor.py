"""The floor under any Python gRPC gateway: CPU per call of a bare grpc.aio server whose
handler does nothing (answers OK) or refuses (aborts with RESOURCE_EXHAUSTED), with the
server pinned to one core and the client on the others.

    python -m benchmarks.grpc_floor [--seconds 5] [--repository REPO] [--loop uvloop] [--out FILE]

If refusing costs about what serving costs, a single gateway process cannot shed load
offered faster than 1 / (CPU per call) in-process, whatever its admission policy. With
``--repository``, the same is measured for `vaegan serve` refusing every call (``--max-inflight
1``, its one slot held by a stream nobody reads), to compare the gateway's refusal path with
the floor. Both run on the same event loop (``--loop``; by default uvloop where it is
installed, as `vaegan serve` does), since the loop alone moves CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc

from vaegan.host import free_port, pinned, tree_cpu_seconds

# A grpc.aio server whose one handler answers at once: argv = PORT, MODE, [LOOP]. MODE
# "refuse" answers RESOURCE_EXHAUSTED, "serve" an empty message, a number that many bytes;
# LOOP "uvloop" runs it on uvloop (anything else, or none: asyncio). gateway_bench uses it too.
SERVER = """
import asyncio, sys, grpc
mode = sys.argv[2]
answer = b"\\0" * (int(mode) if mode.isdigit() else 0)
async def handler(request, context):
    if mode == "refuse":
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "full")
    return answer
class Any(grpc.GenericRpcHandler):
    def service(self, details):
        return grpc.unary_unary_rpc_method_handler(handler)
async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Any(),))
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()
if sys.argv[3:] == ["uvloop"]:
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


async def drive(
    target: str, seconds: float, connections: int, concurrency: int, method: str, body: bytes
) -> int:
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    calls = [c.unary_unary(method) for c in channels]
    codes: collections.Counter[str] = collections.Counter()
    end = time.monotonic() + seconds

    async def worker(i: int):
        while time.monotonic() < end:
            try:
                await calls[i % connections](body, timeout=5)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as e:  # refusals count as answered calls
                codes[e.code().name] += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    for c in channels:
        await c.close()
    return codes


def measure(
    name: str,
    command: list[str],
    ready,
    method: str,
    body: bytes,
    seconds: float,
    cpus,
    expect: str,
) -> dict:
    """Server CPU per call of ``command``; every call must end with ``expect`` (a run that
    measured anything else, served calls for refusals, measured the wrong thing)."""
    server_cpu, client_cpus = cpus
    port = free_port()
    with pinned({server_cpu}):
        proc = subprocess.Popen(
            [c.replace("PORT", str(port)) for c in command],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    cleanup = None
    try:
        target = f"127.0.0.1:{port}"
        cleanup = ready(proc, target)
        os.sched_setaffinity(0, client_cpus)
        asyncio.run(drive(target, 0.5, 8, 64, method, body))  # connect and warm up
        cpu0, t0 = tree_cpu_seconds(proc.pid), time.monotonic()
        codes = asyncio.run(drive(target, seconds, 8, 128, method, body))
        elapsed, cpu = time.monotonic() - t0, tree_cpu_seconds(proc.pid) - cpu0
        if set(codes) != {expect}:
            raise SystemExit(f"{name}: expected only {expect}, got {dict(codes)}")
        calls = codes[expect]
    finally:
        if cleanup is not None:
            cleanup()
        proc.terminate()
        proc.wait(30)
    return {
        "server": name,
        "calls_per_s": calls / elapsed,
        "server_cpu_ms_per_call": 1e3 * cpu / calls,
        "server_utilisation": cpu / elapsed,
    }


def _printed_ready(proc, target) -> None:
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"


def _gateway_full(latent: int):
    """Readiness of a gateway started with ``--max-inflight 1``, then its one slot taken by
    a long stream nobody reads: every other call is refused in the admission interceptor,
    before its request is parsed. Returns what ends the stream once measured."""

    def ready(proc, target):
        from vaegan.service.process import wait_ready
        from vaegan.v1 import vaegan_pb2 as pb
        from vaegan.v1 import vaegan_pb2_grpc as pb_grpc

        wait_ready(target)
        # No BDP probing: the flow-control window stays small, so the stream blocks after a
        # few frames instead of sending them all into the client's buffer and ending.
        options = [("grpc.enable_retries", 0), ("grpc.http2.bdp_probe", 0)]
        channel = grpc.insecure_channel(target, options=options)
        keys = [pb.Keyframe(embedding=pb.Embedding(values=[v] * latent)) for v in (0.0, 1.0)]
        hog = pb_grpc.LatentServiceStub(channel).InterpolateStream(
            pb.InterpolateRequest(keyframes=keys, steps=1022)
        )
        time.sleep(2.0)  # its frames fill the flow-control window; then it only waits

        def end() -> None:
            held = not hog.done()
            hog.cancel()
            channel.close()
            assert held, "the stream holding the gateway's slot ended before the measurement did"

        return end

    return ready


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repository", default=None, help="also measure `vaegan serve` refusing")
    p.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        help="the event loop of every server measured (default: uvloop when installed)",
    )
    p.add_argument("--out", default=None)
    a = p.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("needs two CPUs: one for the server, the rest for the client")
    pinned = (cpus[0], set(cpus[1:]))
    runs = [  # name, server command, how to know it is up, method, request body, its answer
        (
            f"bare grpc.aio, {mode}",
            [sys.executable, "-c", SERVER, "PORT", mode, a.loop],
            _printed_ready,
            "/floor/Call",
            b"",
            "OK" if mode == "serve" else "RESOURCE_EXHAUSTED",
        )
        for mode in ("serve", "refuse")
    ]
    if a.repository:
        from vaegan.repository import latent_dim
        from vaegan.v1 import vaegan_pb2 as pb

        serve = [sys.executable, "-m", "vaegan.cli", "serve", "--model-repository", a.repository]
        serve += ["--host", "127.0.0.1", "--port", "PORT", "--metrics-port", "0"]
        serve += ["--max-frames", "1024", "--max-steps", "1024", "--event-loop", a.loop]
        one = pb.Embedding(values=[0.1] * latent_dim(a.repository))
        body = pb.GenerateRequest(embeddings=pb.EmbeddingList(items=[one])).SerializeToString()
        runs.append(
            (
                "vaegan serve, refuse",
                [*serve, "--max-inflight", "1"],
                _gateway_full(latent_dim(a.repository)),
                "/vaegan.v1.LatentService/Generate",
                body,
                "RESOURCE_EXHAUSTED",
            )
        )
    print(f"every server on {a.loop}")
    results = []
    for name, command, ready, method, body, expect in runs:
        r = measure(name, command, ready, method, body, a.seconds, pinned, expect)
        results.append({**r, "loop": a.loop})
        print(
            f"{name:<22} on CPU {cpus[0]}: {r['calls_per_s']:6.0f} calls/s, "
            f"{r['server_cpu_ms_per_call']:.3f} ms of server CPU per call, "
            f"server at {r['server_utilisation']:.0%}",
            flush=True,
        )
    os.sched_setaffinity(0, set(cpus))
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
