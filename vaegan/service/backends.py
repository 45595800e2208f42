"""The backend interface and its two implementations.

- ``TritonBackend``: a Triton server over KServe v2 gRPC (tritonclient.grpc.aio).
- ``OnnxBackend``: the same model repository run in-process with ONNX Runtime, so
  ``vaegan serve`` works anywhere without a Triton.

Both read the model's facts from the same config.pbtxt parameters, take and return the
same uint8/fp32 arrays, and raise the project's errors (``Unavailable`` when the model
cannot be reached, ``DeadlineExceeded`` when the time is up).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vaegan import interface as api
from vaegan.errors import (
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    ResourceExhausted,
    Unavailable,
    VaeganError,
)
from vaegan.repository import ModelMeta, meta_from_parameters, read_config
from vaegan.service.metrics import Metrics
from vaegan.service.shm import is_shm_error

log = logging.getLogger("vaegan.service")

ROLES = ("encoder", "decoder")
INPUT = {"encoder": api.ENCODER_INPUT, "decoder": api.DECODER_INPUT}
OUTPUTS = {"encoder": list(api.ENCODER_OUTPUTS), "decoder": [api.DECODER_OUTPUT]}


class Backend(abc.ABC):
    kind: str

    def __init__(self, names: dict[str, str], pinned_version: str, metrics: Metrics):
        self.names, self.pinned, self.metrics = names, pinned_version, metrics

    async def start(self) -> None:  # noqa: B027 (optional hook)
        pass

    async def close(self) -> None:  # noqa: B027 (optional hook)
        pass

    @abc.abstractmethod
    async def ready(self) -> bool:
        """True when both models answer."""

    @abc.abstractmethod
    async def meta(self, role: str, version: str = "") -> ModelMeta:
        """Facts of the version ``version`` (or the pinned/newest one) of ``role``'s model."""

    @abc.abstractmethod
    async def _infer(
        self, role: str, version: str, array: np.ndarray, timeout: float | None
    ) -> dict[str, np.ndarray]: ...

    async def infer(
        self, role: str, version: str, array: np.ndarray, timeout: float | None
    ) -> tuple[dict[str, np.ndarray], str]:
        model = self.names[role]
        t = time.monotonic()
        code = "OK"
        try:
            return await self._infer(role, version, array, timeout), version
        except VaeganError as e:
            code = e.grpc_code
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            series = self.metrics.model(model)
            series.backend_requests[code].inc()
            series.backend_latency.observe(time.monotonic() - t)


