"""A small Python client of the gateway (``vaegan.v1.LatentService``).

    with LatentClient("localhost:50051") as c:
        images, z = c.generate(seed=1, count=16)          # uint8 [16, 64, 64, 3], float32 [16, L]
        mu = c.encode([open("a.jpg", "rb").read()]).mu    # float32 [1, L]
        frames, path = c.interpolate([b_png, z[0]], steps=8)
        for a in c.generate_stream(z_batches):                # bulk: one stream, many requests
            ...                                               # a.index, a.images or a.error

Images come back as uint8 arrays (the gateway is asked for RAW pixels). Errors raise
``grpc.RpcError`` with the gateway's status code and message. While many of its calls end
in signs of overload (RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED), the client
refuses some itself without sending them (adaptive throttling, ``vaegan.throttle``); those
end with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import grpc
import numpy as np

from vaegan.throttle import AdaptiveThrottle, ThrottlingInterceptor
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class Encoded:
    mu: np.ndarray
    logvar: np.ndarray
    z: np.ndarray | None
    reconstruction_mse: np.ndarray | None
    encoder_version: str


@dataclass
class StreamAnswer:
    """One request's answer on a GenerateStream: its images and vectors, or its error."""

    index: int  # the request's position in the stream, from 0
    images: np.ndarray | None  # uint8 [k, H, W, 3]
    embeddings: np.ndarray | None  # float32 [k, L]
    error: tuple[str, str] | None = None  # (gRPC status code name, message)


_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def stream_error(answer: pb.GenerateStreamResponse) -> tuple[str, str]:
    """A GenerateStream answer's error as (gRPC status code name, message)."""
    return _CODE_NAMES.get(answer.error.code, str(answer.error.code)), answer.error.message


def pixels(images) -> np.ndarray:
    """RAW response images -> uint8 [N, H, W, 3]."""
    return np.stack(
        [np.frombuffer(im.data, np.uint8).reshape(im.height, im.width, 3) for im in images]
    )


def vectors(embeddings) -> np.ndarray:
    return np.asarray([list(e.values) for e in embeddings], np.float32)


def _embedding(v) -> pb.Embedding:
    return pb.Embedding(values=np.asarray(v, np.float32).ravel().tolist())


