"""The batcher's queue rules, with a backend the test controls (the real backends are
exercised in test_gateway.py)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from vaegan.errors import DeadlineExceeded, InvalidInput, ResourceExhausted
from vaegan.service.batching import Batcher, FairShare, caller
from vaegan.service.metrics import Metrics


class GatedBackend:
    """Records every batch it is given and answers only when the test opens the gate."""

    def __init__(self):
        self.batches: list[np.ndarray] = []
        self.gate = asyncio.Event()

    async def __call__(self, batch, timeout):
        self.batches.append(batch.copy())
        await self.gate.wait()
        return {"out": batch * 2}, "1"


def _batcher(backend, **kw):
    args = dict(max_batch=8, max_wait_s=0.001, max_queue=4, max_concurrent=1) | kw
    return Batcher("m", backend, Metrics("test", "0"), **args)


def test_full_queue_is_refused_at_once_and_accepted_items_still_complete():
    async def scenario():
        backend = GatedBackend()
        b = _batcher(backend)
        first = asyncio.create_task(b.submit(np.ones((1, 2)), None))  # goes out, blocks the slot
        await asyncio.sleep(0.01)
        waiting = [
            asyncio.create_task(b.submit(np.ones((2, 2)), None)) for _ in range(2)
        ]  # 4 items queued
        await asyncio.sleep(0.01)
        refused = b.submit(np.ones((1, 2)), None)
        with pytest.raises(ResourceExhausted, match="queue is full"):
            refused.send(None)  # refused in its first step, before it could ever wait
        backend.gate.set()
        results = await asyncio.gather(first, *waiting)
        assert [r[0]["out"].shape for r in results] == [(1, 2), (2, 2), (2, 2)]
        await b.close()

    asyncio.run(scenario())


def test_cancelled_and_expired_items_are_dropped_before_inference():
    async def scenario():
        backend = GatedBackend()
        b = _batcher(backend, max_queue=100)
        blocker = asyncio.create_task(b.submit(np.full((1, 1), 1.0), None))
        await asyncio.sleep(0.01)
        cancelled = asyncio.create_task(b.submit(np.full((1, 1), 2.0), None))
        expired = asyncio.create_task(b.submit(np.full((1, 1), 3.0), time.monotonic() + 0.02))
        kept = asyncio.create_task(b.submit(np.full((1, 1), 4.0), None))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.sleep(0.05)  # the deadline of `expired` passes while it waits
        backend.gate.set()
        await blocker
        assert (await kept)[0]["out"].tolist() == [[8.0]]
        with pytest.raises(DeadlineExceeded):
            await expired
        seen = sorted(float(v) for batch in backend.batches for v in batch.ravel())
        assert seen == [1.0, 4.0]  # neither the cancelled nor the expired item reached the backend
        await b.close()

    asyncio.run(scenario())


def test_cancelled_and_expired_items_stop_counting_against_the_queue_bound_at_once():
    async def scenario():
        backend = GatedBackend()
        b = _batcher(backend, max_queue=4)
        blocker = asyncio.create_task(b.submit(np.ones((1, 1)), None))  # holds the only slot
        await asyncio.sleep(0.01)
        cancelled = asyncio.create_task(b.submit(np.ones((2, 1)), None))
        expiring = asyncio.create_task(b.submit(np.ones((2, 1)), time.monotonic() + 0.02))
        await asyncio.sleep(0.01)
        refused = b.submit(np.ones((1, 1)), None)
        with pytest.raises(ResourceExhausted):  # 4 items wait: the queue is full
            refused.send(None)
        cancelled.cancel()
        # The deadline passes while the slot is still held: the caller hears at once.
        with pytest.raises(DeadlineExceeded, match="while queued"):
            await asyncio.wait_for(expiring, 1.0)
        assert not backend.gate.is_set()
        # Nobody waits for those 4 items any more, so 4 new ones fit while the slot is held.
        fits = asyncio.create_task(b.submit(np.ones((4, 1)), None))
        await asyncio.sleep(0.01)
        assert not fits.done()  # queued, not refused
        backend.gate.set()
        await blocker
        assert (await fits)[0]["out"].shape == (4, 1)
        await b.close()

    asyncio.run(scenario())


def test_items_arriving_together_share_one_backend_call():
    async def scenario():
        backend = GatedBackend()
        b = _batcher(backend, max_queue=100, max_concurrent=1)
        blocker = asyncio.create_task(b.submit(np.zeros((1, 1)), None))
        await asyncio.sleep(0.01)  # the blocker's call holds the only backend slot
        waiting = [asyncio.create_task(b.submit(np.full((1, 1), float(i)), None)) for i in range(6)]
        await asyncio.sleep(0.01)
        backend.gate.set()
        results = await asyncio.gather(blocker, *waiting)
        assert [float(r[0]["out"][0, 0]) for r in results[1:]] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        assert [len(batch) for batch in backend.batches] == [1, 6]  # the six in one call
        await b.close()

    asyncio.run(scenario())


def test_each_caller_gets_back_exactly_its_own_rows_of_a_shared_batch():
    async def scenario():
        backend = GatedBackend()
        b = _batcher(backend, max_batch=16, max_queue=100, max_concurrent=1)
        blocker = asyncio.create_task(b.submit(np.zeros((1, 1)), None))
        await asyncio.sleep(0.01)  # the blocker's call holds the only backend slot
        sizes = [3, 1, 2, 4]
        arrays = [np.arange(n, dtype=float).reshape(n, 1) + 10 * i for i, n in enumerate(sizes)]
        waiting = [asyncio.create_task(b.submit(a, None)) for a in arrays]
        await asyncio.sleep(0.01)
        backend.gate.set()
        results = await asyncio.gather(blocker, *waiting)
        assert [len(batch) for batch in backend.batches] == [1, sum(sizes)]  # one shared call
        for a, (out, _) in zip(arrays, results[1:], strict=True):
            np.testing.assert_array_equal(out["out"], a * 2)
        await b.close()

    asyncio.run(scenario())


class PickyBackend:
    """Refuses, as invalid, any batch holding a NaN (as a backend refuses a bad tensor)."""

    def __init__(self):
        self.calls: list[int] = []

    async def __call__(self, batch, timeout):
        self.calls.append(len(batch))
        await asyncio.sleep(0.02)  # long enough for the next callers to queue behind it
        if np.isnan(batch).any():
            raise InvalidInput("the batch holds a NaN")
        return {"out": batch * 2}, "1"


def test_a_batch_refused_as_invalid_fails_only_the_request_that_carries_the_bad_input():
    async def scenario():
        backend = PickyBackend()
        b = _batcher(backend, max_queue=100, max_wait_s=0.05)
        blocker = asyncio.create_task(b.submit(np.zeros((1, 1)), None))
        await asyncio.sleep(0.01)
        good = [asyncio.create_task(b.submit(np.full((1, 1), float(i)), None)) for i in (1, 2)]
        bad = asyncio.create_task(b.submit(np.full((1, 1), np.nan), None))
        more = asyncio.create_task(b.submit(np.full((1, 1), 3.0), None))
        await blocker
        assert [float(r[0]["out"][0, 0]) for r in await asyncio.gather(*good, more)] == [
            2.0,
            4.0,
            6.0,
        ]
        with pytest.raises(InvalidInput, match="NaN"):
            await bad
        assert backend.calls[1] == 4  # the four shared one call first, then were split
        await b.close()

    asyncio.run(scenario())


def test_a_call_to_an_idle_batcher_goes_out_from_the_callers_own_task_at_once():
    async def scenario():
        tasks = []

        async def backend(batch, timeout):
            tasks.append(asyncio.current_task())
            return {"out": batch * 2}, "1"

        b = _batcher(backend, max_wait_s=1.0)
        caller_task = asyncio.ensure_future(b.submit(np.ones((1, 2)), time.monotonic() + 5))
        out, _ = await caller_task
        assert out["out"].tolist() == [[2.0, 2.0]]
        assert tasks == [caller_task]  # no queue, no batching task: the caller's own task
        # Busy again: a call that arrives while one is in flight waits for company as usual.
        backend_gate = asyncio.Event()

        async def slow(batch, timeout):
            tasks.append(asyncio.current_task())
            await backend_gate.wait()
            return {"out": batch}, "1"

        b.run = slow
        first = asyncio.ensure_future(b.submit(np.ones((1, 2)), None))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(b.submit(np.ones((1, 2)), None))
        await asyncio.sleep(0.01)
        backend_gate.set()
        await asyncio.gather(first, second)
        assert tasks[1] is first and tasks[2] is not second  # the second went through the queue
        await b.close()

    asyncio.run(scenario())


def _holder(share, who: str, n: int, order: list, release: asyncio.Event):
    async def run():
        caller.set(who)  # what the admission interceptor does for each call
        async with share.hold(n):
            order.append(who)
            await release.wait()

    return asyncio.ensure_future(run())


def test_callers_take_turns_for_shared_work_so_one_callers_queue_cannot_delay_another():
    async def main():
        share, order, release = FairShare(total=100, slots=1), [], asyncio.Event()
        # A hostile caller queues ten large decodes; then a victim asks for a small one.
        hog = [_holder(share, "hog", 90, order, release) for _ in range(10)]
        await asyncio.sleep(0)
        victim = _holder(share, "victim", 1, order, release)
        await asyncio.sleep(0)
        assert order == ["hog"]  # one slot: the hog's first holds it
        release.set()
        await asyncio.gather(*hog, victim)
        return order

    order = asyncio.run(main())
    assert order.index("victim") == 1, order  # next in turn, not after the hog's nine others


def test_a_large_request_is_not_overtaken_forever_by_smaller_ones():
    async def main():
        share, order, gates = FairShare(total=100, slots=4), [], {}

        async def hold(who, n):
            caller.set(who)
            gates[who] = asyncio.Event()
            async with share.hold(n):
                order.append(who)
                await gates[who].wait()

        first = asyncio.ensure_future(hold("a", 60))
        await asyncio.sleep(0)
        big = asyncio.ensure_future(hold("b", 80))  # does not fit beside a's 60
        await asyncio.sleep(0)
        small = asyncio.ensure_future(hold("c", 10))  # would fit, but b waits first
        await asyncio.sleep(0)
        assert order == ["a"]
        gates["a"].set()
        await asyncio.sleep(0.01)
        assert order == ["a", "b", "c"]
        gates["b"].set(), gates["c"].set()
        await asyncio.gather(first, big, small)
        assert share.free == 100 and share.slots == 4  # everything given back
        assert not share._served and not share._holding  # no memory of callers gone

    asyncio.run(main())


def test_a_waiter_that_goes_away_gives_its_turn_to_the_next():
    async def main():
        share, order, release = FairShare(total=10, slots=1), [], asyncio.Event()
        first = _holder(share, "a", 10, order, release)
        await asyncio.sleep(0)
        gone = _holder(share, "b", 10, order, release)
        later = _holder(share, "c", 10, order, release)
        await asyncio.sleep(0)
        gone.cancel()
        release.set()
        await asyncio.gather(first, later)
        assert order == ["a", "c"] and share.free == 10 and share.slots == 1

    asyncio.run(main())
