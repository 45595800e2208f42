"""Gateway settings: one typed object built in main() from flags and VAEGAN_* environment
variables (flags win). Printed at start-up."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from vaegan import interface as api
from vaegan.errors import VaeganError
from vaegan.flags import parse_bool
from vaegan.preprocess import DEFAULT_MAX_PIXELS

MiB = 1024 * 1024
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


@dataclass(frozen=True)
class Settings:
    model_repository: str | None = None  # embedded ONNX Runtime backend on this repository
    triton_url: str | None = None  # or a Triton server's gRPC address (host:port)
    host: str = "[::]"
    port: int = 50051
    metrics_port: int = 9090  # 0 = no metrics endpoint
    # A plaintext port serving only grpc.health.v1, for probes that cannot speak TLS
    # (Kubernetes' gRPC probes); 0 = none.
    health_port: int = 0
    # Address the metrics endpoint binds; unset = --host, so a gateway bound to loopback
    # does not expose its metrics on every interface.
    metrics_host: str | None = None
    encoder_model: str = api.ENCODER_MODEL
    decoder_model: str = api.DECODER_MODEL
    model_version: str = ""  # pin a version; "" = the newest the backend serves
    # Where latent directions are read (REPO/vaegan_decoder/<version>/directions.json):
    # default the embedded backend's --model-repository; with --triton-url, Triton's
    # repository mounted read-only.
    directions_repository: str | None = None
    batching: bool = True  # coalesce concurrent requests into one backend call
    max_batch_size: int = 64  # items per backend call
    max_wait_ms: float = 2.0  # how long a batch waits to fill
    # Items waiting per model; past it, RESOURCE_EXHAUSTED at once. The longest wait is about
    # max_queue / items per second, so size it from the latency you promise and the node's
    # throughput (the README's overload section has measured figures).
    max_queue: int = 256
    max_concurrent_batches: int = 2  # backend calls in flight per model
    # RPCs handled at once; past it, RESOURCE_EXHAUSTED at once. Little's law: accepted calls
    # keep their latency only if cap / throughput stays near the latency you promise.
    max_inflight: int = 64
    # Of those, what one client connection may hold (0 = half of max_inflight): a caller that
    # opens many calls and stops reading cannot take every slot. Behind a proxy that funnels
    # all callers through one connection, set it to max_inflight.
    max_inflight_per_connection: int = 0
    # The server's limit on any call's duration, with or without a client deadline.
    max_call_s: float = 300.0
    # HTTP/2 streams one client connection may have open. Past it the transport refuses the
    # stream (the caller sees UNAVAILABLE, which gRPC clients may retry transparently) before
    # any Python runs: a refusal in the handler costs a whole grpc.aio call's CPU, so a
    # single flooding connection could otherwise starve the calls already accepted.
    max_streams_per_connection: int = 32
    max_items: int = 64  # embeddings / images / samples per request
    max_image_bytes: int = 8 * MiB
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_steps: int = 256
    max_frames: int = 1024
    # GenerateStream: messages of one stream in progress at once (past it the gateway reads no
    # further), and the largest message. A stream holds their product of --request-memory-mb
    # while it is open, so streams cannot take more memory than unary calls can.
    max_stream_pending: int = 8
    max_stream_message_bytes: int = 256 * 1024
    # The largest request message, counted after decompression. Responses are bounded by
    # max_items and max_frames instead (their size is ours, not the caller's).
    max_message_bytes: int = 16 * MiB
    # Bytes the request messages of all calls in flight may hold together: past it,
    # RESOURCE_EXHAUSTED before the request is parsed. The in-flight cap alone would let
    # max_inflight large requests stack up.
    request_memory_mb: int = 128
    # Requests compressed with gzip or deflate. Off, gRPC refuses them with UNIMPLEMENTED
    # before inflating the body: images are already compressed and embeddings barely
    # compress, while a small compressed body can inflate to max_message_bytes.
    compressed_requests: bool = False
    backend_timeout_s: float = 30.0  # per backend call when the caller set no deadline
    decode_threads: int = 2  # per decode lane (ordinary and large images), off the event loop
    # Bytes all image decodes in flight may take together (estimated from each image's
    # header before it is decoded): bombs under the pixel cap wait for room instead of
    # stacking up; one image that alone needs more is refused.
    decode_memory_mb: int = 256
    max_request_pixels: int = DEFAULT_MAX_PIXELS  # all images of one request together
    grace_s: float = 10.0  # SIGTERM: how long in-flight calls may finish
    drain_delay_s: float = 0.0  # SIGTERM: NOT_SERVING this long before stopping (endpoints update)
    max_connection_age_s: float = 300.0  # clients reconnect, so new replicas get traffic
    health_poll_s: float = 1.0  # how often backend readiness is checked
    reflection: bool = True  # gRPC server reflection (grpcurl list/describe)
    # The event loop: uvloop (libuv) costs less CPU per call than asyncio's own; auto takes
    # it when installed (the serving extra installs it where it builds).
    event_loop: str = "auto"
    # With --triton-url on the same host: batches of at least triton_shm_min_items pass
    # their tensors through system shared memory instead of the gRPC messages.
    triton_shm: bool = False
    triton_shm_min_items: int = 16
    # A Triton that restricts its shared-memory protocol (the chart's does: only its own pod
    # may register regions) asks for the key in this file (vaegan.service.shm.ADMIN_HEADER).
    triton_admin_key_file: str | None = None
    # Gateway processes on --port (each binds it; the kernel spreads connections over them),
    # under a supervisor that serves their metrics on one endpoint and drains them all.
    workers: int = 1
    tls_cert: str | None = None  # server certificate (PEM): TLS on the gRPC port
    tls_key: str | None = None  # its private key (PEM)
    tls_client_ca: str | None = (
        None  # CA bundle (PEM): clients must present a certificate it signed (mTLS)
    )
    auth_tokens_file: str | None = (
        None  # bearer tokens, one per line; calls without one get UNAUTHENTICATED
    )
    auth_tokens: str | None = (
        None  # or comma-separated tokens (for VAEGAN_AUTH_TOKENS); never logged
    )

    def check(self) -> None:
        """Settings that contradict each other stop the gateway at start, rather than make
        a documented limit unreachable at run time."""
        for name in ("max_batch_size", "max_queue", "max_items", "max_frames", "max_inflight"):
            if getattr(self, name) < 1:
                raise VaeganError(f"--{name.replace('_', '-')} must be at least 1")
        if self.event_loop not in EVENT_LOOPS:
            raise VaeganError(
                f"--event-loop {self.event_loop!r}: choose one of {', '.join(EVENT_LOOPS)}"
            )
        if self.workers < 1:
            raise VaeganError("--workers must be at least 1")
        if self.workers > 1 and self.port == 0:
            raise VaeganError("--workers needs a fixed --port: every worker binds the same one")
        if self.triton_admin_key_file and not self.triton_shm:
            raise VaeganError(
                "--triton-admin-key-file is only used to register shared memory: add --triton-shm"
            )
        if self.decode_memory_mb < 1:
            raise VaeganError("--decode-memory-mb must be at least 1")
        if self.max_stream_pending < 1 or self.max_stream_message_bytes < 1:
            raise VaeganError(
                "--max-stream-pending and --max-stream-message-bytes must be positive"
            )
        if self.request_memory_mb * MiB < self.stream_reserve_bytes:
            raise VaeganError(
                f"--request-memory-mb {self.request_memory_mb} cannot hold one GenerateStream's "
                f"--max-stream-pending x --max-stream-message-bytes ({self.stream_reserve_bytes} bytes)"
            )
        if self.request_memory_mb * MiB < self.max_message_bytes:
            raise VaeganError(
                f"--request-memory-mb {self.request_memory_mb} is smaller than "
                f"--max-message-bytes {self.max_message_bytes}: the largest request allowed "
                "could never be admitted"
            )
        if self.max_batch_size > self.max_queue:
            raise VaeganError(
                f"--max-batch-size {self.max_batch_size} is larger than --max-queue "
                f"{self.max_queue}: a full batch could never be queued"
            )

    @property
    def stream_reserve_bytes(self) -> int:
        """What an open GenerateStream holds of the request-memory budget."""
        return self.max_stream_pending * self.max_stream_message_bytes

    def describe(self) -> str:
        """One line for the start-up log: tokens are never shown, only how many there are
        (reading them here also makes a token source without a token fail at start)."""
        shown = {
            k: ("<set>" if v is not None else "<unset>") if k == "auth_tokens" else v
            for k, v in asdict(self).items()
        }
        n = len(self.tokens())
        shown["auth"] = f"{n} token{'s' if n != 1 else ''}" if n else "off"
        return " ".join(f"{k}={v}" for k, v in shown.items())

    def triton_admin_key(self) -> str | None:
        """The key of Triton's restricted shared-memory protocol, read at start."""
        if not self.triton_admin_key_file:
            return None
        try:
            with open(self.triton_admin_key_file) as f:
                key = f.read().strip()
        except OSError as e:
            raise VaeganError(
                f"--triton-admin-key-file {self.triton_admin_key_file}: {e.strerror or e}"
            ) from None
        if not key:
            raise VaeganError(f"--triton-admin-key-file {self.triton_admin_key_file} is empty")
        return key

    def tokens(self) -> frozenset[str]:
        """The bearer tokens; empty only when no token source is set. A source that is set
        but yields no token is an error: serving without auth must never happen by accident."""
        found: set[str] = set()
        if self.auth_tokens is not None:
            found |= {t.strip() for t in self.auth_tokens.split(",")}
        if self.auth_tokens_file:
            try:
                with open(self.auth_tokens_file) as f:
                    lines = [line.strip() for line in f]
            except OSError as e:
                raise VaeganError(
                    f"--auth-tokens-file {self.auth_tokens_file}: {e.strerror or e}"
                ) from None
            found |= {line for line in lines if not line.startswith("#")}
        found.discard("")
        if not found and (self.auth_tokens is not None or self.auth_tokens_file):
            raise VaeganError(
                "the auth token source is set but holds no token (--auth-tokens / "
                "VAEGAN_AUTH_TOKENS, --auth-tokens-file: one token per line, # comments); "
                "give at least one token, or unset it to serve without auth"
            )
        return frozenset(found)


