"""The end of `make demo`: serve the demo model the way production does (local Triton +
`vaegan serve` in front of it), then call it like any client and write what came back.

    python scripts/serve_demo.py --repository outputs/demo_repository --images outputs/demo_images --out outputs
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vaegan.export.local_triton import LocalTriton, free_port


def wait_serving(target: str, timeout: float = 60) -> None:
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if (
                stub.Check(
                    health_pb2.HealthCheckRequest(service="vaegan.v1.LatentService"), timeout=2
                ).status
                == health_pb2.HealthCheckResponse.SERVING
            ):
                return
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"gateway at {target} did not become SERVING within {timeout:.0f}s")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repository", required=True)
    p.add_argument("--images", required=True, help="folder of images to pick two keyframes from")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    out = Path(a.out)
    vaegan = [sys.executable, "-m", "vaegan.cli"]
    faces = sorted(Path(a.images).glob("faces/*.png")) or sorted(Path(a.images).rglob("*.png"))
    with LocalTriton(a.repository) as triton:
        print(f"Triton ready on {triton.grpc_url} (metrics {triton.metrics_url})")
        port, metrics_port = free_port(), free_port()
        gateway = subprocess.Popen(
            [
                *vaegan,
                "serve",
                "--triton-url",
                triton.grpc_url,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--metrics-port",
                str(metrics_port),
            ]
        )
        target = f"127.0.0.1:{port}"
        try:
            wait_serving(target)
            print(f"gateway SERVING on {target} (metrics http://127.0.0.1:{metrics_port}/metrics)")
            client = [*vaegan]
            subprocess.run([*client, "info", "--target", target], check=True)
            subprocess.run(
                [
                    *client,
                    "generate",
                    "--target",
                    target,
                    "--random",
                    "64",
                    "--seed",
                    "1",
                    "--out",
                    str(out / "demo_generated.png"),
                ],
                check=True,
            )
            subprocess.run(
                [
                    *client,
                    "interpolate",
                    "--target",
                    target,
                    str(faces[0]),
                    str(faces[len(faces) // 2]),
                    str(faces[-1]),
                    "--steps",
                    "8",
                    "--out",
                    str(out / "demo_interpolation.png"),
                ],
                check=True,
            )
        finally:
            gateway.send_signal(signal.SIGTERM)
            code = gateway.wait(30)
            print(f"gateway stopped (exit {code})")
    print(f"open {out / 'demo_generated.png'} and {out / 'demo_interpolation.png'}")
    sys.exit(code)


if __name__ == "__main__":
    main()
