"""Batch jobs, as the original tool's batch prediction had them: JSONL in, JSONL out.

Input lines (one per instance):
    {"embeddings": [0.1, -2.3, ...], "key": "0"}          -> an image
    {"image_bytes": {"b64": "iVBORw0..."}, "key": "1"}    -> mu and logvar
Output lines, in input order, carry the same key:
    {"key": "0", "image_png_b64": "...", "decoder_version": "2"}
    {"key": "1", "mu": [...], "logvar": [...], "encoder_version": "2"}
    {"key": "7", "error": {"code": "INVALID_ARGUMENT", "message": "..."}}
A bad line gets an error line, whatever is wrong with it; the job goes on. Lines go out
concurrently so the gateway can batch them, and the input is read as it is sent: a job of
any length holds only the lines in flight.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from vaegan.client import LatentClient
from vaegan.flags import finite_number
from vaegan.v1 import vaegan_pb2 as pb


def _error(key, code: str, message: str) -> dict[str, Any]:
    return {"key": key, "error": {"code": code, "message": message}}


def run_line(client: LatentClient, line: str) -> dict[str, Any]:
    stub, timeout, metadata = client.stub, client.timeout, client.metadata
    try:
        item = json.loads(line)
    except (ValueError, RecursionError) as e:  # not JSON, an integer of >4300 digits, nesting
        return _error(None, "INVALID_ARGUMENT", f"not JSON this job can read: {str(e)[:200]}")
    if not isinstance(item, dict):
        return _error(None, "INVALID_ARGUMENT", "each line must be a JSON object")
    key = item.get("key")
    if not (key is None or (isinstance(key, str | int) and not isinstance(key, bool))):
        key = None  # echoed as given only when it is a plain string or integer
    try:
        if "embeddings" in item:
            values = item["embeddings"]
            if not isinstance(values, list) or not all(finite_number(v) for v in values):
                return _error(
                    key, "INVALID_ARGUMENT", "embeddings must be a flat list of finite numbers"
                )
            r = stub.Generate(
                pb.GenerateRequest(
                    embeddings=pb.EmbeddingList(items=[pb.Embedding(values=values)])
                ),
                timeout=timeout,
                metadata=metadata,
            )
            return {
                "key": key,
                "image_png_b64": base64.b64encode(r.images[0].data).decode(),
                "decoder_version": r.decoder_version,
            }
        if "image_bytes" in item:
            b64 = item["image_bytes"].get("b64") if isinstance(item["image_bytes"], dict) else None
            if not isinstance(b64, str):
                return _error(
                    key, "INVALID_ARGUMENT", 'image_bytes must be {"b64": "<base64 PNG or JPEG>"}'
                )
            try:
                data = base64.b64decode(b64, validate=True)
            except ValueError as e:
                return _error(key, "INVALID_ARGUMENT", f"image_bytes.b64 is not base64: {e}")
            r = stub.Encode(pb.EncodeRequest(images=[data]), timeout=timeout, metadata=metadata)
            e = r.encodings[0]
            return {
                "key": key,
                "mu": list(e.mu.values),
                "logvar": list(e.logvar.values),
                "encoder_version": r.encoder_version,
            }
        return _error(key, "INVALID_ARGUMENT", 'a line needs "embeddings" or "image_bytes"')
    except grpc.RpcError as e:
        return _error(key, e.code().name, e.details())


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
    with (
        ThreadPoolExecutor(concurrency) as pool,
        open(input_path, encoding="utf-8", errors="replace") as src,
        open(output_path, "w") as out,
        tqdm(desc="batch job", unit="line", disable=not progress) as bar,
    ):
        pending: deque = deque()

        def write_oldest() -> None:
            result = pending.popleft().result()
            counts["errors" if "error" in result else "ok"] += 1
            out.write(json.dumps(result) + "\n")
            bar.update()

        for line in src:
            if line.strip():
                pending.append(pool.submit(run_line, client, line))
                if len(pending) >= window:
                    write_oldest()
        while pending:
            write_oldest()
    return counts
