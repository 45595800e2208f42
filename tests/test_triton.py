"""The exported repository on the real Triton server (tritonserver 2.51 from nvidia-pytriton),
called over KServe v2 gRPC on loopback with tritonclient."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from vaegan.errors import VaeganError
from vaegan.export.export import export
from vaegan.export.local_triton import LocalTriton, shm_regions
from vaegan.export.options import ExportOptions
from vaegan.host import descendants, free_port
from vaegan.service.process import gateway_process
from vaegan.training.checkpoint import load_model
from vaegan.training.model import from_pixels, to_pixels

pytestmark = pytest.mark.integration
TRITON_ENV = sys.prefix + "-triton"  # make install builds it: the python backend needs numpy<2
OPTS = ExportOptions(backend="python", execution_env=TRITON_ENV)


def _infer(client, model, name, array, dtype, outputs, version=""):
    inp = grpcclient.InferInput(name, list(array.shape), dtype)
    inp.set_data_from_numpy(array)
    result = client.infer(model, [inp], model_version=version)
    return [result.as_numpy(o) for o in outputs], result.get_response().model_version


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    export(tiny_checkpoint, repo, OPTS, log=lambda *_: None)
    with LocalTriton(repo) as server:
        yield server, grpcclient.InferenceServerClient(server.grpc_url)


@pytest.mark.parametrize("batch", [1, 17])
def test_triton_answers_both_models_as_pytorch_does(served, tiny_checkpoint, batch):
    _, client = served
    model, _ = load_model(tiny_checkpoint)
    z = torch.randn(batch, 16, generator=torch.Generator().manual_seed(batch))
    (pixels,), version = _infer(client, "vaegan_decoder", "z", z.numpy(), "FP32", ["image"])
    with torch.no_grad():
        ref = to_pixels(model.decode(z)).numpy()
    assert version == "1" and pixels.dtype == np.uint8 and pixels.shape == (batch, 32, 32, 3)
    assert np.abs(pixels.astype(int) - ref.astype(int)).max() <= 1
    (mu, logvar), _ = _infer(client, "vaegan_encoder", "image", ref, "UINT8", ["mu", "logvar"])
    with torch.no_grad():
        ref_mu, ref_logvar = (t.numpy() for t in model.encode(from_pixels(torch.from_numpy(ref))))
    assert mu.shape == logvar.shape == (batch, 16)
    assert np.abs(mu - ref_mu).max() < 1e-4 and np.abs(logvar - ref_logvar).max() < 1e-4


def test_triton_reports_the_model_facts_in_its_config(served):
    _, client = served
    cfg = client.get_model_config("vaegan_decoder", as_json=True)["config"]
    params = {k: v["string_value"] for k, v in cfg["parameters"].items()}
    assert params["vaegan.latent_dim"] == "16" and params["vaegan.role"] == "decoder"
    assert json.loads(params["vaegan.version_facts"])["1"]["checkpoint_step"] == 6
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [16, 32, 64]


def test_wrong_shaped_input_is_an_error_and_triton_keeps_serving(served):
    _, client = served
    with pytest.raises(InferenceServerException) as e:
        _infer(client, "vaegan_decoder", "z", np.zeros((2, 15), np.float32), "FP32", ["image"])
    assert "15" in str(e.value)
    (pixels,), _ = _infer(
        client, "vaegan_decoder", "z", np.zeros((2, 16), np.float32), "FP32", ["image"]
    )
    assert pixels.shape == (2, 32, 32, 3)


def test_version_two_is_served_while_version_one_stays_loadable(tiny_checkpoint, tmp_path):
    repo = tmp_path / "repo"
    export(tiny_checkpoint, repo, OPTS, log=lambda *_: None)
    export(tiny_checkpoint, repo, OPTS, log=lambda *_: None)
    with LocalTriton(repo, model_control="explicit", load_models=("vaegan_decoder",)) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.is_model_ready("vaegan_decoder", "2")
        assert not client.is_model_ready("vaegan_decoder", "1")
        z = np.zeros((1, 16), np.float32)
        assert _infer(client, "vaegan_decoder", "z", z, "FP32", ["image"])[1] == "2"
        # Rollback is a config change: the same files, a version policy naming version 1.
        cfg = client.get_model_config("vaegan_decoder", as_json=True)["config"]
        cfg["version_policy"] = {"specific": {"versions": [1]}}
        client.load_model("vaegan_decoder", config=json.dumps(cfg))
        assert client.is_model_ready("vaegan_decoder", "1")
        assert not client.is_model_ready("vaegan_decoder", "2")
        assert _infer(client, "vaegan_decoder", "z", z, "FP32", ["image"])[1] == "1"


def test_a_broken_repository_fails_with_tritons_own_error_and_no_process_left(tmp_path):
    bad = tmp_path / "repo" / "broken"
    (bad / "1").mkdir(parents=True)
    (bad / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 4\ninput [{ name: "x" }]\n'
    )
    server = LocalTriton(tmp_path / "repo")
    shm_before = shm_regions()
    with pytest.raises(VaeganError, match=r"could not load the models: .*model\.py"):
        server.start(timeout=60)  # Triton itself would wait forever on this model
    assert server.process is None
    # nor shared memory: its stub's region went with it
    assert shm_regions() <= shm_before
    log = Path(server.log_path).read_text()
    assert "broken" in log


def test_server_is_stopped_by_pid_when_the_block_fails(tiny_checkpoint, tmp_path):
    repo = tmp_path / "repo"
    export(tiny_checkpoint, repo, OPTS, log=lambda *_: None)
    server = LocalTriton(repo)
    with pytest.raises(RuntimeError, match="test failure"), server:
        pid = server.process.pid
        raise RuntimeError("test failure")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _allowed_cpus(status_path: Path) -> set[int]:
    text = status_path.read_text().split("Cpus_allowed_list:")[1].split()[0]
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_the_python_backend_keeps_onnx_runtime_on_the_cpus_triton_was_given(served, tmp_path):
    """ONNX Runtime's default thread pool pins a worker to every core of the machine, even
    cores the process was not given; the model must ask for an explicit count instead."""
    server, _ = served
    one = {min(os.sched_getaffinity(0))}  # set before exec, as taskset or a cpuset would
    pinned = LocalTriton(server.repository, log_path=tmp_path / "triton.log", cpus=one).start()
    try:
        client = grpcclient.InferenceServerClient(pinned.grpc_url)
        _infer(client, "vaegan_decoder", "z", np.zeros((4, 16), np.float32), "FP32", ["image"])
        tree = descendants(pinned.process.pid)
        assert len(tree) > 1, "the python backend's stub processes were not found"
        threads = [task for pid in tree for task in Path(f"/proc/{pid}/task").glob("*/status")]
        escaped = {t.parent.name: _allowed_cpus(t) for t in threads if _allowed_cpus(t) - one}
        assert not escaped, f"threads allowed outside CPU {one}: {escaped}"
    finally:
        pinned.stop()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_the_gateway_process_runs_in_its_own_session_on_the_cpus_it_was_given(served):
    """Each server process is its own scheduling group (Linux autogroups go by session), as
    separate containers are. In the load generator's session, a gateway saturated by a
    refusal storm took all of the core it shared with Triton: Triton got no CPU for seconds
    and aborted when its python backend called its stub dead."""
    server, _ = served
    one = {min(os.sched_getaffinity(0))}
    with gateway_process(server.grpc_url, cpus=one) as gw:
        assert os.getsid(gw.process.pid) == gw.process.pid != os.getsid(0)
        assert os.sched_getaffinity(gw.process.pid) == one


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_vaegan_triton_stopped_while_the_models_load_leaves_no_process_behind(served, tmp_path):
    import subprocess
    import time

    server, _ = served
    cmd = [sys.executable, "-m", "vaegan.cli", "triton", "--repository", str(server.repository)]
    cmd += ["--log", str(tmp_path / "triton.log")]
    for flag in ("--grpc-port", "--http-port", "--metrics-port"):
        cmd += [flag, str(free_port())]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[int] = set()
    try:
        # vaegan -> tritonserver -> a python stub: stop it the moment a stub exists.
        end = time.monotonic() + 60
        while time.monotonic() < end and proc.poll() is None:
            tree = descendants(proc.pid)
            seen.update(tree)
            if len(tree) >= 3:
                break
            time.sleep(0.02)
        assert len(seen) >= 3, "no python stub started"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Triton ready" not in out  # it was stopped while loading
    time.sleep(1.0)  # a stub that outlived Triton would still be here
    assert not [pid for pid in seen if _alive(pid)]


def test_a_killed_triton_leaves_no_shared_memory_behind(served, tmp_path):
    """Killed, Triton cannot remove its python stubs' regions from /dev/shm; stop() does,
    once no process maps them (tests and crashes would otherwise fill a container's shm)."""
    server, _ = served
    killed = LocalTriton(server.repository, log_path=tmp_path / "triton.log").start()
    regions = set(killed.shared_memory)
    assert regions and regions <= shm_regions()
    os.killpg(killed.process.pid, signal.SIGKILL)
    killed.process.wait()
    killed.stop()
    assert not regions & shm_regions()
