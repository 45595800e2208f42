"""Soak: steady load on client -> `vaegan serve` -> local Triton for some minutes, sampling
the gateway's resident memory and open file descriptors; reports their slopes.

    python -m benchmarks.soak --repository outputs/demo_repository [--minutes 5] [--clients 8]

Loopback only, bounded in time. A leak shows as a positive slope that does not level off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import grpc
import numpy as np

from vaegan.export.local_triton import LocalTriton
from vaegan.host import open_fds, rss_mib
from vaegan.repository import latent_dim
from vaegan.service.process import gateway_process
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc


def sample(pid: int) -> tuple[float, int]:
    return rss_mib(pid), open_fds(pid)


async def load(
    target: str, latent: int, clients: int, seconds: float, pid: int, every: float
) -> dict:
    channel = grpc.aio.insecure_channel(target)
    stub = pb_grpc.LatentServiceStub(channel)
    gen = pb.GenerateRequest(
        embeddings=pb.EmbeddingList(items=[pb.Embedding(values=[0.2] * latent)])
    )
    interp = pb.InterpolateRequest(
        keyframes=[
            pb.Keyframe(embedding=pb.Embedding(values=[0.5] * latent)),
            pb.Keyframe(embedding=pb.Embedding(values=[-0.5] * latent)),
        ],
        steps=6,
    )
    end = time.monotonic() + seconds
    calls = {"ok": 0, "error": 0}

    async def worker(i: int):
        while time.monotonic() < end:
            try:
                await (
                    stub.Interpolate(interp, timeout=10)
                    if i % 4 == 0
                    else stub.Generate(gen, timeout=10)
                )
                calls["ok"] += 1
            except grpc.aio.AioRpcError:
                calls["error"] += 1

    samples: list[tuple[float, float, int]] = []

    async def sampler():
        start = time.monotonic()
        while time.monotonic() < end:
            rss, fds = sample(pid)
            samples.append((time.monotonic() - start, rss, fds))
            print(
                f"  t={samples[-1][0]:6.0f}s rss={rss:7.1f} MiB fds={fds} calls={calls['ok']}",
                flush=True,
            )
            await asyncio.sleep(every)

    await asyncio.gather(sampler(), *(worker(i) for i in range(clients)))
    await channel.close()
    t, rss, fds = (np.asarray(v, float) for v in zip(*samples, strict=True))
    half = len(t) // 2  # the second half: after warm-up allocations settle
    return {
        "calls": calls,
        "samples": [list(s) for s in samples],
        "rss_mib": {"first": rss[0], "last": rss[-1], "max": rss.max()},
        "rss_slope_mib_per_min": float(np.polyfit(t, rss, 1)[0] * 60),
        "rss_slope_second_half_mib_per_min": float(np.polyfit(t[half:], rss[half:], 1)[0] * 60),
        "fd_slope_per_min": float(np.polyfit(t, fds, 1)[0] * 60),
        "fds": {"first": int(fds[0]), "last": int(fds[-1]), "max": int(fds.max())},
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repository", required=True)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    latent = latent_dim(a.repository)
    with (
        LocalTriton(a.repository) as triton,
        gateway_process(triton.grpc_url, metrics=False) as gw,
    ):
        r = asyncio.run(load(gw.target, latent, a.clients, a.minutes * 60, gw.process.pid, a.every))
    print(
        f"{a.minutes:g} min, {a.clients} clients: {r['calls']['ok']} calls ok, {r['calls']['error']} errors"
    )
    print(
        f"RSS {r['rss_mib']['first']:.1f} -> {r['rss_mib']['last']:.1f} MiB; slope {r['rss_slope_mib_per_min']:+.2f} MiB/min "
        f"(second half {r['rss_slope_second_half_mib_per_min']:+.2f}); fds {r['fds']['first']} -> {r['fds']['last']}, "
        f"slope {r['fd_slope_per_min']:+.2f}/min"
    )
    if a.out:
        Path(a.out).write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