class OnnxBackend(Backend):
    """Runs the repository's model.onnx files in this process, off the event loop."""

    kind = "onnxruntime"

    def __init__(self, repository: str | Path, names, pinned_version, metrics, threads: int = 2):
        super().__init__(names, pinned_version, metrics)
        self.repository = Path(repository)
        self._sessions: dict[tuple[str, str], Any] = {}
        self._configs: dict[str, tuple[int, Any]] = {}
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="onnxruntime")

    def _config(self, role: str):
        """The model's parsed config.pbtxt, parsed again only when the file changes (a
        version-policy edit is picked up without a restart)."""
        path = self.repository / self.names[role] / "config.pbtxt"
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            raise Unavailable(f"no model {self.names[role]} in {self.repository}") from None
        cached = self._configs.get(role)
        if cached is None or cached[0] != stamp:
            cfg = read_config(path.parent)
            if cfg is None:
                raise Unavailable(f"no model {self.names[role]} in {self.repository}")
            cached = self._configs[role] = (stamp, cfg)
        return cached[1]

    def _version(self, role: str, version: str) -> str:
        cfg = self._config(role)
        served = [str(v) for v in cfg.version_policy.specific.versions] or sorted(
            (p.name for p in (self.repository / self.names[role]).iterdir() if p.name.isdigit()),
            key=int,
        )[-1:]
        wanted = version or self.pinned
        if wanted and wanted not in served:
            raise NotFound(
                f"{self.names[role]} version {wanted} is not served (served: {', '.join(served)})"
            )
        return wanted or max(served, key=int)

    async def start(self) -> None:
        for role in ROLES:  # load and warm up now: readiness means the models really answer
            meta = await self.meta(role)
            self._session(role, meta.version)

    def _session(self, role: str, version: str):
        key = (role, version)
        if key not in self._sessions:
            import onnxruntime as ort

            path = self.repository / self.names[role] / version / "model.onnx"
            if not path.is_file():
                raise Unavailable(
                    f"{self.names[role]}/{version}/model.onnx is missing from the model repository"
                )
            options = ort.SessionOptions()
            # Explicit, so ONNX Runtime keeps to the cores this process may use (its default
            # pins worker threads to every core of the machine).
            options.intra_op_num_threads = len(os.sched_getaffinity(0))
            self._sessions[key] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        return self._sessions[key]

    async def ready(self) -> bool:
        try:
            for role in ROLES:
                self._session(role, self._version(role, ""))
            return True
        except VaeganError:
            return False

    async def meta(self, role: str, version: str = "") -> ModelMeta:
        v = self._version(role, version)
        cfg = self._config(role)
        return meta_from_parameters(
            self.names[role], v, {k: p.string_value for k, p in cfg.parameters.items()}
        )

    async def _infer(self, role, version, array, timeout):
        session = self._session(role, version)
        fut = asyncio.get_running_loop().run_in_executor(
            self._pool, session.run, OUTPUTS[role], {INPUT[role]: array}
        )
        try:
            outs = await asyncio.wait_for(fut, timeout) if timeout else await fut
        except TimeoutError:
            raise DeadlineExceeded(
                f"{self.names[role]}: inference did not finish before the deadline"
            ) from None
        return dict(zip(OUTPUTS[role], outs, strict=True))

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class TritonBackend(Backend):
    kind = "triton"

    def __init__(
        self,
        url: str,
        names,
        pinned_version,
        metrics,
        shm: bool = False,
        shm_min_items: int = 16,
        admin_key: str | None = None,
    ):
        super().__init__(names, pinned_version, metrics)
        import tritonclient.grpc.aio as triton

        self._triton = triton
        self.url = url
        self.client = triton.InferenceServerClient(
            url,
            channel_args=[
                # Triton is ours, and a batch's size is bounded by max_batch_size: no cap
                # (gRPC's default would refuse a batch of larger images above 4 MiB).
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
                # Notice a dead Triton within seconds and reconnect with bounded backoff.
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2_000),
            ],
        )
        self._meta_cache: dict[tuple[str, str], ModelMeta] = {}
        self._newest: dict[str, tuple[str, float]] = {}  # role -> (version, expiry)
        self._pending: dict[tuple, asyncio.Future] = {}  # queries in flight, by key
        # --triton-shm: batches of at least shm_min_items through shared memory (vaegan.service.shm)
        self.shm = None
        if shm:
            from vaegan.service.shm import ShmPool

            self.shm = ShmPool(self.client, admin_key=admin_key)
        self.shm_min_items = shm_min_items

    NEWEST_TTL_S = 2.0  # a new version is picked up within this long; no extra RPC per call
    CANCEL_MARGIN_S = 1.0  # how much longer than the caller's deadline a Triton call may run

    async def ready(self) -> bool:
        try:
            for role in ROLES:
                if not await self.client.is_model_ready(
                    self.names[role], self.pinned, client_timeout=2
                ):
                    return False
            return True
        except Exception:
            return False

    async def meta(self, role: str, version: str = "") -> ModelMeta:
        name = self.names[role]
        version = version or self.pinned
        try:
            if not version:
                cached = self._newest.get(role)
                if cached and cached[1] > time.monotonic():
                    version = cached[0]
                else:
                    version = await self._once(("newest", role), lambda: self._fetch_newest(role))
            key = (role, version)
            if key not in self._meta_cache:
                self._meta_cache[key] = await self._once(
                    ("meta", *key), lambda: self._fetch_meta(role, version)
                )
            return self._meta_cache[key]
        except self._triton_exc() as e:
            raise triton_error(e, name) from None

    async def _once(self, key: tuple, fetch):
        """One Triton query per key at a time; concurrent callers share its answer. Without
        this, every call waiting when the newest-version cache expires would send its own
        metadata RPC (seen under load as bursts of dozens of ModelMetadata calls)."""
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(fetch())
            task.add_done_callback(_retrieved)
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(task)  # one caller giving up does not cancel the others

    async def _fetch_newest(self, role: str) -> str:
        md = await self.client.get_model_metadata(self.names[role], as_json=True, client_timeout=5)
        version = max(md.get("versions") or ["1"], key=int)
        self._newest[role] = (version, time.monotonic() + self.NEWEST_TTL_S)
        return version

    async def _fetch_meta(self, role: str, version: str) -> ModelMeta:
        name = self.names[role]
        if not await self.client.is_model_ready(name, version, client_timeout=5):
            raise NotFound(f"{name} version {version} is not ready on Triton")
        cfg = (await self.client.get_model_config(name, version, as_json=True, client_timeout=5))[
            "config"
        ]
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        return meta_from_parameters(name, version, params)

    def _triton_exc(self):
        from tritonclient.utils import InferenceServerException

        return InferenceServerException

    async def _infer(self, role, version, array, timeout):
        layout = self._shm_layout(role, version, array)
        if layout is not None:
            outputs, nbytes = layout
            region = await self.shm.acquire(nbytes)
            if region is not None:
                try:
                    return await self._call(role, version, array, timeout, region, outputs)
                except VaeganError as e:
                    if not is_shm_error(str(e)):
                        raise
                    # Triton no longer knows the region (it restarted): register the pool
                    # again on the next batch, and send this one over the wire.
                    log.warning("Triton shared memory refused, using the wire: %s", str(e)[:300])
                    self.shm.forget()
                finally:
                    self.shm.release(region)
        return await self._call(role, version, array, timeout)

    def _shm_layout(self, role: str, version: str, array: np.ndarray) -> tuple[dict, int] | None:
        """Where a batch's outputs go in a shared-memory region (output -> shape, dtype, byte
        offset, bytes: after the input, one after another) and the bytes it needs in all; None for
        the wire (shared memory off, a small batch, or a version whose facts are not known
        yet)."""
        n = len(array)
        if self.shm is None or n < self.shm_min_items:
            return None
        meta = self._meta_cache.get((role, version))
        if meta is None:
            return None
        if role == "decoder":
            shapes = {api.DECODER_OUTPUT: ((n, meta.image_size, meta.image_size, 3), np.uint8)}
        else:
            shapes = {o: ((n, meta.latent_dim), np.float32) for o in OUTPUTS[role]}
        layout, at = {}, array.nbytes
        for o, (shape, dtype) in shapes.items():
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            layout[o] = (shape, dtype, at, size)
            at += size
        return layout, at

    async def _call(self, role, version, array, timeout, region=None, outputs=None):
        """One Triton inference; with ``region``, the input and the ``outputs`` (a layout
        from ``_shm_layout``) go through it."""
        t = self._triton
        inp = t.InferInput(
            INPUT[role], list(array.shape), "UINT8" if array.dtype == np.uint8 else "FP32"
        )
        requested = [t.InferRequestedOutput(o) for o in OUTPUTS[role]]
        if region is None:
            inp.set_data_from_numpy(array)
        else:
            np.ndarray(array.shape, array.dtype, buffer=region.memory.buf)[...] = array
            inp.set_shared_memory(region.name, array.nbytes, 0)
            for out, o in zip(requested, OUTPUTS[role], strict=True):
                _, _, at, size = outputs[o]
                out.set_shared_memory(region.name, size, at)
        # Never cancel a call Triton is working on: Triton 2.51 can crash (SIGSEGV in its
        # gRPC frontend) when a call is cancelled as its response completes
        # (triton-inference-server/server#7368, fixed in 24.12); it died so in a load test
        # here. So the caller's remaining time goes to Triton as the request's timeout
        # parameter, the gRPC deadline is a margin later, and a caller who gives up does not
        # cancel the call (shield): it ends within that margin and its answer is dropped.
        call = asyncio.ensure_future(
            self.client.infer(
                self.names[role],
                [inp],
                model_version=version,
                outputs=requested,
                timeout=int(timeout * 1e6) if timeout else None,
                client_timeout=timeout + self.CANCEL_MARGIN_S if timeout else None,
            )
        )
        call.add_done_callback(_retrieved)
        try:
            res = await asyncio.shield(call)
        except self._triton_exc() as e:
            raise triton_error(e, self.names[role]) from None
        if region is None:
            return {o: res.as_numpy(o) for o in OUTPUTS[role]}
        return {
            o: np.ndarray(shape, dtype, buffer=region.memory.buf, offset=at).copy()
            for o, (shape, dtype, at, _) in outputs.items()
        }

    async def close(self) -> None:
        if self.shm is not None:
            await self.shm.close()
        await self.client.close()


def _retrieved(future: asyncio.Future) -> None:
    """Marks a shielded future's outcome as seen: when every caller gave up, nobody else
    would, and asyncio would log "exception was never retrieved" for each one."""
    if not future.cancelled():
        future.exception()


def triton_error(e, name: str) -> VaeganError:
    """A tritonclient InferenceServerException -> the project's error, codes kept intact."""
    status = str(e.status() or "")
    msg = e.message() or str(e)
    if "DEADLINE_EXCEEDED" in status or "Deadline" in msg:
        return DeadlineExceeded(f"{name}: Triton did not answer before the deadline")
    if "INVALID_ARGUMENT" in status:
        return InvalidInput(f"{name}: {msg}")
    if "NOT_FOUND" in status or "unknown model" in msg.lower():
        return NotFound(f"{name}: {msg}")
    if "Exceeds maximum queue size" in msg:
        # Triton sends its full-queue rejection as UNAVAILABLE. It is overload, not an
        # outage: callers should back off rather than fail over, as with our own full
        # queue, so it becomes RESOURCE_EXHAUSTED.
        return ResourceExhausted(f"{name}: Triton's request queue is full; retry with backoff")
    return Unavailable(f"{name}: Triton unavailable ({status or 'no status'}: {msg[:200]})")
