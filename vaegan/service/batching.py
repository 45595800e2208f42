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
import contextvars
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
        self.model, self.run = model, run
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self._queue: deque[_Item] = deque()
        self._queued_items = 0
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._task: asyncio.Task | None = None
        self._inflight: set[asyncio.Task] = set()
        self._alone = 0  # calls on the idle fast path now (see submit)
        metrics.queue_capacity.labels(model).set(max_queue)  # depth starts at zero with the gateway
        series = metrics.model(model)
        self._depth, self._wait = series.queue_depth, series.queue_wait

    async def submit(
        self, array: np.ndarray, deadline: float | None
    ) -> tuple[dict[str, np.ndarray], str]:
        n = len(array)
        if self._queued_items + n > self.max_queue:
            raise ResourceExhausted(
                f"{self.model}: request queue is full ({self._queued_items} items waiting, limit {self.max_queue}); retry with backoff"
            )
        if not self._queue and not self._inflight and not self._alone and not self._slots.locked():
            return await self._run_alone(array, deadline)
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.model}")
        loop = asyncio.get_running_loop()
        item = _Item(array, deadline, loop.create_future())
        self._queue.append(item)
        self._queued_items += n
        self._depth.set(self._queued_items)
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

    async def _run_alone(
        self, array: np.ndarray, deadline: float | None
    ) -> tuple[dict[str, np.ndarray], str]:
        """The idle fast path: nothing waits and nothing is in flight, so there is no company
        to wait for and the item would go out at once anyway. It goes out from the caller's
        own task, without the queue's two task switches. Calls that arrive meanwhile queue
        up and wait for company as usual (the loop sees this one in flight)."""
        await self._slots.acquire()  # a free slot: taken without yielding
        self._alone += 1
        try:
            self._wait.observe(0.0)
            timeout = None if deadline is None else max(0.001, deadline - time.monotonic())
            return await self.run(array, timeout)
        finally:
            self._alone -= 1
            self._slots.release()

    def _withdraw(self, item: _Item) -> bool:
        """Take ``item`` out of the queue if it is still there (an item is counted in
        ``_queued_items`` exactly while it is in ``_queue``)."""
        try:
            self._queue.remove(item)
        except ValueError:  # already taken into a batch
            return False
        self._queued_items -= len(item.array)
        self._depth.set(self._queued_items)
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
                if self._inflight or self._alone
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
            self._depth.set(self._queued_items)
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
                self._wait.observe(now - item.enqueued)
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
        lo = 0  # each item's rows of the outputs, in batch order
        for item, array in zip(batch, arrays, strict=True):
            hi = lo + len(array)
            if not item.future.done():
                item.future.set_result(({n: o[lo:hi] for n, o in outputs.items()}, version))
            lo = hi

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for t in list(self._inflight):
            t.cancel()


def _fail(batch: list[_Item], e: BaseException) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(e)


# Who a call is for scheduling shared work between callers: the admission interceptor sets
# it to the connection's peer for the call's task (and the tasks it spawns inherit it).
caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")


class FairShare:
    """Bytes and worker slots shared by concurrent holders. Waiting callers are granted in
    turn, the one served least recently first, and each caller's own requests in arrival
    order: one caller's queue of expensive work delays another caller's request by at most
    the grants already running, not by the whole queue. The request whose turn it is waits
    for room if it does not fit yet, so a large one is never overtaken forever."""

    def __init__(self, total: int, slots: int):
        self.total, self.free, self.slots = total, total, slots
        self._queues: dict[str, deque[tuple[int, asyncio.Future]]] = {}
        self._holding: dict[str, int] = {}  # grants each caller holds now
        self._served: dict[str, int] = {}  # caller -> number of its latest grant
        self._grants = 0

    @contextlib.asynccontextmanager
    async def hold(self, n: int):
        n, who = min(n, self.total), caller.get()
        if self._queues or n > self.free or not self.slots:
            future = asyncio.get_running_loop().create_future()
            queue = self._queues.setdefault(who, deque())
            queue.append((n, future))
            try:
                await future
            except BaseException:
                if future.done() and not future.cancelled():
                    self._release(who, n)  # granted just as the caller went away
                else:
                    if (n, future) in queue:  # _grant drops a cancelled waiter itself
                        queue.remove((n, future))
                    if not queue and self._queues.get(who) is queue:
                        del self._queues[who]
                    self._forget(who)
                    self._grant()
                raise
        else:
            self._take(who, n)
        try:
            yield
        finally:
            self._release(who, n)

    def _take(self, who: str, n: int) -> None:
        self.free -= n
        self.slots -= 1
        self._holding[who] = self._holding.get(who, 0) + 1
        self._grants += 1
        self._served[who] = self._grants

    def _release(self, who: str, n: int) -> None:
        self.free += n
        self.slots += 1
        self._holding[who] -= 1
        if not self._holding[who]:
            del self._holding[who]
            self._forget(who)
        self._grant()

    def _forget(self, who: str) -> None:
        # Only callers holding or waiting are remembered: memory stays bounded by the calls
        # in flight, however many peers come and go.
        if who not in self._holding and who not in self._queues:
            self._served.pop(who, None)

    def _grant(self) -> None:
        while self._queues and self.slots:
            who = min(self._queues, key=lambda w: self._served.get(w, 0))
            queue = self._queues[who]
            n, future = queue[0]
            if n > self.free:
                return
            queue.popleft()
            if not queue:
                del self._queues[who]
            if future.done():  # its caller went away
                self._forget(who)
                continue
            self._take(who, n)
            future.set_result(None)
