"""Batch jobs, as the original tool's batch prediction had them: JSONL in, JSONL out.

Input lines (one per instance):
    {"embeddings": [0.1, -2.3, ...], "key": "0"}          -> an image
    {"image_bytes": {"b64": "iVBORw0..."}, "key": "1"}    -> mu and logvar
Output lines, in input order, carry the same key:
    {"key": "0", "image_png_b64": "...", "decoder_version": "2"}
    {"key": "1", "mu": [...], "logvar": [...], "encoder_version": "2"}
    {"key": "7", "error": {"code": "INVALID_ARGUMENT", "message": "..."}}
A bad line gets an error line, whatever is wrong with it; the job goes on. The input is read
as it is sent: a job of any length holds only the lines in flight. Embedding lines go out as
messages of ``GenerateStream`` (a message costs the gateway a fraction of a unary call, and
it batches them like calls); image lines as concurrent ``Encode`` calls.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from vaegan.client import LatentClient, stream_error
from vaegan.flags import finite_number
from vaegan.v1 import vaegan_pb2 as pb


def _error(key, code: str, message: str) -> dict[str, Any]:
    return {"key": key, "error": {"code": code, "message": message}}


class _StreamEnded:
    """What a line gets when its stream ended without answering it: a fault of the stream,
    not of the line, so the job may send the line again on another stream."""

    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str):
        self.code, self.message = code, message


def parse_line(line: str) -> dict[str, Any] | tuple[str, Any, Any]:
    """A line -> its error line, or ``("generate", key, values)`` / ``("encode", key, bytes)``."""
    try:
        item = json.loads(line)
    except (ValueError, RecursionError) as e:  # not JSON, an integer of >4300 digits, nesting
        return _error(None, "INVALID_ARGUMENT", f"not JSON this job can read: {str(e)[:200]}")
    if not isinstance(item, dict):
        return _error(None, "INVALID_ARGUMENT", "each line must be a JSON object")
    key = item.get("key")
    if not (key is None or (isinstance(key, str | int) and not isinstance(key, bool))):
        key = None  # echoed as given only when it is a plain string or integer
    if "embeddings" in item:
        values = item["embeddings"]
        if not isinstance(values, list) or not all(finite_number(v) for v in values):
            return _error(
                key, "INVALID_ARGUMENT", "embeddings must be a flat list of finite numbers"
            )
        return ("generate", key, values)
    if "image_bytes" in item:
        b64 = item["image_bytes"].get("b64") if isinstance(item["image_bytes"], dict) else None
        if not isinstance(b64, str):
            return _error(
                key, "INVALID_ARGUMENT", 'image_bytes must be {"b64": "<base64 PNG or JPEG>"}'
            )
        try:
            return ("encode", key, base64.b64decode(b64, validate=True))
        except ValueError as e:
            return _error(key, "INVALID_ARGUMENT", f"image_bytes.b64 is not base64: {e}")
    return _error(key, "INVALID_ARGUMENT", 'a line needs "embeddings" or "image_bytes"')


def encode_line(client: LatentClient, key, data: bytes) -> dict[str, Any]:
    try:
        r = client.stub.Encode(
            pb.EncodeRequest(images=[data]), timeout=client.timeout, metadata=client.metadata
        )
    except grpc.RpcError as e:
        return _error(key, e.code().name, e.details())
    e = r.encodings[0]
    return {
        "key": key,
        "mu": list(e.mu.values),
        "logvar": list(e.logvar.values),
        "encoder_version": r.encoder_version,
    }


class GenerateLane:
    """One ``GenerateStream``: lines go in through ``send``, and each answer resolves its
    line's future. gRPC's own thread pulls the messages; this lane's thread reads the
    answers. If the stream itself fails (its connection recycled, the gateway going away,
    --max-call-s), every line it still holds resolves to ``_StreamEnded`` with that status,
    and so does any line sent after."""

    def __init__(self, client: LatentClient):
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._held: dict[int, tuple[Any, Future]] = {}  # sent, not yet answered, by index
        self._failed: tuple[str, str] | None = None
        self.sent = 0
        self._thread = threading.Thread(target=self._read, args=(client,), daemon=True)
        self._thread.start()

    def send(self, key, values: list) -> Future:
        future: Future = Future()
        request = pb.GenerateRequest(
            embeddings=pb.EmbeddingList(items=[pb.Embedding(values=values)])
        )
        with self._lock:
            if self._failed is not None:
                future.set_result(_StreamEnded(*self._failed))
            else:
                self._queue.put((key, request, future))
                self.sent += 1
        return future

    @property
    def failed(self) -> bool:
        return self._failed is not None

    def close(self) -> None:
        """No more lines: the stream half-closes once the queued ones are sent."""
        self._queue.put(None)

    def join(self) -> None:
        self._thread.join()

    def _messages(self):
        index = 0
        while (job := self._queue.get()) is not None:
            key, request, future = job
            with self._lock:
                if self._failed is not None:
                    future.set_result(_StreamEnded(*self._failed))
                    continue
                self._held[index] = (key, future)
            index += 1
            yield request

    def _read(self, client: LatentClient) -> None:
        failed = ("UNAVAILABLE", "the stream ended before answering this line")
        try:
            for a in client.stub.GenerateStream(self._messages(), metadata=client.metadata):
                held = self._held.pop(a.index, None)
                if held is None:  # an index this stream never sent: nothing waits for it
                    continue
                key, future = held
                if a.HasField("error"):
                    future.set_result(_error(key, *stream_error(a)))
                else:
                    future.set_result(
                        {
                            "key": key,
                            "image_png_b64": base64.b64encode(a.response.images[0].data).decode(),
                            "decoder_version": a.response.decoder_version,
                        }
                    )
        except grpc.RpcError as e:
            failed = (e.code().name, e.details() or "the stream failed")
        except Exception as e:  # never leave a line without its answer
            failed = ("INTERNAL", f"reading the stream failed: {type(e).__name__}: {e}"[:300])
        with self._lock:
            self._failed = failed
            left = [future for _key, future in self._held.values()]
            self._held.clear()
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    left.append(job[2])  # (key, request, future)
        for future in left:
            future.set_result(_StreamEnded(*failed))
        self._queue.put(None)  # ends the request iterator if gRPC still waits on it


# Lines per stream before the next one opens: a stream is one call, which --max-call-s
# bounds, and a failed stream costs at most its lines in flight.
STREAM_LINES = 1024
# Messages the gateway keeps in progress per stream (--max-stream-pending, 8 by default):
# the job opens a stream per this many of its concurrent lines.
STREAM_PENDING = 8
# A line whose stream ended without answering it goes out again on another stream, up to
# this many sends in all, when the stream ended for its own reasons: its connection was
# recycled or went away (UNAVAILABLE), or its time ran out (DEADLINE_EXCEEDED). Generating is
# a pure function of the line, so sending it twice is safe.
SENDS = 4
RESEND_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


def run_job(
    client: LatentClient,
    input_path: str | Path,
    output_path: str | Path,
    *,
    concurrency: int = 16,
    progress: bool = True,
) -> dict[str, int]:
    counts = {"ok": 0, "errors": 0}
    window = 2 * concurrency  # lines read ahead of the oldest one still running
    lanes: list[GenerateLane | None] = [None] * max(1, concurrency // STREAM_PENDING)
    turn = 0
    with (
        ThreadPoolExecutor(concurrency) as pool,
        open(input_path, encoding="utf-8", errors="replace") as src,
        open(output_path, "w") as out,
        tqdm(desc="batch job", unit="line", disable=not progress) as bar,
    ):
        # Each line's future, with (key, values, sends so far) for an embedding line.
        pending: deque[tuple[Future, tuple | None]] = deque()
        old: list[GenerateLane] = []

        def generate(key, values) -> Future:
            nonlocal turn
            turn = (turn + 1) % len(lanes)
            lane = lanes[turn]
            if lane is None or lane.sent >= STREAM_LINES or lane.failed:
                if lane is not None:
                    lane.close()
                    old.append(lane)
                lane = lanes[turn] = GenerateLane(client)
            return lane.send(key, values)

        def resendable(future: Future, line: tuple | None) -> bool:
            ended = future.result() if future.done() else None
            return (
                isinstance(ended, _StreamEnded)
                and ended.code in RESEND_CODES
                and line is not None
                and line[2] < SENDS
            )

        def write_oldest() -> None:
            while True:
                future, line = pending[0]
                future.result()  # wait for the oldest line's answer
                if not resendable(future, line):
                    break
                for i, (other, other_line) in enumerate(pending):  # and every line its
                    if resendable(other, other_line):  # stream's end left, the oldest too
                        key, values, sends = other_line
                        pending[i] = (generate(key, values), (key, values, sends + 1))
            pending.popleft()
            result = future.result()
            if isinstance(result, _StreamEnded):  # sent SENDS times, or ended for good
                result = _error(line[0] if line else None, result.code, result.message)
            counts["errors" if "error" in result else "ok"] += 1
            out.write(json.dumps(result) + "\n")
            bar.update()

        try:
            for line in src:
                if not line.strip():
                    continue
                parsed = parse_line(line)
                if isinstance(parsed, dict):
                    done: Future = Future()
                    done.set_result(parsed)
                    pending.append((done, None))
                elif parsed[0] == "generate":
                    _, key, values = parsed
                    pending.append((generate(key, values), (key, values, 1)))
                else:
                    pending.append((pool.submit(encode_line, client, *parsed[1:]), None))
                if len(pending) >= window:
                    write_oldest()
            while pending:
                write_oldest()
        finally:
            for lane in [*old, *lanes]:
                if lane is not None:
                    lane.close()
                    lane.join()
    return counts