HELP = {
    "model_repository": "serve this model repository with the embedded ONNX Runtime backend",
    "triton_url": "serve through Triton at HOST:PORT (gRPC) instead",
    "metrics_host": "address of the metrics endpoint (unset: the same as --host)",
    "health_port": "plaintext port serving only grpc.health.v1, for probes that cannot speak TLS (0 = none)",
    "model_version": "pin a model version (default: the newest ready)",
    "batching": "coalesce concurrent requests (true/false)",
    "auth_tokens": "comma-separated bearer tokens (prefer VAEGAN_AUTH_TOKENS or --auth-tokens-file: flags show in ps)",
    "tls_client_ca": "require client certificates signed by this CA (mutual TLS)",
    "max_inflight_per_connection": "calls one client connection may have in flight (0 = half of --max-inflight; set it to --max-inflight behind a proxy that uses one connection for everyone)",
    "max_call_s": "the server's limit on any call's duration, with or without a client deadline",
    "max_connection_age_s": "seconds before a client connection is told to reconnect (GOAWAY); its calls then get --grace-s before it is closed, which also ends streams whose reader stopped",
    "decode_memory_mb": "MiB all image decodes in flight may use together, estimated from "
    "headers; images needing over 1/16 of it decode in their own lane with 3/4 of it",
    "max_request_pixels": "pixels all images of one request may have together",
    "max_stream_pending": "GenerateStream messages in progress at once per stream (past it, no further message is read)",
    "max_stream_message_bytes": "largest GenerateStream message in bytes (larger: INVALID_ARGUMENT for that message)",
    "max_message_bytes": "largest request message in bytes, after decompression",
    "request_memory_mb": "MiB the request messages of all calls in flight may hold together",
    "event_loop": "auto (uvloop when installed), asyncio or uvloop",
    "triton_shm": "pass batches' tensors to Triton through system shared memory (true/false; Triton on the same host, sharing /dev/shm); any failure falls back to the wire",
    "triton_shm_min_items": "the smallest batch sent through shared memory (smaller ones gain nothing)",
    "triton_admin_key_file": "file holding the key a Triton started with --grpc-restricted-protocol=shared-memory:vaegan-admin-key=KEY asks for before registering regions (with --triton-shm)",
    "workers": "gateway processes on one port (each takes a core; clients spread calls over them by opening several connections), metrics of all on one endpoint",
    "compressed_requests": "accept gzip/deflate-compressed requests (true/false; off: UNIMPLEMENTED)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        env = "VAEGAN_" + f.name.upper()
        default = f.default
        typ = _parser(f)
        help_text = HELP.get(f.name, f.name.replace("_", " "))
        p.add_argument(
            flag, type=typ, default=None, help=f"{help_text} (env {env}; default {default!r})"
        )


def from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        typ = _parser(f)
        flag_value = getattr(args, f.name, None)
        if flag_value is not None:
            values[f.name] = flag_value
        elif "VAEGAN_" + f.name.upper() in environ:
            values[f.name] = typ(environ["VAEGAN_" + f.name.upper()])
    return Settings(**values)


def _parser(f):
    """The function that turns a flag's or an environment variable's text into the field's type."""
    return {"int": int, "float": float, "bool": parse_bool, "str": str, "str | None": str}[
        str(f.type)
    ]
