"""What ``vaegan export`` can be asked to do: plain dataclasses, torch-free, so the command
line builds its flags from them (``vaegan.flags``) without importing the exporter.

Each field's metadata carries its help text, and ``flag`` where the flag's name is not
the field's (kept from earlier releases)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vaegan import interface as api
from vaegan.errors import VaeganError
from vaegan.prior import DEFAULT_COMPONENTS

BACKENDS = ("onnxruntime", "tensorrt", "python")


def _f(default, help: str, **meta):
    if callable(default):
        return field(default_factory=default, metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class BatchingOptions:
    """Triton's batching and instances for both models (config.pbtxt)."""

    max_batch_size: int = _f(64, "Triton max_batch_size")
    preferred_batch_sizes: tuple[int, ...] = _f(
        (16, 32, 64), "dynamic batcher's preferred sizes", flag="--preferred-batch-size"
    )
    max_queue_delay_us: int = _f(
        2000, "how long the dynamic batcher waits to fill a batch, in microseconds"
    )
    instance_kind: str = _f(
        "auto",
        "instance_group kind; auto: GPU for onnxruntime/tensorrt, CPU for python",
        choices=("auto", "gpu", "cpu"),
    )
    instance_count: int = _f(1, "instances per model", flag="--instances")


@dataclass(frozen=True)
class Profile:
    """The TensorRT optimisation profile's batch sizes."""

    min_batch: int = _f(1, "TensorRT profile minimum batch", flag="--trt-min-batch")
    opt_batch: int = _f(16, "TensorRT profile optimal batch", flag="--trt-opt-batch")
    max_batch: int = _f(64, "TensorRT profile maximum batch", flag="--trt-max-batch")

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise VaeganError(f"TensorRT profile needs 1 <= min <= opt <= max, got {self}")


@dataclass(frozen=True)
class ExportOptions:
    backend: str = _f(
        "onnxruntime",
        "onnxruntime: Triton's ONNX Runtime backend (GPU instances); tensorrt: plan files "
        "built here (needs a GPU and the tensorrt package); python: model.py running the same "
        "ONNX file, for CPU Tritons without onnxruntime, like the local one",
        choices=BACKENDS,
    )
    fp16: bool = _f(False, "half-precision networks (checked with a looser tolerance)")
    encoder_name: str = _f(api.ENCODER_MODEL, "encoder model name")
    decoder_name: str = _f(api.DECODER_MODEL, "decoder model name")
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    trt_profile: Profile = field(default_factory=Profile)
    execution_env: str | None = _f(
        None,
        "python backend: the environment model.py runs in (needs onnxruntime and numpy<2); "
        "unset: $VAEGAN_TRITON_ENV, else .venv-triton beside this venv; '' leaves it to the "
        "server",
        metavar="PATH",
    )
    intra_op_threads: int = _f(
        0, "python backend: ONNX Runtime threads per instance (0 = its own choice)"
    )
    data: str | None = _f(
        None,
        "the prepared training set: store the principal directions (pc1..pcK) of its "
        "encodings with the version, as sliders that need no labelled images, and fit the "
        "latent prior to its codes",
        metavar="DATA_DIR",
    )
    principal_directions: int = _f(8, "how many principal directions with --data", metavar="K")
    prior_components: int = _f(
        DEFAULT_COMPONENTS,
        "Gaussians in the latent prior fitted with --data, served as Generate's PRIOR_FITTED "
        "(0 = none; more keep its draws nearer the training images: vaegan evaluate's "
        "nearest-training-code ratio says how near)",
        metavar="K",
    )
    pca_images: int = _f(
        4096, "at most this many training images (sampled) for the directions and the prior"
    )
