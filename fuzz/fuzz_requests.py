"""Fuzz request parsing and validation: arbitrary bytes become a Generate, Encode or
Interpolate request and go through the real servicer, with a stand-in backend that answers
with arrays of the right shape. The project's errors (which the gateway turns into status
codes) are fine; any other exception would reach a caller as INTERNAL and is a crash.

    python -m fuzz.fuzz_requests [CORPUS_DIR] -atheris_runs=N
"""

import asyncio
import contextlib
import sys

import atheris

with atheris.instrument_imports():
    import numpy as np
    from google.protobuf.message import DecodeError

    from vaegan.errors import VaeganError
    from vaegan.preprocess import CropPolicy
    from vaegan.repository import ModelMeta
    from vaegan.service.backends import Backend
    from vaegan.service.core import LatentCore
    from vaegan.service.metrics import Metrics
    from vaegan.service.servicer import LatentServicer
    from vaegan.service.settings import Settings
    from vaegan.v1 import vaegan_pb2 as pb

LATENT, SIZE = 8, 16


class StandInBackend(Backend):
    kind = "fuzz"

    async def ready(self):
        return True

    async def meta(self, role, version=""):
        if version not in ("", "1"):
            from vaegan.errors import NotFound

            raise NotFound(f"version {version} is not served")
        return ModelMeta(
            name=role,
            version="1",
            latent_dim=LATENT,
            image_size=SIZE,
            crop=CropPolicy("center", 0.75, SIZE),
        )

    async def _infer(self, role, version, array, timeout):
        n = len(array)
        if role == "decoder":
            assert array.shape == (n, LATENT) and array.dtype == np.float32
            return {"image": np.zeros((n, SIZE, SIZE, 3), np.uint8)}
        assert array.shape == (n, SIZE, SIZE, 3) and array.dtype == np.uint8
        return {
            "mu": np.zeros((n, LATENT), np.float32),
            "logvar": np.zeros((n, LATENT), np.float32),
        }


class Context:
    def time_remaining(self):
        return 5.0


settings = Settings(
    max_items=8, max_steps=16, max_frames=64, max_image_bytes=1 << 18, max_image_pixels=1_000_000
)
metrics = Metrics("fuzz", "0")
servicer = LatentServicer(
    LatentCore(StandInBackend({"encoder": "e", "decoder": "d"}, "", metrics), settings, metrics)
)
loop = asyncio.new_event_loop()
KINDS = [
    (pb.GenerateRequest, servicer.Generate),
    (pb.EncodeRequest, servicer.Encode),
    (pb.InterpolateRequest, servicer.Interpolate),
]


def test_one(data: bytes) -> None:
    if not data:
        return
    message_type, method = KINDS[data[0] % len(KINDS)]
    try:
        request = message_type.FromString(data[1:])
    except DecodeError:
        return  # grpc rejects undecodable messages before the servicer
    with contextlib.suppress(VaeganError):  # mapped to a status code by the gateway: fine
        loop.run_until_complete(method(request, Context()))


def main() -> None:
    # libFuzzer ends the process itself; its own status lines report runs and peak RSS.
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
