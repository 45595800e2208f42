"""Serving efficiency, measured in one run: throughput, latency and the CPU every process on
the path spends per call, for the gateway and for what it stands in front of.

    python -m benchmarks.gateway_bench --repository outputs/demo_repository \\
        [--duration 5] [--out FILE.json] [--chart FILE.png]
    python -m benchmarks.gateway_bench ... --only uvloop triton-shm --shapes 4x64   # some rows

Each row is a closed loop: C clients, each sending calls of K embeddings (written C x K) one
after another for --duration seconds, after a short warm-up of the same load.
- ceiling: the decoder alone, in this process, ONNX Runtime at batch 64 (what this CPU can do)
- triton: client -> the local Triton (KServe v2 gRPC), no gateway
- bare grpc.aio (asyncio / uvloop): a grpc.aio server whose handler answers at once with as
  many bytes as the gateway's 1-image RAW response: the floor under any Python gateway
- gateway (uvloop / asyncio): client -> `vaegan serve` -> the same Triton, RAW pixels back;
  PNG rows ask for PNG; the stream row sends the calls as messages of one GenerateStream
- gateway, batching off: each call its own Triton request
- gateway, 2 workers: `vaegan serve --workers 2`, the clients' connections spread over both
- gateway, --triton-shm: batches' tensors through system shared memory to Triton
- T5's parts, what the gateway does that the bare server does not, each on the gateway's
  event loop and at the batch size the gateway's 64x1 row ran at (B items per Triton request,
  16 without that row): "gateway code, no gRPC" runs 64 callers through the gateway's own
  interceptors, servicer, core and batcher in this process (requests parsed and responses
  serialised as gRPC would), with a stand-in backend that answers each batch of at most B
  after 1 ms; "Triton client" sends the gateway's Triton requests (its TritonBackend, 2 in
  flight as --max-concurrent-batches, B items each) and counts this process's CPU per request

Clients share a connection eight at a time (the gateway allows 32 streams per connection).
CPU is user + system time of the load generator (this process), the gateway and Triton (with
its python backend's stubs), read from /proc around each row; this machine's speed drifts
between runs, so CPU per unit of work and ratios within one run are what compare. Each row
also gives, from Triton's metrics, the items per request Triton received (the gateway's
batches) and per execution it ran: every process's CPU per call falls as these grow, and on a
saturated 2-core machine the same row can settle at different batch sizes from run to run,
which is most of the spread of its ratios. The targets are issue 18's; the run exits 1 if any
call ended with anything but OK.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from collections import Counter, namedtuple
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc.aio as triton_aio
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from benchmarks.grpc_floor import SERVER
from vaegan import interface as api
from vaegan.export.local_triton import LocalTriton
from vaegan.host import free_port, tree_cpu_seconds
from vaegan.repository import ModelMeta
from vaegan.service.backends import Backend, OnnxBackend, TritonBackend
from vaegan.service.core import LatentCore
from vaegan.service.interceptors import PREFIX, Lifecycle
from vaegan.service.metrics import Metrics
from vaegan.service.process import gateway_process
from vaegan.service.server import interceptors, new_event_loop
from vaegan.service.servicer import LatentServicer
from vaegan.service.settings import Settings
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc

CLIENTS_PER_CONNECTION = 8
SHAPES = {"1x1": (1, 1), "64x1": (64, 1), "16x8": (16, 8), "4x64": (4, 64)}
CEILING = "ceiling (ORT in-process, batch 64)"  # the in-process ceiling row
OWN_CODE = "gateway code, no gRPC"  # T5's parts
TRITON_CLIENT = "Triton client (TritonBackend)"
PARTS_ITEMS = 16  # T5's parts' batch size when the gateway's 64x1 row did not run
RUNS = [
    "ceiling",
    "triton",
    "bare",
    "parts",
    "uvloop",
    "asyncio",
    "batching-off",
    "workers",
    "triton-shm",
]
LOCAL = [("grpc.use_local_subchannel_pool", 1)]  # each channel its own connection


@dataclass
class Row:
    name: str
    shape: str = ""  # clients x items per call
    calls: int = 0
    images: int = 0
    seconds: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    codes: dict = field(default_factory=dict)
    cpu_ms_per_call: dict = field(default_factory=dict)  # process -> ms
    images_per_s: float = 0.0
    # Triton's own counters for the decoder over the row: the batches it was sent (what the
    # gateway's batcher made of the calls) and the batches it ran (after its own batcher).
    # Per-call CPU everywhere depends on them, so they say which regime a row ran in.
    items_per_triton_request: float | None = None
    items_per_triton_execution: float | None = None

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def cpu_ms_per_image(self, process: str) -> float:
        return self.cpu_ms_per_call[process] * self.calls / max(1, self.images)


class Cpu:
    """CPU seconds of the processes on the path, by name ('client' is this process), and
    the decoder's counters from Triton's metrics endpoint when there is one."""

    def __init__(self, pids: dict[str, int], triton_metrics: str | None = None, model: str = ""):
        self.pids, self.triton_metrics, self.model = pids, triton_metrics, model

    def read(self) -> dict[str, float]:
        out = {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()}
        out["client"] = time.process_time()
        return out

    def counters(self) -> dict[str, float]:
        """Triton's nv_inference_{request_success,count,exec_count} for the model."""
        if not self.triton_metrics:
            return {}
        text = urllib.request.urlopen(self.triton_metrics, timeout=5).read().decode()
        wanted = {"nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count"}
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name not in wanted:
                continue
            for s in family.samples:  # the parser names a counter's samples NAME_total
                if s.name == family.name + "_total" and s.labels.get("model") == self.model:
                    out[family.name] = out.get(family.name, 0.0) + s.value
        return out


