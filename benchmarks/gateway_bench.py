"""Generate throughput and latency through the whole serving path, measured in one run.

    python -m benchmarks.gateway_bench --repository outputs/demo_repository [--duration 5] [--out FILE]

Rows (each client sends one embedding per call, RAW pixels back, for --duration seconds):
- gateway_batching_on / gateway_batching_off: client -> `vaegan serve` -> local Triton
- triton_direct: client -> local Triton (KServe v2 gRPC), no gateway
- ceiling: the decoder alone, in this process, ONNX Runtime at batch 64 (what this CPU can do)

The gateway and Triton run as separate processes; the load comes from this one (asyncio,
grpc.aio), so all three share this machine's cores, as they would on one node.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc.aio as triton_aio
from tqdm import tqdm

from vaegan.export.local_triton import LocalTriton
from vaegan.repository import latent_dim
from vaegan.service.process import gateway_process
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc


def summarize(latencies: list[float], codes: dict[str, int], seconds: float) -> dict:
    lat = np.asarray(latencies) * 1e3
    ok = codes.get("OK", 0)
    return {
        "calls": int(sum(codes.values())),
        "ok": ok,
        "throughput_per_s": ok / seconds,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "codes": codes,
    }


async def drive(call, clients: int, seconds: float) -> dict:
    """``clients`` concurrent loops of ``call()`` for ``seconds`` (bounded in time)."""
    latencies: list[float] = []
    codes: dict[str, int] = {}
    end = time.monotonic() + seconds

    async def worker():
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                await call()
                code = "OK"
                latencies.append(time.perf_counter() - t)
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            except Exception as e:  # tritonclient wraps errors in its own exception
                code = type(e).__name__
            codes[code] = codes.get(code, 0) + 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return summarize(latencies, codes, time.monotonic() - start)


async def bench_gateway(target: str, latent: int, clients: list[int], seconds: float) -> dict:
    channel = grpc.aio.insecure_channel(target)
    stub = pb_grpc.LatentServiceStub(channel)
    rng = np.random.default_rng(0)
    req = pb.GenerateRequest(
        embeddings=pb.EmbeddingList(
            items=[pb.Embedding(values=rng.standard_normal(latent).tolist())]
        ),
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_RAW),
    )
    await stub.Generate(req, timeout=30)  # warm-up
    out = {}
    for n in clients:
        out[n] = await drive(lambda: stub.Generate(req, timeout=30), n, seconds)
    await channel.close()
    return out


async def bench_triton(
    url: str, model: str, latent: int, clients: list[int], seconds: float
) -> dict:
    client = triton_aio.InferenceServerClient(url)
    z = np.random.default_rng(0).standard_normal((1, latent)).astype(np.float32)

    async def call():
        inp = triton_aio.InferInput("z", [1, latent], "FP32")
        inp.set_data_from_numpy(z)
        return await client.infer(model, [inp], client_timeout=30)

    await call()
    out = {n: await drive(call, n, seconds) for n in clients}
    await client.close()
    return out


def ceiling(repo: Path, model: str, latent: int, seconds: float) -> dict:
    version = max((p.name for p in (repo / model).iterdir() if p.name.isdigit()), key=int)
    session = ort.InferenceSession(
        str(repo / model / version / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    z = np.random.default_rng(0).standard_normal((64, latent)).astype(np.float32)
    session.run(None, {"z": z})
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"z": z})
        n += 64
    return {"batch": 64, "throughput_per_s": n / (time.perf_counter() - start)}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repository", required=True)
    p.add_argument("--model", default="vaegan_decoder")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    repo = Path(a.repository)
    latent = latent_dim(repo, a.model)
    results: dict = {}
    steps = tqdm(total=4, desc="gateway bench", unit="setup")
    results["ceiling"] = ceiling(repo, a.model, latent, a.duration)
    steps.update()
    with LocalTriton(repo) as triton:
        results["triton_direct"] = asyncio.run(
            bench_triton(triton.grpc_url, a.model, latent, a.clients, a.duration)
        )
        steps.update()
        for batching in (True, False):
            flags = ("--batching", str(batching).lower())
            with gateway_process(triton.grpc_url, *flags, metrics=False) as gw:
                key = "gateway_batching_on" if batching else "gateway_batching_off"
                results[key] = asyncio.run(bench_gateway(gw.target, latent, a.clients, a.duration))
            steps.update()
    steps.close()
    top, one = max(a.clients), min(a.clients)
    on, off, direct = (
        results["gateway_batching_on"],
        results["gateway_batching_off"],
        results["triton_direct"],
    )
    ratios = {
        f"batching_on_over_off_at_{top}": on[top]["throughput_per_s"]
        / off[top]["throughput_per_s"],
        f"gateway_over_ceiling_at_{top}": on[top]["throughput_per_s"]
        / results["ceiling"]["throughput_per_s"],
        f"gateway_p50_over_triton_p50_at_{one}": on[one]["p50_ms"] / direct[one]["p50_ms"],
    }
    print(f"\n{'setup':<22} {'clients':>7} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}  codes")
    for name in ("gateway_batching_on", "gateway_batching_off", "triton_direct"):
        for n, r in results[name].items():
            print(
                f"{name:<22} {n:>7} {r['throughput_per_s']:>9.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}  {r['codes']}"
            )
    print(f"{'ceiling (ORT, b=64)':<22} {'-':>7} {results['ceiling']['throughput_per_s']:>9.1f}")
    targets = {
        f"batching_on_over_off_at_{top}": (">=", 3.0),
        f"gateway_over_ceiling_at_{top}": (">=", 0.6),
        f"gateway_p50_over_triton_p50_at_{one}": ("<=", 1.25),
    }
    for k, v in ratios.items():
        op, target = targets[k]
        met = v >= target if op == ">=" else v <= target
        print(f"{k:<36} {v:6.2f}  (target {op} {target}: {'met' if met else 'MISSED'})")
    if a.out:
        Path(a.out).write_text(
            json.dumps(
                {
                    "benchmark": "gateway",
                    "duration_s": a.duration,
                    "clients": a.clients,
                    "ratios": ratios,
                    "machine": {
                        "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(),
                    },
                    "results": {
                        k: ({str(n): r for n, r in v.items()} if k != "ceiling" else v)
                        for k, v in results.items()
                    },
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
