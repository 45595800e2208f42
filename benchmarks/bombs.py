"""Decompression bombs against a victim: issue 17's criterion for image decoding.

A hostile caller sends small PNGs that are expensive to decode (RGBA, a palette with a
transparent colour, 16-bit greyscale), each as large as the gateway's decode budget admits,
many at once on its own connection. Meanwhile another caller, on its own connection, sends
one small Encode after another. Measured on a real `vaegan serve` process (default settings
unless given): the victim's latency alone and during the attack, and the gateway's peak RSS
growth against its decode budget.

    python -m benchmarks.bombs --repository outputs/demo_repository [--bombs 16] [--seconds 20]

Writes JSON (``--out``) and a last summary line. Latency is the victim's wall time per call,
so run it on a quiet machine and compare the two figures of one run.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from vaegan.client import LatentClient
from vaegan.host import peak_rss_mib
from vaegan.preprocess import decode_cost
from vaegan.service.process import spawn, wait_ready
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc


def bombs(budget_bytes: int) -> dict[str, bytes]:
    """One file of each shape, each just under ``budget_bytes`` to decode (all zeros: they
    compress to almost nothing)."""
    out = {}
    for name, mode, extra in (
        ("rgba", "RGBA", {}),
        ("palette", "P", {"transparency": 0}),
        ("16bit", "I;16", {}),
    ):
        probe = Image.new(mode, (1, 1))
        probe.info.update(extra)
        side = math.isqrt(int(0.95 * budget_bytes) // decode_cost(probe))
        buf = io.BytesIO()
        Image.new(mode, (side, side)).save(buf, format="PNG", **extra)
        out[name] = buf.getvalue()
    return out


def small_png() -> bytes:
    px = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return buf.getvalue()


def victim_latencies(target: str, seconds: float, stop: threading.Event | None = None) -> list:
    image, out = small_png(), []
    with LatentClient(target, timeout=60) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (stop and stop.is_set()):
            t = time.perf_counter()
            c.encode([image])
            out.append(time.perf_counter() - t)
    return out


def _summary(lat: list[float]) -> dict:
    ms = np.asarray(lat) * 1e3
    return {
        "calls": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repository", default="outputs/demo_repository")
    p.add_argument("--bombs", type=int, default=16, help="bomb requests in flight at once")
    p.add_argument("--seconds", type=float, default=20, help="the attack's length")
    p.add_argument("--decode-memory-mb", type=int, default=256)
    p.add_argument("--out", default="outputs/bench/bombs.json")
    a = p.parse_args()
    # The largest image a gateway decodes takes three quarters of its decode budget.
    files = bombs((a.decode_memory_mb << 20) * 3 // 4)
    gw = spawn({"model_repository": a.repository, "decode_memory_mb": str(a.decode_memory_mb)})
    try:
        wait_ready(gw.target)
        alone = victim_latencies(gw.target, 5)
        rss_before = peak_rss_mib(gw.process.pid)
        stop, sent, refused = threading.Event(), [0], {}
        end = time.monotonic() + a.seconds

        # The attacker's own connection (the victim's client has other channel options, so
        # gRPC does not share one connection between them).
        channel = grpc.insecure_channel(gw.target, options=[("grpc.enable_retries", 0)])
        stub = pb_grpc.LatentServiceStub(channel)

        def attack(i: int) -> None:
            request = pb.EncodeRequest(images=[list(files.values())[i % len(files)]])
            while time.monotonic() < end:
                try:
                    stub.Encode(request, timeout=120)
                except grpc.RpcError as e:
                    refused[e.code().name] = refused.get(e.code().name, 0) + 1
                sent[0] += 1

        with ThreadPoolExecutor(a.bombs) as pool:
            jobs = [pool.submit(attack, i) for i in range(a.bombs)]
            time.sleep(1.0)  # the bombs are queued before the victim starts
            during = victim_latencies(gw.target, a.seconds - 2, stop)
            for j in jobs:
                j.result()
        grown = peak_rss_mib(gw.process.pid) - rss_before
        channel.close()
    finally:
        gw.process.terminate()
        gw.process.wait(30)
    result = {
        "bombs": {k: len(v) for k, v in files.items()},
        "decode_memory_mb": a.decode_memory_mb,
        "bomb_requests": sent[0],
        "bomb_errors": refused,
        "victim_alone": _summary(alone),
        "victim_during": _summary(during),
        "peak_rss_growth_mib": grown,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    if refused:  # a refused bomb costs nothing: the run would not measure the attack
        raise SystemExit(f"bombs were refused ({refused}): the run measured nothing")
    va, vd = result["victim_alone"], result["victim_during"]
    print(
        f"victim Encode p50/p99 {va['p50_ms']:.1f}/{va['p99_ms']:.1f} ms alone, "
        f"{vd['p50_ms']:.1f}/{vd['p99_ms']:.1f} ms (max {vd['max_ms']:.0f}) during "
        f"{a.bombs} concurrent bomb calls ({sent[0]} sent); peak RSS +{grown:.0f} MiB "
        f"(decode budget {a.decode_memory_mb} MiB)"
    )


if __name__ == "__main__":
    main()