class LatentClient:
    def __init__(
        self,
        target: str,
        timeout: float | None = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        token: str | None = None,
        tls: bool = False,
        tls_ca: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        throttle: bool | AdaptiveThrottle = True,
        connections: int = 1,
    ):
        """``tls_ca`` (or ``tls=True`` for the system roots) switches to TLS; ``client_cert``
        and ``client_key`` add a client certificate (mutual TLS); ``token`` is sent as a
        bearer token in the ``authorization`` metadata of every call. ``throttle``: adaptive
        throttling on (True, the default), off (False), or shared (an AdaptiveThrottle).
        ``connections``: calls take turns over this many connections, so they spread over
        the processes of a gateway run with ``--workers`` (the kernel hands each connection
        to one of them)."""
        if connections < 1:
            raise ValueError(f"connections must be at least 1, got {connections}")
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if connections > 1:  # channels to one target otherwise share one connection
            options.append(("grpc.use_local_subchannel_pool", 1))
        creds = None
        if tls or tls_ca or client_cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls_ca, private_key=client_key, certificate_chain=client_cert
            )
        self.channels = [
            grpc.secure_channel(target, creds, options=options)
            if creds
            else grpc.insecure_channel(target, options=options)
            for _ in range(connections)
        ]
        self.channel = self.channels[0]
        self.throttle = AdaptiveThrottle() if throttle is True else (throttle or None)
        stubs = []
        for channel in self.channels:
            if self.throttle is not None:
                channel = grpc.intercept_channel(channel, ThrottlingInterceptor(self.throttle))
            stubs.append(pb_grpc.LatentServiceStub(channel))
        self._stubs = itertools.cycle(stubs)
        self.timeout = timeout
        self.metadata = [("authorization", f"Bearer {token}")] if token else None

    @property
    def stub(self) -> pb_grpc.LatentServiceStub:
        """The stub of the next call's connection (they take turns)."""
        return next(self._stubs)

    RAW = pb.OutputOptions(format=pb.IMAGE_FORMAT_RAW)

    def generate(
        self,
        embeddings=None,
        *,
        count: int = 0,
        seed: int = 0,
        temperature: float | None = None,
        prior: str = "standard",
        refine_steps: int = 0,
        model_version: str = "",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode ``embeddings``, or ``count`` draws from the ``prior`` ("standard" N(0, I) or
        "fitted", the version's fitted mixture), each re-encoded ``refine_steps`` times."""
        if embeddings is not None:
            req = pb.GenerateRequest(
                embeddings=pb.EmbeddingList(items=[_embedding(e) for e in embeddings])
            )
        else:
            which = {"standard": pb.PRIOR_STANDARD, "fitted": pb.PRIOR_FITTED}[prior]
            req = pb.GenerateRequest(
                sample=pb.Sample(
                    count=count,
                    seed=seed,
                    temperature=temperature,
                    prior=which,
                    refine_steps=refine_steps,
                )
            )
        req.output.CopyFrom(self.RAW)
        req.model_version = model_version
        r = self.stub.Generate(req, timeout=self.timeout, metadata=self.metadata)
        return pixels(r.images), vectors(r.embeddings)

    def generate_stream(self, requests, *, model_version: str = "", timeout: float | None = None):
        """Many Generate requests over one GenerateStream, for bulk work: ``requests`` is an
        iterable of embedding arrays, one [k, latent] array per request, sent as it is
        consumed. Yields a ``StreamAnswer`` per request as the gateway answers, possibly out
        of order; a request's failure is its answer's ``error`` and the stream goes on.
        ``timeout`` bounds the whole stream (default none: the gateway's --max-call-s)."""

        def messages():
            for z in requests:
                yield pb.GenerateRequest(
                    embeddings=pb.EmbeddingList(items=[_embedding(e) for e in z]),
                    output=self.RAW,
                    model_version=model_version,
                )

        for a in self.stub.GenerateStream(messages(), timeout=timeout, metadata=self.metadata):
            if a.HasField("error"):
                yield StreamAnswer(a.index, None, None, stream_error(a))
            else:
                r = a.response
                yield StreamAnswer(a.index, pixels(r.images), vectors(r.embeddings))

    def encode(
        self,
        images: list[bytes],
        *,
        sample: bool = False,
        seed: int = 0,
        reconstruction_error: bool = False,
        model_version: str = "",
    ) -> Encoded:
        r = self.stub.Encode(
            pb.EncodeRequest(
                images=images,
                sample=sample,
                seed=seed,
                reconstruction_error=reconstruction_error,
                model_version=model_version,
            ),
            timeout=self.timeout,
            metadata=self.metadata,
        )
        return Encoded(
            mu=vectors(e.mu for e in r.encodings),
            logvar=vectors(e.logvar for e in r.encodings),
            z=vectors(e.z for e in r.encodings) if sample else None,
            reconstruction_mse=np.asarray([e.reconstruction_mse for e in r.encodings])
            if reconstruction_error
            else None,
            encoder_version=r.encoder_version,
        )

    def interpolate(
        self, keyframes: list, steps: int, *, spherical: bool = True, model_version: str = ""
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keyframes are image bytes or vectors."""
        request = self._interpolation(keyframes, steps, spherical, model_version)
        r = self.stub.Interpolate(request, timeout=self.timeout, metadata=self.metadata)
        return pixels(r.images), vectors(r.embeddings)

    def interpolate_stream(
        self, keyframes: list, steps: int, *, spherical: bool = True, model_version: str = ""
    ):
        """Like ``interpolate``, but yields (index, total, pixels [H, W, 3], vector) per frame
        as the server decodes them."""
        request = self._interpolation(keyframes, steps, spherical, model_version)
        for f in self.stub.InterpolateStream(request, timeout=self.timeout, metadata=self.metadata):
            yield f.index, f.total, pixels([f.image])[0], np.asarray(f.embedding.values, np.float32)

    def _interpolation(
        self, keyframes: list, steps: int, spherical: bool, model_version: str
    ) -> pb.InterpolateRequest:
        keys = [
            pb.Keyframe(image=k)
            if isinstance(k, bytes | bytearray)
            else pb.Keyframe(embedding=_embedding(k))
            for k in keyframes
        ]
        method = pb.INTERPOLATION_METHOD_SPHERICAL if spherical else pb.INTERPOLATION_METHOD_LINEAR
        return pb.InterpolateRequest(
            keyframes=keys, steps=steps, method=method, output=self.RAW, model_version=model_version
        )

    def info(self) -> pb.ModelInfo:
        return self.stub.GetModelInfo(
            pb.GetModelInfoRequest(), timeout=self.timeout, metadata=self.metadata
        )

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def __enter__(self) -> LatentClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
