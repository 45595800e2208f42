"""The Triton model repository's format, read and written here by every part: export
writes versions (``vaegan.export.writer``), the gateway and the offline latent tools read
them.

Layout::

    REPO/<model>/config.pbtxt              Triton's config; vaegan's facts in its parameters
    REPO/<model>/<version>/model.onnx      (or model.plan, model.py) and facts.json
    REPO/vaegan_decoder/<version>/directions.json, prior.json

``directions.json`` and ``prior.json`` are latent facts of one version. Each names the exact
encoder and decoder graphs (their ONNX digests) it was computed with, so a file copied to
another version, or left behind by a re-export, is refused instead of silently steering a
different latent space.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from vaegan import interface as api
from vaegan.errors import FailedPrecondition, NotFound, Unavailable, VaeganError
from vaegan.latent import Direction
from vaegan.preprocess import CropPolicy
from vaegan.prior import GaussianMixture

CONFIG_FILE = "config.pbtxt"
FACTS_FILE = "facts.json"
MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.py"}


def read_config(model_dir: Path) -> mc.ModelConfig | None:
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except text_format.ParseError as e:
        raise VaeganError(f"{path} is not a valid Triton model config: {e}") from None


def latent_dim(repository: str | Path, model: str = api.DECODER_MODEL) -> int:
    """The latent size a model of the repository was exported with (its config's facts)."""
    cfg = read_config(Path(repository) / model)
    if cfg is None:
        raise VaeganError(f"no model {model} in {repository}")
    return int(cfg.parameters[api.PARAM_LATENT_DIM].string_value)


def versions_on_disk(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


@dataclass(frozen=True)
class ModelMeta:
    name: str
    version: str
    latent_dim: int
    image_size: int
    crop: CropPolicy
    facts: dict[str, Any] = field(default_factory=dict)


def meta_from_parameters(name: str, version: str, params: dict[str, str]) -> ModelMeta:
    try:
        facts = json.loads(params.get(api.PARAM_VERSION_FACTS, "{}")).get(version, {})
        return ModelMeta(
            name=name,
            version=version,
            latent_dim=int(params[api.PARAM_LATENT_DIM]),
            image_size=int(params[api.PARAM_IMAGE_SIZE]),
            crop=CropPolicy.from_dict(json.loads(params[api.PARAM_CROP])),
            facts=facts,
        )
    except (KeyError, ValueError) as e:
        raise Unavailable(
            f"model {name} has no vaegan facts in its config ({e}); export it with vaegan export"
        ) from None


DIRECTIONS_FILE = "directions.json"
PRIOR_FILE = "prior.json"


def resolve_version(repo: Path, version: str = "") -> str:
    found = versions_on_disk(Path(repo) / api.DECODER_MODEL)
    if not found:
        raise NotFound(f"{repo} has no exported {api.DECODER_MODEL} version")
    if not version:
        return str(found[-1])
    if int(version) not in found:
        raise NotFound(f"{repo}: no model version {version} (have {', '.join(map(str, found))})")
    return version


def directions_path(repo: str | Path, version: str) -> Path:
    return Path(repo) / api.DECODER_MODEL / version / DIRECTIONS_FILE


def model_identity(version: str, encoder_sha256: str, decoder_sha256: str) -> dict[str, str]:
    """What makes a model version itself: its graphs' digests."""
    return {
        "model_version": version,
        f"{api.ENCODER_MODEL}_onnx_sha256": encoder_sha256,
        f"{api.DECODER_MODEL}_onnx_sha256": decoder_sha256,
    }


def identity(repo: Path, version: str) -> dict[str, str]:
    """The identity of a version on disk, from its models' facts.json."""
    digests = []
    for model in (api.ENCODER_MODEL, api.DECODER_MODEL):
        facts_path = Path(repo) / model / version / FACTS_FILE
        try:
            facts = json.loads(facts_path.read_text())
        except (OSError, ValueError):
            raise NotFound(
                f"{model}/{version}/{FACTS_FILE} is missing or unreadable; export this version again"
            ) from None
        digests.append(facts.get("onnx_sha256", ""))
    return model_identity(version, *digests)


def _read_bound(repo: Path, version: str, file: Path, remedy: str) -> dict | None:
    """A version's file as JSON (None when absent), refused when it names other graphs."""
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except ValueError as e:
        raise FailedPrecondition(
            f"{file.name} of version {version} is not valid JSON (line {getattr(e, 'lineno', '?')}); {remedy}"
        ) from None
    expected = identity(repo, version)
    if data.get("model") != expected:
        raise FailedPrecondition(
            f"{file.name} of version {version} was written for other graphs than this "
            f"version's (its digests differ); {remedy}"
        )
    return data


def load_directions(repo: str | Path, version: str) -> dict[str, Direction]:
    """The directions of one version ({} when it has none); refuses another version's file."""
    remedy = "recompute the directions with 'vaegan attributes add'"
    data = _read_bound(Path(repo), version, directions_path(repo, version), remedy)
    if data is None:
        return {}
    try:
        return {name: Direction.from_dict(d) for name, d in data["directions"].items()}
    except (VaeganError, KeyError, TypeError, AttributeError) as e:
        # A file a person edited, or one written before names were checked: the server's
        # problem, not the caller's, and its content is never echoed beyond the bad name.
        raise FailedPrecondition(f"{DIRECTIONS_FILE} of version {version}: {e}; {remedy}") from None


def prior_path(repo: str | Path, version: str) -> Path:
    return Path(repo) / api.DECODER_MODEL / version / PRIOR_FILE


def load_prior(repo: str | Path, version: str) -> GaussianMixture | None:
    """The fitted prior of one version (None when it has none); refuses another's file."""
    file = prior_path(repo, version)
    data = _read_bound(Path(repo), version, file, "export the checkpoint again with --data")
    if data is None:
        return None
    try:
        return GaussianMixture.from_dict(data["prior"])
    except (KeyError, VaeganError) as e:
        raise FailedPrecondition(f"{file.name} of version {version}: {e}") from None


def prior_bytes(model: dict[str, str], mixture: GaussianMixture) -> bytes:
    return (json.dumps({"model": model, "prior": mixture.to_dict()}) + "\n").encode()


def directions_bytes(model: dict[str, str], directions: dict[str, Direction]) -> bytes:
    """The file's content for the model ``identity`` (so export can write it with the version)."""
    data = {"model": model, "directions": {n: d.to_dict() for n, d in sorted(directions.items())}}
    return (json.dumps(data, indent=1) + "\n").encode()


def save_directions(repo: str | Path, version: str, directions: dict[str, Direction]) -> Path:
    """Write the version's directions atomically (readers see the old or the new file)."""
    return _write(
        directions_path(repo, version), directions_bytes(identity(Path(repo), version), directions)
    )


def save_prior(repo: str | Path, version: str, mixture: GaussianMixture) -> Path:
    return _write(prior_path(repo, version), prior_bytes(identity(Path(repo), version), mixture))


def _write(file: Path, content: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.stem}-")
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    os.replace(tmp, file)
    return file