async def closed_loop(
    calls: list[Callable[[], Awaitable[int]]], seconds: float
) -> tuple[list[float], Counter, int]:
    """Each of ``calls`` in a loop of its own for ``seconds``: latencies of the OK calls,
    every call's status code, and the images the OK calls returned."""
    latencies: list[float] = []
    codes: Counter = Counter()
    images = 0
    end = time.monotonic() + seconds

    async def client(call):
        nonlocal images
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                got = await call()  # (images += await ... would lose other clients' updates)
            except grpc.aio.AioRpcError as e:
                codes[e.code().name] += 1
                continue
            except Exception as e:  # tritonclient raises its own exception type
                codes[type(e).__name__] += 1
                continue
            latencies.append(time.perf_counter() - t)
            codes["OK"] += 1
            images += got

    await asyncio.gather(*(client(c) for c in calls))
    return latencies, codes, images


async def measure(
    name: str, shape: str, calls: list, cpu: Cpu, seconds: float, warmup: float = 0.5
) -> Row:
    await closed_loop(calls, warmup)
    counted = cpu.counters()
    before, t0 = cpu.read(), time.monotonic()
    latencies, codes, images = await closed_loop(calls, seconds)
    elapsed, after = time.monotonic() - t0, cpu.read()
    counts = {k: v - counted[k] for k, v in cpu.counters().items()}
    ok = codes.get("OK", 0)
    lat = np.asarray(latencies) * 1e3

    def per(what: str) -> float | None:
        n = counts.get(what, 0)
        return counts["nv_inference_count"] / n if n else None

    return Row(
        name=name,
        shape=shape,
        calls=ok,
        images=images,
        seconds=elapsed,
        p50_ms=float(np.percentile(lat, 50)) if ok else None,
        p99_ms=float(np.percentile(lat, 99)) if ok else None,
        codes=dict(codes),
        cpu_ms_per_call={k: 1e3 * (after[k] - before[k]) / max(1, ok) for k in after},
        images_per_s=images / elapsed,
        items_per_triton_request=per("nv_inference_request_success"),
        items_per_triton_execution=per("nv_inference_exec_count"),
    )


