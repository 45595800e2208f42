"""The gateway's core, between the servicer and the backend: per-model batchers, request
deadlines, and the model facts used to validate requests. Array in, array out."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from vaegan import repository as store
from vaegan.errors import InvalidInput
from vaegan.latent import Direction
from vaegan.prior import GaussianMixture
from vaegan.repository import ModelMeta
from vaegan.service.backends import Backend
from vaegan.service.batching import Batcher, DeadlineExceeded
from vaegan.service.metrics import Metrics
from vaegan.service.settings import Settings


class Gateway:
    def __init__(self, backend: Backend, settings: Settings, metrics: Metrics):
        self.backend, self.settings, self.metrics = backend, settings, metrics
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._latent_files: dict[tuple[str, str], tuple[int | None, Any]] = {}

    async def meta(self, role: str, version: str = "") -> ModelMeta:
        return await self.backend.meta(role, version)

    def directions(self, version: str) -> dict[str, Direction]:
        """The latent directions of a decoder version (re-read when the file changes)."""
        found = self._latent_file(version, store.directions_path, store.load_directions)
        return found or {}

    def prior(self, version: str) -> GaussianMixture | None:
        """The fitted prior of a decoder version, or None (re-read when the file changes)."""
        return self._latent_file(version, store.prior_path, store.load_prior)

    def _latent_file(self, version: str, where, load) -> Any:
        root = self.settings.directions_repository or self.settings.model_repository
        if not root:
            return None
        path = where(root, version)
        stamp = path.stat().st_mtime_ns if path.is_file() else None
        key = (path.name, version)
        cached = self._latent_files.get(key)
        if cached is None or cached[0] != stamp:
            cached = (stamp, load(root, version) if stamp is not None else None)
            self._latent_files[key] = cached
        return cached[1]

    async def run(
        self, role: str, meta: ModelMeta, array: np.ndarray, deadline: float | None
    ) -> dict[str, np.ndarray]:
        """Inputs for ``meta``'s model version -> its outputs, batched with other callers'
        (or alone, with batching off). The caller's remaining time is the backend timeout."""
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline passed before inference")
        if not self.settings.batching:
            return (await self._call(role, meta, array, self._timeout(deadline)))[0]
        key = (role, meta.version)
        if key not in self._batchers:
            s = self.settings

            async def run_batch(batch: np.ndarray, timeout: float | None, role=role, meta=meta):
                return await self._call(role, meta, batch, timeout or s.backend_timeout_s)

            self._batchers[key] = Batcher(
                meta.name,
                run_batch,
                self.metrics,
                max_batch=s.max_batch_size,
                max_wait_s=s.max_wait_ms / 1e3,
                max_queue=s.max_queue,
                max_concurrent=s.max_concurrent_batches,
            )
        return (await self._batchers[key].submit(array, deadline))[0]

    async def _call(self, role: str, meta: ModelMeta, array: np.ndarray, timeout: float):
        self.metrics.batch_size.labels(meta.name).observe(len(array))
        return await self.backend.infer(role, meta.version, array, timeout)

    def _timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return self.settings.backend_timeout_s
        return max(0.001, deadline - time.monotonic())

    def check_items(self, n: int, field: str) -> None:
        if n > self.settings.max_items:
            raise InvalidInput(f"{field}: {n} items; at most {self.settings.max_items} per request")

    async def close(self) -> None:
        for b in self._batchers.values():
            await b.close()
        await self.backend.close()
