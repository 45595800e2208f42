"""Writing the Triton model repository (its format: ``vaegan.repository``): config.pbtxt
generation, planned versions, atomic writes.

Each export adds version N+1 of each model and points the config's version policy at it
(``specific { versions: [N+1] }``). Older versions stay on disk, so a rollback or a
canary is a change to ``version_policy`` in config.pbtxt (or a config override on
``load_model``), never a file shuffle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from vaegan import interface as api
from vaegan.errors import VaeganError
from vaegan.export.options import BatchingOptions
from vaegan.repository import CONFIG_FILE, FACTS_FILE, read_config, versions_on_disk


@dataclass(frozen=True)
class ModelSpec:
    """One model of the pair, as config.pbtxt describes it."""

    name: str
    role: str  # "encoder" or "decoder"
    image_size: int
    latent_dim: int
    crop: dict[str, Any]
    backend: str
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    execution_env: str | None = None  # python backend: a venv/conda env the stub uses
    intra_op_threads: int = 0  # python backend: ONNX Runtime threads (0 = its default)


def io_tensors(
    spec: ModelSpec,
) -> tuple[list[tuple[str, int, list[int]]], list[tuple[str, int, list[int]]]]:
    """(name, data type, dims without batch) of the inputs and outputs."""
    img = [spec.image_size, spec.image_size, 3]
    if spec.role == "encoder":
        return [(api.ENCODER_INPUT, mc.TYPE_UINT8, img)], [
            (name, mc.TYPE_FP32, [spec.latent_dim]) for name in api.ENCODER_OUTPUTS
        ]
    return [(api.DECODER_INPUT, mc.TYPE_FP32, [spec.latent_dim])], [
        (api.DECODER_OUTPUT, mc.TYPE_UINT8, img)
    ]


def model_config(
    spec: ModelSpec, versions: list[int], version_facts: dict[str, Any]
) -> mc.ModelConfig:
    b = spec.batching
    cfg = mc.ModelConfig(name=spec.name, max_batch_size=b.max_batch_size)
    if spec.backend == "tensorrt":
        cfg.platform = "tensorrt_plan"
    else:
        cfg.backend = spec.backend
    inputs, outputs = io_tensors(spec)
    for name, dtype, dims in inputs:
        cfg.input.add(name=name, data_type=dtype, dims=dims)
    for name, dtype, dims in outputs:
        cfg.output.add(name=name, data_type=dtype, dims=dims)
    cfg.version_policy.specific.versions.extend(versions)
    cfg.dynamic_batching.preferred_batch_size.extend(
        s for s in b.preferred_batch_sizes if s <= b.max_batch_size
    )
    cfg.dynamic_batching.max_queue_delay_microseconds = b.max_queue_delay_us
    kind = b.instance_kind
    if kind == "auto":
        kind = "cpu" if spec.backend == "python" else "gpu"
    cfg.instance_group.add(
        kind=mc.ModelInstanceGroup.KIND_GPU if kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU,
        count=b.instance_count,
    )
    params = {
        api.PARAM_ROLE: spec.role,
        api.PARAM_LATENT_DIM: str(spec.latent_dim),
        api.PARAM_IMAGE_SIZE: str(spec.image_size),
        api.PARAM_CROP: json.dumps(spec.crop, sort_keys=True),
        api.PARAM_VERSION_FACTS: json.dumps(version_facts, sort_keys=True),
    }
    if spec.backend == "python":
        if spec.execution_env:
            params["EXECUTION_ENV_PATH"] = spec.execution_env
        params["intra_op_threads"] = str(spec.intra_op_threads)
    for k, v in params.items():
        cfg.parameters[k].string_value = v
    return cfg


def config_text(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


@dataclass
class PlannedModel:
    """What one export will write for one model; built and validated before any write."""

    spec: ModelSpec
    model_dir: Path
    version: int
    files: dict[str, bytes]  # file name -> content, inside the version folder
    facts: dict[str, Any]
    config: mc.ModelConfig


def plan_model(
    repo: Path, spec: ModelSpec, files: dict[str, bytes], facts: dict[str, Any]
) -> PlannedModel:
    """Check the repository can take a new version of ``spec`` and compute its config."""
    model_dir = repo / spec.name
    existing = read_config(model_dir)
    version_facts: dict[str, Any] = {}
    if existing is not None:
        old_in, old_out = _io_of(existing)
        new_in, new_out = io_tensors(spec)
        if (old_in, old_out) != (new_in, new_out):
            raise VaeganError(
                f"{model_dir} serves another shape (inputs {old_in}, outputs {old_out}); this checkpoint "
                f"needs {new_in} -> {new_out}. Export under another --encoder-name/--decoder-name or "
                "into a new repository"
            )
        raw = existing.parameters.get(api.PARAM_VERSION_FACTS)
        version_facts = json.loads(raw.string_value) if raw is not None and raw.string_value else {}
    version = (max(versions_on_disk(model_dir), default=0)) + 1
    version_facts[str(version)] = facts
    return PlannedModel(
        spec, model_dir, version, files, facts, model_config(spec, [version], version_facts)
    )


def _io_of(
    cfg: mc.ModelConfig,
) -> tuple[list[tuple[str, int, list[int]]], list[tuple[str, int, list[int]]]]:
    return (
        [(t.name, t.data_type, list(t.dims)) for t in cfg.input],
        [(t.name, t.data_type, list(t.dims)) for t in cfg.output],
    )


def check_writable(repo: Path) -> None:
    """Fail before any work if ``repo`` cannot be created or written."""
    try:
        repo.mkdir(parents=True, exist_ok=True)
        probe = tempfile.TemporaryDirectory(prefix=".vaegan-probe-", dir=repo)
        probe.cleanup()
    except OSError as e:
        raise VaeganError(f"cannot write the model repository {repo}: {e.strerror or e}") from None


def write_model(plan: PlannedModel) -> Path:
    """Write the version folder (temp folder + rename), then the config (temp file + rename).

    The version folder appears whole or not at all; the config switches to it in one rename.
    """
    plan.model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".v{plan.version}-", dir=plan.model_dir))
    try:
        for name, data in plan.files.items():
            (tmp / name).write_bytes(data)
        (tmp / FACTS_FILE).write_text(json.dumps(plan.facts, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        os.rename(tmp, plan.model_dir / str(plan.version))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fd, tmp_cfg = tempfile.mkstemp(prefix=".config.", dir=plan.model_dir)
    with os.fdopen(fd, "w") as f:
        f.write(config_text(plan.config))
    os.chmod(tmp_cfg, 0o644)
    os.replace(tmp_cfg, plan.model_dir / CONFIG_FILE)
    return plan.model_dir / str(plan.version)
