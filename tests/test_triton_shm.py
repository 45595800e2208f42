"""--triton-shm: batches through system shared memory to the real local Triton, against a
gateway over loopback; the same answers as the wire, and the wire whenever shared memory
fails (registration refused, Triton restarted)."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from conftest import encode, pattern
from gateway_harness import GatewayThread

from vaegan.client import LatentClient
from vaegan.errors import VaeganError
from vaegan.export.local_triton import LocalTriton
from vaegan.service import shm
from vaegan.service.process import wait_ready
from vaegan.service.settings import Settings

LATENT = 16


@pytest.fixture(scope="module")
def triton(repo):
    with LocalTriton(repo) as t:
        yield t


def _regions(t: LocalTriton) -> dict:
    client = triton_grpc.InferenceServerClient(t.grpc_url)
    try:
        return client.get_system_shared_memory_status(as_json=True).get("regions", {})
    finally:
        client.close()


def _z(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, LATENT)).astype(np.float32)


@contextlib.contextmanager
def _shm_and_wire(triton):
    """Clients of two gateways on one Triton: with --triton-shm, and without."""
    with (
        GatewayThread(Settings(triton_url=triton.grpc_url, triton_shm=True)) as viashm,
        GatewayThread(Settings(triton_url=triton.grpc_url)) as wire,
        LatentClient(viashm.target) as a,
        LatentClient(wire.target) as b,
    ):
        yield a, b


def test_batches_through_shared_memory_answer_exactly_as_over_the_wire(triton):
    images = [encode(pattern(48, 40, seed), "PNG") for seed in range(16)]
    with _shm_and_wire(triton) as (a, b):
        small = _z(2)
        assert np.array_equal(a.generate(small)[0], b.generate(small)[0])
        assert _regions(triton) == {}  # below --triton-shm-min-items: the wire
        z = _z(32)
        assert np.array_equal(a.generate(z)[0], b.generate(z)[0])
        assert np.array_equal(a.encode(images).mu, b.encode(images).mu)
        regions = _regions(triton)
        assert regions and all(name.startswith("vaegan-") for name in regions)
    assert _regions(triton) == {}  # the gateway unregisters its regions when it stops


def test_a_region_triton_cannot_open_falls_back_to_the_wire_with_a_log_line(
    triton, monkeypatch, caplog
):
    real = shm.shared_memory.SharedMemory

    def unreachable(*args, **kw):  # as if Triton ran without the gateway's /dev/shm
        memory = real(*args, **kw)
        memory.unlink()
        return memory

    monkeypatch.setattr(shm.shared_memory, "SharedMemory", unreachable)
    caplog.set_level(logging.WARNING, logger="vaegan.service")
    with _shm_and_wire(triton) as (a, b):
        z = _z(32)
        assert np.array_equal(a.generate(z)[0], b.generate(z)[0])  # answered, over the wire
        assert _regions(triton) == {}
    assert any("using the wire" in r.getMessage() for r in caplog.records)


def test_after_a_triton_restart_the_regions_are_registered_again(repo, caplog):
    caplog.set_level(logging.WARNING, logger="vaegan.service")
    with (
        LocalTriton(repo) as t,
        GatewayThread(Settings(triton_url=t.grpc_url, triton_shm=True)) as gw,
        LatentClient(gw.target) as c,
    ):
        z = _z(32)
        before = c.generate(z)[0]
        assert _regions(t)
        t.stop()
        t.start()  # the same ports; Triton knows no region now
        wait_ready(gw.target)
        assert _regions(t) == {}
        assert np.array_equal(c.generate(z)[0], before)  # refused region: this one by wire
        assert any("Unable to find shared memory region" in r.getMessage() for r in caplog.records)
        assert np.array_equal(c.generate(z)[0], before)  # and the next through shared memory
        assert _regions(t)


def test_a_triton_that_restricts_shared_memory_gets_its_key_or_the_wire(repo, tmp_path, caplog):
    """The chart's Triton guards its shared-memory protocol with a key: a gateway without it
    answers over the wire (and says why); with --triton-admin-key-file it registers."""
    key = "k-" + "7" * 30
    restricted = (f"--grpc-restricted-protocol=shared-memory:{shm.ADMIN_KEY_NAME}={key}",)
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    caplog.set_level(logging.WARNING, logger="vaegan.service")
    with LocalTriton(repo, extra_args=restricted) as t:
        status = triton_grpc.InferenceServerClient(t.grpc_url)

        def regions() -> dict:
            answer = status.get_system_shared_memory_status(
                headers={shm.ADMIN_HEADER: key}, as_json=True
            )
            return answer.get("regions", {})

        z = _z(32)
        keyless = Settings(triton_url=t.grpc_url, triton_shm=True)
        with GatewayThread(keyless) as gw, LatentClient(gw.target) as c:
            wire = c.generate(z)[0]
            assert regions() == {}
        assert any("using the wire" in r.getMessage() for r in caplog.records)
        keyed = Settings(
            triton_url=t.grpc_url, triton_shm=True, triton_admin_key_file=str(key_file)
        )
        with GatewayThread(keyed) as gw, LatentClient(gw.target) as c:
            assert np.array_equal(c.generate(z)[0], wire)
            assert regions()
        assert regions() == {}  # unregistered with the key on the way out
        status.close()


def test_an_admin_key_file_without_triton_shm_or_without_a_key_stops_the_start(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(VaeganError, match="add --triton-shm"):
        Settings(triton_url="x:1", triton_admin_key_file=str(empty)).check()
    with pytest.raises(VaeganError, match="is empty"):
        Settings(
            triton_url="x:1", triton_shm=True, triton_admin_key_file=str(empty)
        ).triton_admin_key()
    with pytest.raises(VaeganError, match="No such file"):
        Settings(triton_shm=True, triton_admin_key_file=str(tmp_path / "none")).triton_admin_key()
