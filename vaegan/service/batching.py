"""Coalesces concurrent requests for one model into batched backend calls.

While the backend has a free slot, items go out at once (no added latency at low load);
while every slot is busy they accumulate, so batches grow with load. An item waits at
most ``max_wait`` for company once a slot is free, and batches hold up to ``max_batch``
items; results are split back per request. The queue is bounded in items:
past it ``submit`` raises RESOURCE_EXHAUSTED at once instead of growing latency. An item
whose caller cancels, or whose deadline passes, while it waits leaves the queue at that
moment (the caller gets DEADLINE_EXCEEDED then, not when a slot frees), so the queue's
bound counts only items someone still waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from vaegan.errors import DeadlineExceeded, InvalidInput, ResourceExhausted
from vaegan.service.metrics import Metrics

RunFn = Callable[[np.ndarray, float | None], Awaitable[tuple[dict[str, np.ndarray], str]]]


@dataclass
class _Item:
    array: np.ndarray
    deadline: float | None  # time.monotonic() seconds
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None  # withdraws the item at its deadline


class Batcher:
    def __init__(
        self,
        model: str,
        run: RunFn,
        metrics: Metrics,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        max_concurrent: int,
    ):
        self.model, self.run, self.metrics = model, run, metrics
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self._queue: deque[_Item] = deque()
        self._queued_items = 0
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._task: asyncio.Task | None = None
        self._inflight: set[asyncio.Task] = set()

    async def submit(
        self, array: np.ndarray, deadline: float | None
    ) -> tuple[dict[str, np.ndarray], str]:
        n = len(array)
        if self._queued_items + n > self.max_queue:
            raise ResourceExhausted(
                f"{self.model}: request queue is full ({self._queued_items} items waiting, limit {self.max_queue}); retry with backoff"
            )
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.model}")
        loop = asyncio.get_running_loop()
        item = _Item(array, deadline, loop.create_future())
        self._queue.append(item)
        self._queued_items += n
        self.metrics.queue_depth.labels(self.model).set(self._queued_items)
        if deadline is not None:
            item.timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._expire, item)
        self._wakeup.set()
        try:
            return await item.future
        except asyncio.CancelledError:
            self._withdraw(item)  # the caller went away: its items stop counting now
            raise
        finally:
            if item.timer is not None:
                item.timer.cancel()

    def _withdraw(self, item: _Item) -> bool:
        """Take ``item`` out of the queue if it is still there (an item is counted in
        ``_queued_items`` exactly while it is in ``_queue``)."""
        try:
            self._queue.remove(item)
        except ValueError:  # already taken into a batch
            return False
        self._queued_items -= len(item.array)
        self.metrics.queue_depth.labels(self.model).set(self._queued_items)
        return True

    def _expire(self, item: _Item) -> None:
        if self._withdraw(item) and not item.future.done():
            item.future.set_exception(
                DeadlineExceeded(f"{self.model}: deadline passed while queued")
            )

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Take a backend slot first: while all are busy, the queue fills up by itself.
            await self._slots.acquire()
            if not self._queue:  # every waiting item was withdrawn meanwhile
                self._slots.release()
                continue
            # With nothing else in flight, send at once; otherwise wait for company until the
            # oldest item has waited max_wait, or the batch is full.
            wait = (
                self._queue[0].enqueued + self.max_wait_s - time.monotonic()
                if self._inflight
                else 0
            )
            while wait > 0 and sum(len(i.array) for i in self._queue) < self.max_batch:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except TimeoutError:
                    break
                if not self._queue:
                    break
                wait = self._queue[0].enqueued + self.max_wait_s - time.monotonic()
            batch, size = [], 0
            while self._queue and (not batch or size + len(self._queue[0].array) <= self.max_batch):
                item = self._queue.popleft()
                self._queued_items -= len(item.array)
                if item.future.done():  # the caller went away while it waited
                    continue
                if item.deadline is not None and time.monotonic() >= item.deadline:
                    item.future.set_exception(
                        DeadlineExceeded(f"{self.model}: deadline passed while queued")
                    )
                    continue
                batch.append(item)
                size += len(item.array)
            self.metrics.queue_depth.labels(self.model).set(self._queued_items)
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._dispatch(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _dispatch(self, batch: list[_Item]) -> None:
        try:
            now = time.monotonic()
            for item in batch:
                self.metrics.queue_wait.labels(self.model).observe(now - item.enqueued)
            await self._settle(batch)
        finally:
            self._slots.release()

    async def _settle(self, batch: list[_Item]) -> None:
        """One backend call for ``batch``. If the backend refuses it as invalid and it holds
        several callers' items, each half is tried again on its own: only the request that
        carries the bad input fails, not the callers who happened to share its batch."""
        deadlines = [i.deadline for i in batch if i.deadline is not None]
        now = time.monotonic()
        timeout = max(0.001, max(deadlines) - now) if len(deadlines) == len(batch) else None
        arrays = [i.array for i in batch]
        try:
            outputs, version = await self.run(np.concatenate(arrays), timeout)
        except InvalidInput as e:
            if len(batch) > 1:
                mid = len(batch) // 2
                await self._settle(batch[:mid])
                await self._settle(batch[mid:])
                return
            _fail(batch, e)
            return
        except Exception as e:
            _fail(batch, e)
            return
        offsets = np.cumsum([0] + [len(a) for a in arrays])
        for k, item in enumerate(batch):
            if not item.future.done():
                lo, hi = offsets[k], offsets[k + 1]
                item.future.set_result(({n: o[lo:hi] for n, o in outputs.items()}, version))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for t in list(self._inflight):
            t.cancel()


def _fail(batch: list[_Item], e: BaseException) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(e)


class ByteBudget:
    """An amount (bytes) shared by concurrent holders, granted first come, first served: a
    large request waits for room instead of being overtaken forever by small ones."""

    def __init__(self, total: int):
        self.total, self.free = total, total
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, n: int):
        n = min(n, self.total)
        if self._waiters or n > self.free:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((n, future))
            try:
                await future
            except BaseException:
                if future.done() and not future.cancelled():
                    self._release(n)  # granted just as the caller went away
                else:
                    self._waiters.remove((n, future))
                    self._grant()
                raise
        else:
            self.free -= n
        try:
            yield
        finally:
            self._release(n)

    def _release(self, n: int) -> None:
        self.free += n
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            n, future = self._waiters.popleft()
            if not future.done():
                self.free -= n
                future.set_result(None)
