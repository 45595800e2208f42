"""The end of `make demo`: serve the demo model the way production does (local Triton +
`vaegan serve` in front of it), then call it like any client and write what came back.

    python scripts/serve_demo.py --repository outputs/demo_repository --images outputs/demo_images --out outputs
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from vaegan.export.local_triton import LocalTriton
from vaegan.service.process import gateway_process


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repository", required=True)
    p.add_argument("--images", required=True, help="folder of images to pick the keyframes from")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    out = Path(a.out)
    vaegan = [sys.executable, "-m", "vaegan.cli"]
    faces = sorted(Path(a.images).glob("faces/*.png")) or sorted(Path(a.images).rglob("*.png"))
    with LocalTriton(a.repository) as triton:
        print(f"Triton ready on {triton.grpc_url} (metrics {triton.metrics_url})")
        # The gateway reads the version's directions and fitted prior from the repository
        # Triton serves (in a cluster: the same volume, mounted read-only).
        directions = ("--directions-repository", a.repository)
        with gateway_process(triton.grpc_url, *directions, quiet=False) as gw:
            print(f"gateway SERVING on {gw.target} (metrics {gw.metrics_url})")
            subprocess.run([*vaegan, "info", "--target", gw.target], check=True)
            # Draws from the prior fitted at export, each refined by re-encoding its image
            # twice (README: image quality), and for comparison raw draws from N(0, I).
            for prior, refine, name in (
                ("fitted", "2", "demo_generated.png"),
                ("standard", "0", "demo_generated_standard.png"),
            ):
                subprocess.run(
                    [
                        *vaegan,
                        "generate",
                        "--target",
                        gw.target,
                        "--random",
                        "64",
                        "--seed",
                        "1",
                        "--prior",
                        prior,
                        "--refine",
                        refine,
                        "--out",
                        str(out / name),
                    ],
                    check=True,
                )
            keyframes = [str(faces[0]), str(faces[len(faces) // 2]), str(faces[-1])]
            subprocess.run(
                [
                    *vaegan,
                    "interpolate",
                    "--target",
                    gw.target,
                    *keyframes,
                    "--steps",
                    "8",
                    "--out",
                    str(out / "demo_interpolation.png"),
                ],
                check=True,
            )
    print(f"gateway stopped (exit {gw.process.returncode})")
    print(
        f"open {out / 'demo_generated.png'} (fitted prior, refined 2 steps; N(0, I): "
        f"{out / 'demo_generated_standard.png'}) and {out / 'demo_interpolation.png'}"
    )
    print("FID of the demo model (about 15 minutes on 2 cores): make evaluate")
    sys.exit(gw.process.returncode)


if __name__ == "__main__":
    main()