def ceiling(repo: Path, model: str, latent: int, seconds: float) -> Row:
    version = decoder_meta(repo, model).version
    session = ort.InferenceSession(
        str(repo / model / version / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    z = np.random.default_rng(0).standard_normal((64, latent)).astype(np.float32)
    session.run(None, {"z": z})
    n, cpu0, start = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"z": z})
        n += 1
    elapsed = time.perf_counter() - start
    cpu_ms = 1e3 * (time.process_time() - cpu0) / n
    return Row(
        CEILING,
        "1x64",
        n,
        64 * n,
        elapsed,
        codes={"OK": n},
        cpu_ms_per_call={"client": cpu_ms},
        images_per_s=64 * n / elapsed,
    )


def _z(items: int, latent: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((items, latent)).astype(np.float32)


def generate_request(items: int, latent: int, fmt=pb.IMAGE_FORMAT_RAW) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        embeddings=pb.EmbeddingList(items=[pb.Embedding(values=v) for v in _z(items, latent)]),
        output=pb.OutputOptions(format=fmt),
    )


def channels(target: str, clients: int) -> list[grpc.aio.Channel]:
    n = max(1, -(-clients // CLIENTS_PER_CONNECTION))
    return [grpc.aio.insecure_channel(target, options=LOCAL) for _ in range(n)]


async def gateway_rows(
    target: str, latent: int, cpu: Cpu, seconds: float, name: str, shapes, png_shapes, stream
) -> list[Row]:
    rows = []
    todo = [(s, pb.IMAGE_FORMAT_RAW) for s in shapes] + [
        (s, pb.IMAGE_FORMAT_PNG) for s in png_shapes
    ]
    for shape, fmt in todo:
        clients, items = SHAPES[shape]
        chans = channels(target, clients)
        stubs = [pb_grpc.LatentServiceStub(c) for c in chans]
        req = generate_request(items, latent, fmt)

        def call(stub, req=req):
            async def one() -> int:
                return len((await stub.Generate(req, timeout=30)).images)

            return one

        calls = [call(stubs[i % len(stubs)]) for i in range(clients)]
        label = name + (", PNG" if fmt == pb.IMAGE_FORMAT_PNG else "")
        rows.append(await measure(label, shape, calls, cpu, seconds))
        for c in chans:
            await c.close()
    if stream:
        rows.append(await stream_row(target, latent, cpu, seconds, name))
    return rows


async def stream_row(target: str, latent: int, cpu: Cpu, seconds: float, name: str) -> Row:
    """64 clients, each one GenerateStream kept open, one 1-embedding message after another
    (the next sent when the previous answer arrived): the 64x1 load without a call each."""
    chans = channels(target, 64)
    streams = []
    req = generate_request(1, latent)
    for i in range(64):
        stub = pb_grpc.LatentServiceStub(chans[i % len(chans)])
        streams.append(stub.GenerateStream(timeout=seconds * 4 + 60))

    def call(s):
        async def one() -> int:
            await s.write(req)
            got = await s.read()
            if got is grpc.aio.EOF:
                raise RuntimeError("the stream ended early")
            if got.HasField("error"):
                raise RuntimeError(got.error.message)
            return len(got.response.images)

        return one

    row = await measure(f"{name}, GenerateStream", "64x1", [call(s) for s in streams], cpu, seconds)
    for s in streams:
        await s.done_writing()
    for c in chans:
        await c.close()
    return row


async def triton_rows(url: str, model: str, latent: int, cpu: Cpu, seconds: float, shapes):
    rows = []
    for shape in shapes:
        clients_n, items = SHAPES[shape]
        n = max(1, -(-clients_n // CLIENTS_PER_CONNECTION))
        clients = [triton_aio.InferenceServerClient(url, channel_args=LOCAL) for _ in range(n)]
        z = _z(items, latent)

        def call(client, z=z):
            async def one() -> int:
                inp = triton_aio.InferInput("z", list(z.shape), "FP32")
                inp.set_data_from_numpy(z)
                out = await client.infer(model, [inp], client_timeout=30)
                return len(out.as_numpy("image"))

            return one

        calls = [call(clients[i % n]) for i in range(clients_n)]
        rows.append(await measure("triton", shape, calls, cpu, seconds))
        for c in clients:
            await c.close()
    return rows


def bare_rows(answer_bytes: int, request: bytes, seconds: float, loops) -> list[Row]:
    rows = []
    for loop in loops:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(port), str(answer_bytes), loop],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"

            async def run(port=port, proc=proc, loop=loop):
                chans = channels(f"127.0.0.1:{port}", 64)
                methods = [c.unary_unary("/bare/Call") for c in chans]

                def call(m):
                    async def one() -> int:
                        await m(request, timeout=30)
                        return 1

                    return one

                cpu = Cpu({"gateway": proc.pid})
                calls = [call(methods[i % len(methods)]) for i in range(64)]
                row = await measure(f"bare grpc.aio, {loop}", "64x1", calls, cpu, seconds)
                for c in chans:
                    await c.close()
                return row

            rows.append(asyncio.run(run()))
        finally:
            proc.terminate()
            proc.wait(30)
    return rows


def decoder_meta(repo: Path, model: str) -> ModelMeta:
    """The served decoder version's facts, read as `vaegan serve`'s embedded backend reads
    them (version policy included)."""
    names = {"encoder": api.ENCODER_MODEL, "decoder": model}
    backend = OnnxBackend(repo, names, "", Metrics("onnxruntime", "bench"))

    async def read() -> ModelMeta:
        try:
            return await backend.meta("decoder")
        finally:
            await backend.close()

    return asyncio.run(read())


def on_gateway_loop(coroutine):
    """Run ``coroutine`` on the event loop `vaegan serve` runs on (uvloop when installed)."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop("auto")) as runner:
        return runner.run(coroutine)


class _StandIn(Backend):
    """Answers each batch after ``delay`` seconds with zero pixels of the model's shape."""

    kind = "stand-in"

    def __init__(self, meta: ModelMeta, metrics: Metrics, delay: float):
        super().__init__({"encoder": api.ENCODER_MODEL, "decoder": meta.name}, "", metrics)
        self.decoder, self.delay = meta, delay

    async def ready(self) -> bool:
        return True

    async def meta(self, role: str, version: str = "") -> ModelMeta:
        return self.decoder

    async def _infer(self, role, version, array, timeout):
        await asyncio.sleep(self.delay)
        size = self.decoder.image_size
        return {api.DECODER_OUTPUT: np.zeros((len(array), size, size, 3), np.uint8)}


class _Context:
    """What the interceptors and the servicer ask of a call that succeeds (an error path
    would call something this lacks, and the row would fail)."""

    def __init__(self, peer: str):
        self._peer = peer

    def time_remaining(self) -> float:
        return 30.0

    def peer(self) -> str:
        return self._peer

    def done(self) -> bool:
        return False


_Details = namedtuple("_Details", "method invocation_metadata")


def own_code_row(meta: ModelMeta, seconds: float, batch: int, clients: int = 64) -> Row:
    """The gateway's own code per 1-embedding RAW call: the interceptor chain `vaegan serve`
    builds, the servicer, core, batcher (batches of at most ``batch``) and metrics, with
    requests parsed and responses serialised, in this process and without gRPC."""
    method = PREFIX + "Generate"
    body = generate_request(1, meta.latent_dim).SerializeToString()

    async def run() -> Row:
        s = Settings(triton_url="stand-in", max_batch_size=batch)
        metrics = Metrics("stand-in", "bench")
        core = LatentCore(_StandIn(meta, metrics, 0.001), s, metrics)
        servicer = LatentServicer(core)
        chain = interceptors(s, metrics, Lifecycle())
        plain = grpc.unary_unary_rpc_method_handler(
            servicer.Generate,
            request_deserializer=pb.GenerateRequest.FromString,
            response_serializer=pb.GenerateResponse.SerializeToString,
        )

        async def resolve(i: int, details):
            if i == len(chain):
                return plain
            return await chain[i].intercept_service(lambda d: resolve(i + 1, d), details)

        details = _Details(method, ())

        def call(k: int):
            context = _Context(f"ipv4:127.0.0.1:{k % 8}")  # 8 connections, as in the rows

            async def one() -> int:
                handler = await resolve(0, details)  # as grpc.aio does for every call
                request = handler.request_deserializer(body)
                response = await handler.unary_unary(request, context)
                handler.response_serializer(response)
                return len(response.images)

            return one

        row = await measure(OWN_CODE, "64x1", [call(k) for k in range(clients)], Cpu({}), seconds)
        await core.close()

        def total(what: str) -> float:
            return metrics.registry.get_sample_value(
                f"vaegan_batch_size_{what}", {"model": meta.name}
            )

        row.items_per_triton_request = total("sum") / total("count")  # the stand-in's, warm-up too
        return _as_gateway_cpu(row)

    return on_gateway_loop(run())


async def triton_client_row(url: str, meta: ModelMeta, seconds: float, items: int) -> Row:
    """CPU of this process per Triton request the gateway sends (TritonBackend.infer of a
    batch of ``items``), two in flight."""
    backend = TritonBackend(
        url, {"encoder": api.ENCODER_MODEL, "decoder": meta.name}, "", Metrics("triton", "bench")
    )
    z = _z(items, meta.latent_dim)

    async def one() -> int:
        out, _ = await backend.infer("decoder", meta.version, z, 30.0)
        return len(out[api.DECODER_OUTPUT])

    try:
        shape = f"2x{items}"
        return _as_gateway_cpu(await measure(TRITON_CLIENT, shape, [one, one], Cpu({}), seconds))
    finally:
        await backend.close()


def _as_gateway_cpu(row: Row) -> Row:
    """A T5 part's CPU is the gateway's work, done in this process."""
    row.cpu_ms_per_call = {"gateway": row.cpu_ms_per_call["client"]}
    return row


def find(rows: list[Row], name: str, shape: str) -> Row | None:
    return next((r for r in rows if r.name == name and r.shape == shape), None)


def targets(rows: list[Row]) -> list[dict]:
    """Issue 18's targets, each from rows of this run (None where a row is missing)."""
    gw, asy = "gateway, uvloop", "gateway, asyncio"

    def get(name, shape):
        return find(rows, name, shape)

    def ratio(a: Row | None, b: Row | None, f) -> float | None:
        return f(a) / f(b) if a and b and f(b) else None

    def gw_cpu(r: Row) -> float:
        return r.cpu_ms_per_call["gateway"]

    def img(r: Row) -> float:
        return r.images_per_s

    ceil = get(CEILING, "1x64")
    out = [
        (
            "T1 non-OK calls in every row",
            sum(n for r in rows for c, n in r.codes.items() if c != "OK"),
            "<=",
            0,
        ),
        (
            "T2 gateway CPU/call 64x1, uvloop / asyncio",
            ratio(get(gw, "64x1"), get(asy, "64x1"), gw_cpu),
            "<=",
            0.85,
        ),
        (
            "T3 gateway img/s 4x64 / Triton direct 4x64",
            ratio(get(gw, "4x64"), get("triton", "4x64"), img),
            ">=",
            0.9,
        ),
        ("T3 gateway img/s 4x64 / ceiling", ratio(get(gw, "4x64"), ceil, img), ">=", 0.85),
        ("T3 gateway img/s 16x8 / ceiling", ratio(get(gw, "16x8"), ceil, img), ">=", 0.75),
        (
            "T4 gateway img/s 64x1, PNG / RAW",
            ratio(get(gw + ", PNG", "64x1"), get(gw, "64x1"), img),
            ">=",
            0.8,
        ),
        (
            "T4 gateway CPU/image 64x1, PNG / RAW",
            ratio(get(gw + ", PNG", "64x1"), get(gw, "64x1"), gw_cpu),
            "<=",
            1.5,
        ),
        (
            "T5 gateway CPU/call 64x1 / bare grpc.aio (same loop)",
            ratio(get(gw, "64x1"), get("bare grpc.aio, uvloop", "64x1"), gw_cpu),
            "<=",
            1.5,
        ),
        (
            "T6 p50 at 1x1, gateway / Triton direct",
            ratio(get(gw, "1x1"), get("triton", "1x1"), lambda r: r.p50_ms),
            "<=",
            1.25,
        ),
        (
            "T7 gateway CPU/item, GenerateStream / unary 64x1",
            ratio(get(gw + ", GenerateStream", "64x1"), get(gw, "64x1"), gw_cpu),
            "<=",
            0.5,
        ),
        (
            "T8 gateway CPU/image 4x64, --triton-shm / wire",
            ratio(get("gateway, --triton-shm", "4x64"), get(gw, "4x64"), gw_cpu),
            "<=",
            0.6,
        ),
    ]
    result = []
    for name, value, op, target in out:
        met = None if value is None else (value <= target if op == "<=" else value >= target)
        result.append({"target": name, "value": value, "op": op, "goal": target, "met": met})
    bare, own, hop, g64 = (
        get("bare grpc.aio, uvloop", "64x1"),
        get(OWN_CODE, "64x1"),
        next((r for r in rows if r.name == TRITON_CLIENT), None),
        get(gw, "64x1"),
    )
    if bare and own and hop and g64 and g64.items_per_triton_request:
        # What the gateway's 64x1 call costs beyond the bare server's, part by part: its own
        # code, and its share of a Triton request at the batch size the row ran at.
        share = hop.cpu_ms_per_call["gateway"] / g64.items_per_triton_request
        floor = bare.cpu_ms_per_call["gateway"]
        parts = [
            ("T5 part: the gateway's own code per call, ms", own.cpu_ms_per_call["gateway"]),
            ("T5 part: its share of a Triton request per call, ms", share),
            (
                "T5 with nothing else: (bare + both parts) / bare",
                (floor + own.cpu_ms_per_call["gateway"] + share) / floor,
            ),
        ]
        result += [{"target": name, "value": value} for name, value in parts]
    g, t = get(gw, "1x1"), get("triton", "1x1")
    if g and t:
        result.append(
            {"target": "T6 ms the gateway adds at 1x1 (p50)", "value": g.p50_ms - t.p50_ms}
        )
    return result


def chart(rows: list[Row], path: Path, title: str) -> None:
    """Images per second and CPU per image by process, one bar per row that serves images
    (T5's parts serve none: they are in the table and the JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.name not in (OWN_CODE, TRITON_CLIENT)]
    labels = [f"{r.name} {r.shape}" for r in rows]
    y = np.arange(len(rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 0.42 * len(rows) + 1.6), sharey=True)
    a.barh(y, [r.images_per_s for r in rows], color="#4c72b0")
    a.set_xlabel("images per second")
    a.set_yticks(y, labels)
    a.invert_yaxis()
    left = np.zeros(len(rows))
    for proc, color in (("client", "#999999"), ("gateway", "#dd8452"), ("triton", "#55a868")):
        ms = np.array([r.cpu_ms_per_image(proc) if proc in r.cpu_ms_per_call else 0 for r in rows])
        b.barh(y, ms, left=left, color=color, label=proc)
        left += ms
    b.set_xlabel("CPU ms per image (user + system)")
    b.legend(loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repository", required=True)
    p.add_argument("--model", default="vaegan_decoder")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per row")
    p.add_argument("--out", default=None, help="JSON of every row and target")
    p.add_argument("--chart", default=None, help="PNG chart of the rows")
    p.add_argument(
        "--only", nargs="+", choices=RUNS, default=RUNS, metavar="RUN", help=", ".join(RUNS)
    )
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    a = p.parse_args()
    repo = Path(a.repository)
    meta = decoder_meta(repo, a.model)
    latent = meta.latent_dim
    rows: list[Row] = []
    shapes = a.shapes

    def some(wanted: list[str]) -> list[str]:
        return [s for s in wanted if s in shapes]

    runs = [
        (k, name, flags, some(raw), some(png), stream and "64x1" in shapes)
        for k, name, flags, raw, png, stream in [
            (
                "uvloop",
                "gateway, uvloop",
                ["--event-loop", "uvloop"],
                shapes,
                ["64x1", "4x64"],
                True,
            ),
            ("asyncio", "gateway, asyncio", ["--event-loop", "asyncio"], shapes, [], False),
            ("batching-off", "gateway, batching off", ["--batching", "false"], ["64x1"], [], False),
            # Two processes on the port; the 64 clients' 8 connections spread over them.
            ("workers", "gateway, 2 workers", ["--workers", "2"], ["64x1", "4x64"], [], False),
            ("triton-shm", "gateway, --triton-shm", ["--triton-shm", "true"], ["4x64"], [], False),
        ]
        if k in a.only
    ]
    progress = tqdm(total=3 + len(runs), desc="gateway bench", unit="setup")
    if "ceiling" in a.only:
        rows.append(ceiling(repo, a.model, latent, a.duration))
    progress.update()
    with LocalTriton(repo) as triton:
        cpu = Cpu({"triton": triton.process.pid}, triton.metrics_url, a.model)
        if "triton" in a.only:
            rows += asyncio.run(
                triton_rows(triton.grpc_url, a.model, latent, cpu, a.duration, shapes)
            )
        progress.update()
        if "bare" in a.only:
            # The bare server answers with the bytes of the gateway's 1-image RAW response.
            with gateway_process(triton.grpc_url) as gw:
                one = grpc.insecure_channel(gw.target)
                req = generate_request(1, latent)
                answer = pb_grpc.LatentServiceStub(one).Generate(req, timeout=30)
                one.close()
            rows += bare_rows(
                answer.ByteSize(), req.SerializeToString(), a.duration, ("asyncio", "uvloop")
            )
        progress.update()
        for _, name, flags, raw, png, stream in runs:
            with gateway_process(triton.grpc_url, *flags) as gw:
                cpu = Cpu(
                    {"gateway": gw.process.pid, "triton": triton.process.pid},
                    triton.metrics_url,
                    a.model,
                )
                rows += asyncio.run(
                    gateway_rows(gw.target, latent, cpu, a.duration, name, raw, png, stream)
                )
            progress.update()
        if "parts" in a.only:
            row64 = find(rows, "gateway, uvloop", "64x1")
            k = round(row64.items_per_triton_request or PARTS_ITEMS) if row64 else PARTS_ITEMS
            rows.append(own_code_row(meta, a.duration, k))
            rows.append(on_gateway_loop(triton_client_row(triton.grpc_url, meta, a.duration, k)))
    progress.close()
    found = targets(rows)
    print(
        f"\n{'row':<34} {'CxK':>5} {'calls/s':>8} {'img/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU ms/call: client':>19} {'gateway':>8} {'triton':>7} {'items/Triton req, exec':>22}"
        "  codes"
    )
    for r in rows:
        c = r.cpu_ms_per_call

        def ms(k, c=c):
            return f"{c[k]:.3f}" if k in c else "-"

        p50 = f"{r.p50_ms:.2f}" if r.p50_ms is not None else "-"
        p99 = f"{r.p99_ms:.2f}" if r.p99_ms is not None else "-"
        req, run = r.items_per_triton_request, r.items_per_triton_execution
        items = "-" if req is None else f"{req:.1f}" if run is None else f"{req:.1f}, {run:.1f}"
        print(
            f"{r.name:<34} {r.shape:>5} {r.calls_per_s:>8.0f} {r.images_per_s:>8.0f} {p50:>7} "
            f"{p99:>7} {ms('client'):>19} {ms('gateway'):>8} {ms('triton'):>7} {items:>22}"
            f"  {r.codes}"
        )
    print()
    for t in found:
        v = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        if "goal" not in t:
            print(f"{t['target']:<56} {v:>8}")
            continue
        met = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        print(f"{t['target']:<56} {v:>8}  (target {t['op']} {t['goal']}: {met})")
    machine = {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    if a.out:
        report = {
            "benchmark": "gateway",
            "duration_s": a.duration,
            "machine": machine,
            "rows": [{**asdict(r), "calls_per_s": r.calls_per_s} for r in rows],
            "targets": found,
        }
        Path(a.out).write_text(json.dumps(report, indent=2))
    if a.chart:
        chart(
            rows, Path(a.chart), f"gateway bench, {a.duration:g} s per row, {machine['cpus']} CPUs"
        )
    bad = {f"{r.name} {r.shape}": r.codes for r in rows if set(r.codes) - {"OK"}}
    if bad:
        sys.exit(f"calls ended with non-OK codes: {bad}")


if __name__ == "__main__":
    main()
