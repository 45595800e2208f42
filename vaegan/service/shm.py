"""System shared memory between the gateway and a Triton on the same host (``--triton-shm``).

A batch's input tensor and its outputs travel through a POSIX shared-memory region both
processes map, instead of being serialised into and out of the gRPC messages: for batches of
many items that is most of the Triton client's CPU. Regions are pooled (one per batch in
flight, reused), registered with Triton once, and registered again after Triton forgets them
(a restart). Whatever goes wrong with shared memory (registration refused, Triton in another
container without the shared /dev/shm, a region Triton no longer knows) costs a log line and
the call goes over the wire: never an error to the caller.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from multiprocessing import shared_memory

log = logging.getLogger("vaegan.service")

RETRY_S = 5.0  # after a failed registration, the wire is used this long before trying again
#: A Triton started with --grpc-restricted-protocol=shared-memory:vaegan-admin-key=KEY (the
#: chart starts its Triton so) lets only holders of KEY (un)register regions; over gRPC it
#: reads the key from this name with Triton's prefix.
ADMIN_KEY_NAME = "vaegan-admin-key"
ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_KEY_NAME


@dataclass
class Region:
    name: str  # Triton's name for it, and the POSIX name without its "/"
    memory: shared_memory.SharedMemory
    registered: bool = False
    epoch: int = field(default=0)  # the pool's epoch it was registered in

    @property
    def size(self) -> int:
        return self.memory.size


def is_shm_error(message: str) -> bool:
    """Whether Triton refused a call for its shared memory (an unknown or too small region)
    rather than for its contents."""
    return "shared memory" in message.lower()


class ShmPool:
    """Regions for batches in flight. ``acquire`` gives a registered region of at least the
    bytes asked for, or None (use the wire); ``release`` returns it to the pool."""

    def __init__(self, client, max_regions: int = 8, admin_key: str | None = None):
        self.client, self.max_regions = client, max_regions
        # Triton's --grpc-restricted-protocol=shared-memory:HEADER=KEY guards (un)registering.
        self.headers = {ADMIN_HEADER: admin_key} if admin_key else None
        self._free: list[Region] = []
        self._all: list[Region] = []
        self._ids = itertools.count()
        self._epoch = 0  # bumped when Triton forgot the regions: each registers again
        self._retry_at = 0.0

    async def acquire(self, nbytes: int) -> Region | None:
        if time.monotonic() < self._retry_at:
            return None
        region = self._take(nbytes)
        if region is None:
            return None
        stale = not region.registered or region.epoch != self._epoch
        if stale and not await self._register(region):
            self.release(region)
            return None
        return region

    def release(self, region: Region) -> None:
        self._free.append(region)

    def forget(self) -> None:
        """Triton does not know the regions any more (it restarted): register them again."""
        self._epoch += 1

    def _take(self, nbytes: int) -> Region | None:
        fits = [r for r in self._free if r.size >= nbytes]
        if fits:
            region = min(fits, key=lambda r: r.size)
            self._free.remove(region)
            return region
        if len(self._all) >= self.max_regions:
            return None  # every region is in use or too small: this batch takes the wire
        size = 1 << max(16, (nbytes - 1).bit_length())  # powers of two from 64 KiB: few sizes
        name = f"vaegan-{os.getpid()}-{next(self._ids)}"
        region = Region(name, shared_memory.SharedMemory(name=name, create=True, size=size))
        self._all.append(region)
        return region

    async def _register(self, region: Region) -> bool:
        try:
            if region.registered:  # a stale registration from before a restart, if any
                with contextlib.suppress(Exception):
                    await self.client.unregister_system_shared_memory(
                        region.name, headers=self.headers
                    )
            await self.client.register_system_shared_memory(
                region.name, "/" + region.name, region.size, headers=self.headers
            )
        except Exception as e:
            log.warning(
                "Triton shared memory: registering %s (%d bytes) failed, using the wire for %.0fs: %s",
                region.name,
                region.size,
                RETRY_S,
                str(e)[:300],
            )
            region.registered = False
            self._retry_at = time.monotonic() + RETRY_S
            return False
        region.registered, region.epoch = True, self._epoch
        return True

    async def _destroy(self, region: Region) -> None:
        if region.registered:
            with contextlib.suppress(Exception):
                await self.client.unregister_system_shared_memory(region.name, headers=self.headers)
        region.memory.close()
        with contextlib.suppress(FileNotFoundError):  # removed from /dev/shm behind our back
            region.memory.unlink()

    async def close(self) -> None:
        for region in list(self._all):
            await self._destroy(region)
        self._all.clear()
        self._free.clear()
