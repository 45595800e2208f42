"""A real Triton server on this machine: the ``tritonserver`` binary that ships inside the
``nvidia-pytriton`` wheel, with its python backend. Used by ``vaegan triton``, the demo
and the integration tests (started on free ports, stopped by pid even when a test fails).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vaegan.errors import VaeganError
from vaegan.host import free_port, group_members, pinned


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    lib_dir: Path
    backend_dir: Path  # a folder with python/ holding the backend and the stub for this Python


def find_triton() -> TritonInstall:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise VaeganError(
            "no local Triton: install nvidia-pytriton (make install does: "
            "pip install --no-deps nvidia-pytriton==0.7.0) or point the gateway at a running Triton"
        )
    pkg = Path(spec.origin).parent
    server = pkg / "tritonserver"
    binary, lib_dir = server / "bin" / "tritonserver", pkg.parent / "nvidia_pytriton.libs"
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / py / "triton_python_backend_stub"
    for path in (binary, lib_dir, stub):
        if not path.exists():
            raise VaeganError(f"the nvidia-pytriton install is incomplete: {path} is missing")
    # Triton looks for the stub beside libtriton_python.so: build that folder once per
    # environment, with the stub matching the running Python.
    backend_dir = Path(sys.prefix) / "share" / "vaegan" / f"triton-backends-py{py}"
    target = backend_dir / "python"
    if not (target / "triton_python_backend_stub").exists():
        tmp = Path(
            tempfile.mkdtemp(
                prefix=".backends-", dir=backend_dir.parent if backend_dir.parent.exists() else None
            )
        )
        shutil.copytree(
            server / "backends" / "python",
            tmp / "python",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        backend_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(backend_dir, ignore_errors=True)
        os.rename(tmp, backend_dir)
    return TritonInstall(binary, lib_dir, backend_dir)


_FAILURE_MARKS = ("failed to load", "Failed to", "error: creating server", "Invalid argument")


_SHM = Path("/dev/shm")
_SHM_PREFIX = "triton_python_backend_shm_region_"


def shm_regions() -> set[str]:
    """The python backend's shared-memory regions on this machine (one per stub)."""
    return {p.name for p in _SHM.glob(_SHM_PREFIX + "*")} if _SHM.is_dir() else set()


def _mapped(names: set[str]) -> set[str]:
    """Those of ``names`` that some living process still has mapped."""
    found: set[str] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            maps = Path(f"/proc/{entry}/maps").read_text()
        except OSError:  # gone, or not ours to read
            continue
        found |= {n for n in names if n in maps}
    return found


def _harmless(line: str) -> bool:
    # Printed at every start on a machine without CUDA; it does not stop CPU serving.
    return "CudaDriverHelper has not been initialized" in line


class LocalTriton:
    """``with LocalTriton(repo) as t:`` starts tritonserver and waits until it is ready."""

    def __init__(
        self,
        repository: str | Path,
        *,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        model_control: str = "none",  # "none": load all; "explicit": load what load_models names
        load_models: tuple[str, ...] = (),
        log_path: str | Path | None = None,
        extra_args: tuple[str, ...] = (),
        cpus: set[int] | None = None,  # run on these CPUs only (benchmarks keep it apart)
    ):
        self.repository = Path(repository).resolve()
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.model_control, self.load_models = model_control, load_models
        self.log_path = (
            Path(log_path)
            if log_path
            else Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        )
        self.extra_args = extra_args
        self.cpus = cpus
        self.process: subprocess.Popen | None = None
        self.shared_memory: set[str] = set()  # the regions its python stubs created

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self, install: TritonInstall) -> list[str]:
        cmd = [
            str(install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={install.backend_dir}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            f"--model-control-mode={self.model_control}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--pinned-memory-pool-byte-size=0",  # CPU machine: no CUDA host memory
            "--cuda-memory-pool-byte-size=0:0",
            "--log-verbose=0",
        ]
        cmd += [f"--load-model={m}" for m in self.load_models]
        return cmd + list(self.extra_args)

    def start(self, timeout: float = 120.0) -> LocalTriton:
        if not self.repository.is_dir():
            raise VaeganError(f"model repository {self.repository} does not exist")
        install = find_triton()
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(install.lib_dir), env.get("LD_LIBRARY_PATH")) if p
        )
        before = shm_regions()
        log = open(self.log_path, "wb")  # noqa: SIM115 (the child writes to it until stop())
        with pinned(self.cpus):
            self.process = subprocess.Popen(
                self.command(install),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        log.close()
        try:
            self.wait_ready(timeout)
        except BaseException:  # interrupted while the models load: stop what was started
            self.stop()
            raise
        finally:  # the stubs create their regions while the models load
            self.shared_memory = shm_regions() - before
            if self.process is None:  # wait_ready gave up and stopped it
                self._remove_shared_memory()
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until /v2/health/ready answers 200. A model that fails to load does not always
        make tritonserver exit (a python stub that cannot start leaves it waiting), so
        its log is watched too and the first load failure ends the wait at once."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise VaeganError(f"tritonserver exited with code {code}: {self.errors()}")
            if self._failures():
                self.stop()
                raise VaeganError(f"tritonserver could not load the models: {self.errors()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise VaeganError(f"tritonserver was not ready after {timeout:.0f}s: {self.errors()}")

    def _log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def _failures(self) -> list[str]:
        return [
            ln
            for ln in self._log_lines()
            if any(m in ln for m in _FAILURE_MARKS) and not _harmless(ln)
        ]

    def errors(self) -> str:
        """Triton's own error lines from its log, or the log's tail."""
        lines = self._log_lines()
        errs = [
            ln
            for ln in lines
            if (ln.startswith("E") or any(m in ln for m in _FAILURE_MARKS)) and not _harmless(ln)
        ]
        return " | ".join(ln.strip() for ln in (errs or lines)[-5:]) or "(empty log)"

    def stop(self, grace: float = 10.0) -> None:
        p, self.process = self.process, None
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)  # its own session: the python stubs go too
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if p is not None:
            _kill_group(p.pid)
        self._remove_shared_memory()

    def _remove_shared_memory(self, wait: float = 2.0) -> None:
        """A Triton that crashed or was killed leaves its stubs' regions (1 MiB each by
        default) in /dev/shm, which is small in containers: remove those no process maps
        any more, once its stubs, which exit on their own, are gone."""
        left = {n for n in self.shared_memory if (_SHM / n).exists()}
        end = time.monotonic() + wait
        while left and _mapped(left) and time.monotonic() < end:
            time.sleep(0.1)
            left = {n for n in left if (_SHM / n).exists()}
        for name in left - _mapped(left):
            (_SHM / name).unlink(missing_ok=True)
        self.shared_memory = set()

    def __enter__(self) -> LocalTriton:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill_group(pgid: int, wait: float = 5.0) -> None:
    """Kill what is left of Triton's process group once Triton itself is gone: a python stub
    starting while Triton was told to stop can miss its parent's end and stay alive."""
    end = time.monotonic() + wait
    while group_members(pgid) and time.monotonic() < end:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.05)
