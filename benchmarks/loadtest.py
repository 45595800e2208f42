"""Load test of the whole path (client -> `vaegan serve` -> local Triton), loopback only,
bounded in time and count: measure capacity, then offer 0.7x and 3x of it open-loop.

    python -m benchmarks.loadtest --repository outputs/demo_repository [--seconds 10]
        [--deadline 1.0] [--client-throttle [--throttle-k 2]] [--items 1]
        [--connections 16] [--out FILE] [-- vaegan serve flags]

For each phase: offered and achieved rate, p50/p99 of the calls that succeeded as callers
saw them and inside the gateway, the status code mix, and the gateway's own counts
(grpc_server_handled_total) against the callers'. Two checks say whether a phase measured
the server at all: the generator's send lag (its own event loop saturated) and the server
side's CPU use (gateway and Triton, with Triton's backend processes, as a fraction of the
cores they run on). When the server's core is full, calls wait in HTTP/2 and in gRPC's
queue before any admission check can see them, so no in-process policy keeps their
latency: callers must shed the excess (--client-throttle) with deadlines set to their budget.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from vaegan.export.local_triton import LocalTriton
from vaegan.host import tree_cpu_seconds
from vaegan.repository import latent_dim
from vaegan.service.process import gateway_process
from vaegan.service.settings import add_arguments, from_args
from vaegan.throttle import AdaptiveThrottle, AioThrottlingInterceptor
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc

MAX_CALLS = 200_000  # hard bound on any phase


class ServerCpu:
    """CPU used by the server side (the gateway, Triton and Triton's backend stubs) between
    two readings, as a fraction of the cores it may run on."""

    def __init__(self, pids: list[int], cores: int):
        self.pids, self.cores = pids, cores

    def read(self) -> tuple[float, float]:
        return time.monotonic(), sum(tree_cpu_seconds(p) for p in self.pids)

    def utilisation(self, since: tuple[float, float]) -> float:
        now = self.read()
        return (now[1] - since[1]) / (now[0] - since[0]) / self.cores


def scrape(metrics_url: str) -> tuple[Counter, Counter]:
    """The gateway's Generate calls by status code, and the cumulative buckets (by upper
    bound) of its latency histogram, which holds only the calls it admitted."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: Counter = Counter()
    buckets: Counter = Counter()
    for fam in text_string_to_metric_families(urllib.request.urlopen(metrics_url).read().decode()):
        for s in fam.samples:
            if s.labels.get("grpc_method") != "Generate":
                continue
            if s.name == "grpc_server_handled_total":
                counts[s.labels["grpc_code"]] += int(s.value)
            elif s.name == "grpc_server_handling_seconds_bucket":
                buckets[float(s.labels["le"])] += s.value
    return counts, buckets


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """What Prometheus's histogram_quantile gives: linear within the bucket holding rank q."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank, lower, below = q * buckets[bounds[-1]], 0.0, 0.0
    for upper in bounds:
        if buckets[upper] >= rank:
            if upper == float("inf"):
                return lower  # past the last finite bound: that bound is all it can say
            return lower + (upper - lower) * (rank - below) / max(buckets[upper] - below, 1e-12)
        lower, below = upper, buckets[upper]
    return lower


async def closed_loop(stubs, req, clients: int, seconds: float) -> float:
    done, end = 0, time.monotonic() + seconds

    async def worker(i: int):
        nonlocal done
        stub = stubs[i % len(stubs)]
        while time.monotonic() < end:
            try:
                await stub.Generate(req, timeout=5)
                done += 1
            except grpc.aio.AioRpcError:
                # Back off: a caller retrying a refusal at once measures a refusal storm, not
                # the capacity (refusals cost the gateway about as much CPU as calls).
                await asyncio.sleep(0.01)

    start = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    return done / (time.monotonic() - start)


async def open_loop(stubs, req, rate: float, seconds: float, deadline: float) -> dict:
    """Send at a fixed rate regardless of answers (what callers under load do), spread over
    the connections as many callers would."""
    codes: Counter = Counter()
    examples: dict[str, str] = {}  # one message per status code, to tell causes apart
    latencies: list[float] = []

    async def one(stub):
        t = time.perf_counter()
        try:
            await stub.Generate(req, timeout=deadline)
            codes["OK"] += 1
            latencies.append(time.perf_counter() - t)
        except grpc.aio.AioRpcError as e:
            codes[e.code().name] += 1
            examples.setdefault(e.code().name, e.details() or "")

    tasks, lags, start = [], [], time.monotonic()
    n = max(1, min(int(rate * seconds), MAX_CALLS))
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        lags.append(time.monotonic() - (start + i / rate))
        tasks.append(asyncio.create_task(one(stubs[i % len(stubs)])))
    await asyncio.gather(*tasks)
    # How late the generator sent, against its schedule: when this grows, the generator's
    # own event loop is saturated and its latencies include its own delay, not only the server's.
    lag_p99 = float(np.percentile(lags, 99) * 1e3) if lags else None
    elapsed = time.monotonic() - start
    lat = np.asarray(latencies) * 1e3
    return {
        "offered_per_s": rate,
        "sent": n,
        "ok_per_s": codes["OK"] / elapsed,
        "codes": dict(codes),
        "examples": examples,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "send_lag_p99_ms": lag_p99,
    }


async def run(
    target: str,
    metrics_url: str,
    cpu: ServerCpu,
    latent: int,
    *,
    items: int,
    connections: int,
    seconds: float,
    deadline: float,
    throttle: bool,
    max_inflight: int,
    throttle_k: float = 2.0,
) -> dict:
    def callers(throttled: bool):
        # One channel per simulated caller: gRPC gives each its own connection only when its
        # subchannel is not shared with the others. A throttled caller refuses calls itself
        # while the gateway refuses them, as LatentClient does (vaegan.throttle).
        throttles = (
            [AdaptiveThrottle(k=throttle_k) for _ in range(connections)] if throttled else []
        )
        channels = [
            grpc.aio.insecure_channel(
                target,
                options=[("grpc.use_local_subchannel_pool", 1)],
                interceptors=[AioThrottlingInterceptor(throttles[i])] if throttled else None,
            )
            for i in range(connections)
        ]
        return channels, [pb_grpc.LatentServiceStub(c) for c in channels], throttles

    channels, stubs, _ = callers(False)
    rng = np.random.default_rng(0)
    req = pb.GenerateRequest(
        embeddings=pb.EmbeddingList(
            items=[pb.Embedding(values=rng.standard_normal(latent).tolist()) for _ in range(items)]
        ),
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_RAW),
    )
    for stub in stubs:
        await stub.Generate(req, timeout=10)
    # Capacity: as many callers as the gateway admits at once, each sending its next call when
    # the last is answered. More would only measure a storm of refusals.
    capacity = await closed_loop(stubs, req, max_inflight, min(seconds, 5))
    out = {"capacity_per_s": capacity, "items_per_call": items, "connections": connections}
    out["client_throttle"], out["phases"] = throttle, {}
    for c in channels:
        await c.close()
    for factor in (0.7, 3.0):
        channels, stubs, throttles = callers(throttle)
        for stub in stubs:  # connect before the clock starts
            await stub.Generate(req, timeout=10)
        (before, hist_before), cpu_before = scrape(metrics_url), cpu.read()
        phase = await open_loop(stubs, req, capacity * factor, seconds, deadline)
        phase["server_cpu"] = cpu.utilisation(cpu_before)
        phase["refused_locally"] = sum(t.refused_locally for t in throttles)
        await asyncio.sleep(0.5)
        after, hist_after = scrape(metrics_url)
        server = after - before
        phase["gateway_counts"] = dict(server)
        # Time inside the gateway of the calls past its concurrency cap (its own histogram;
        # refusals by the batching queue included): without the callers' wait for a stream,
        # the generator's lag, or the wait in gRPC's queue before the gateway picks a call up.
        admitted = {le: hist_after[le] - hist_before[le] for le in hist_after}
        for q in (50, 99):
            v = histogram_quantile(q / 100, admitted)
            phase[f"gateway_p{q}_ms"] = None if v is None else v * 1e3
        # The gateway's counts agree with the callers'. A call can end in the gateway (OK, or
        # refused) just after its caller's deadline: the caller counts DEADLINE_EXCEEDED, the
        # gateway its own outcome. So every OK and every refusal the gateway counted and the
        # callers did not see must be one of their deadlines (refusals the callers made
        # themselves, unsent, are theirs alone).
        codes = phase["codes"]
        late_ok = server.get("OK", 0) - codes.get("OK", 0)
        late_refused = (
            server.get("RESOURCE_EXHAUSTED", 0)
            + phase["refused_locally"]
            - codes.get("RESOURCE_EXHAUSTED", 0)
        )
        phase["late_ok"], phase["late_refused"] = late_ok, late_refused
        phase["counts_agree"] = (
            late_ok >= 0
            and late_refused >= 0
            and late_ok + late_refused <= codes.get("DEADLINE_EXCEEDED", 0)
        )
        out["phases"][f"{factor}x"] = phase
        for c in channels:
            await c.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repository", required=True)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    p.add_argument("--deadline", type=float, default=1.0, help="per-call deadline in seconds")
    p.add_argument(
        "--client-throttle",
        action="store_true",
        help="callers use adaptive throttling (vaegan.throttle), as LatentClient does",
    )
    p.add_argument(
        "--throttle-k",
        type=float,
        default=2.0,
        help="the throttle's k: callers send about k times what is accepted (SRE book: 2)",
    )
    p.add_argument("--items", type=int, default=1, help="embeddings per Generate call")
    p.add_argument(
        "--connections", type=int, default=16, help="client connections (simulated callers)"
    )
    p.add_argument(
        "--separate-cores",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin the server side and the load generator to separate halves of the CPUs",
    )
    p.add_argument("--out", default=None)
    p.add_argument("gateway_args", nargs="*", help="extra `vaegan serve` flags (after --)")
    a = p.parse_args()
    # The gateway's settings as `vaegan serve` will read them from the extra flags.
    flags = argparse.ArgumentParser()
    add_arguments(flags)
    max_inflight = from_args(flags.parse_args(a.gateway_args)).max_inflight
    latent = latent_dim(a.repository)
    cpus = sorted(os.sched_getaffinity(0))
    # The server side (Triton and the gateway) and the load generator get separate cores, so
    # an overloaded generator cannot steal the server's CPU. The generator pins itself before
    # it starts any thread: Linux sets the affinity of one thread, and threads started
    # earlier (gRPC's pollers, created by the first channel) would stay on the server's cores.
    separate = a.separate_cores and len(cpus) > 1
    server_cpus = set(cpus[: max(1, len(cpus) // 2)]) if separate else None
    if separate:
        os.sched_setaffinity(0, set(cpus[len(cpus) // 2 :]))
    with (
        LocalTriton(a.repository, cpus=server_cpus) as triton,
        gateway_process(triton.grpc_url, *a.gateway_args, cpus=server_cpus) as gw,
    ):
        if separate:
            print(
                f"server on cores {sorted(server_cpus)}, load generator on {sorted(os.sched_getaffinity(0))}"
            )
        cpu = ServerCpu([gw.process.pid, triton.process.pid], len(server_cpus or cpus))
        result = asyncio.run(
            run(
                gw.target,
                gw.metrics_url,
                cpu,
                latent,
                items=a.items,
                connections=a.connections,
                seconds=a.seconds,
                deadline=a.deadline,
                throttle=a.client_throttle,
                throttle_k=a.throttle_k,
                max_inflight=max_inflight,
            )
        )
    print(
        f"capacity ({max_inflight} clients on {a.connections} connections, closed loop, {a.items} "
        f"embedding(s) per call): {result['capacity_per_s']:.0f} calls/s"
    )
    if a.client_throttle:
        print(
            f"callers throttle adaptively (k = {a.throttle_k:g}): 'local' counts the calls they "
            "refused unsent"
        )
    print(f"every call's deadline: {a.deadline * 1e3:.0f} ms")
    print(
        f"{'load':<6} {'offered/s':>10} {'ok/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'gw p50':>8} "
        f"{'gw p99':>8} {'lag p99':>8} {'srv cpu':>8}  client codes | gateway counts | agree"
    )
    print(
        "(p50/p99: OK calls as callers saw them; gw: time inside the gateway of the calls past "
        "its cap, batching-queue refusals included)"
    )

    def ms(v):
        return "-" if v is None else f"{v:.1f}"

    for name, r in result["phases"].items():
        print(
            f"{name:<6} {r['offered_per_s']:>10.0f} {r['ok_per_s']:>8.0f} {ms(r['p50_ms']):>8} "
            f"{ms(r['p99_ms']):>8} {ms(r['gateway_p50_ms']):>8} {ms(r['gateway_p99_ms']):>8} "
            f"{r['send_lag_p99_ms']:>8.1f} {r['server_cpu']:>8.0%}  {r['codes']} | "
            f"{r['gateway_counts']} | {r['counts_agree']}"
            + (f" ({r['late_ok']} OK after the caller's deadline)" if r["late_ok"] else "")
            + (
                f" ({r['late_refused']} refused after the caller's deadline)"
                if r["late_refused"]
                else ""
            )
            + (f" | local {r['refused_locally']}" if a.client_throttle else "")
        )
        for code, message in r["examples"].items():
            print(f"         {code}: {message}")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
