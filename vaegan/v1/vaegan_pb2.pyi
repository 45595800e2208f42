from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_RAW: _ClassVar[ImageFormat]

class Prior(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIOR_UNSPECIFIED: _ClassVar[Prior]
    PRIOR_STANDARD: _ClassVar[Prior]
    PRIOR_FITTED: _ClassVar[Prior]

class InterpolationMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERPOLATION_METHOD_UNSPECIFIED: _ClassVar[InterpolationMethod]
    INTERPOLATION_METHOD_LINEAR: _ClassVar[InterpolationMethod]
    INTERPOLATION_METHOD_SPHERICAL: _ClassVar[InterpolationMethod]
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_RAW: ImageFormat
PRIOR_UNSPECIFIED: Prior
PRIOR_STANDARD: Prior
PRIOR_FITTED: Prior
INTERPOLATION_METHOD_UNSPECIFIED: InterpolationMethod
INTERPOLATION_METHOD_LINEAR: InterpolationMethod
INTERPOLATION_METHOD_SPHERICAL: InterpolationMethod

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("format", "jpeg_quality")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    format: ImageFormat
    jpeg_quality: int
    def __init__(self, format: _Optional[_Union[ImageFormat, str]] = ..., jpeg_quality: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("data", "format", "width", "height")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    format: ImageFormat
    width: int
    height: int
    def __init__(self, data: _Optional[bytes] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("count", "seed", "temperature", "prior", "refine_steps")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    PRIOR_FIELD_NUMBER: _ClassVar[int]
    REFINE_STEPS_FIELD_NUMBER: _ClassVar[int]
    count: int
    seed: int
    temperature: float
    prior: Prior
    refine_steps: int
    def __init__(self, count: _Optional[int] = ..., seed: _Optional[int] = ..., temperature: _Optional[float] = ..., prior: _Optional[_Union[Prior, str]] = ..., refine_steps: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("embeddings", "sample", "output", "model_version")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    embeddings: EmbeddingList
    sample: Sample
    output: OutputOptions
    model_version: str
    def __init__(self, embeddings: _Optional[_Union[EmbeddingList, _Mapping]] = ..., sample: _Optional[_Union[Sample, _Mapping]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class EmbeddingList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Embedding]
    def __init__(self, items: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("images", "embeddings", "decoder_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DECODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    decoder_version: str
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., decoder_version: _Optional[str] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("index", "response", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    response: GenerateResponse
    error: StreamError
    def __init__(self, index: _Optional[int] = ..., response: _Optional[_Union[GenerateResponse, _Mapping]] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ...) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("images", "sample", "seed", "reconstruction_error", "model_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    sample: bool
    seed: int
    reconstruction_error: bool
    model_version: str
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., sample: _Optional[bool] = ..., seed: _Optional[int] = ..., reconstruction_error: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class Encoding(_message.Message):
    __slots__ = ("mu", "logvar", "z", "reconstruction_mse")
    MU_FIELD_NUMBER: _ClassVar[int]
    LOGVAR_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_MSE_FIELD_NUMBER: _ClassVar[int]
    mu: Embedding
    logvar: Embedding
    z: Embedding
    reconstruction_mse: float
    def __init__(self, mu: _Optional[_Union[Embedding, _Mapping]] = ..., logvar: _Optional[_Union[Embedding, _Mapping]] = ..., z: _Optional[_Union[Embedding, _Mapping]] = ..., reconstruction_mse: _Optional[float] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("encodings", "encoder_version", "decoder_version")
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    encodings: _containers.RepeatedCompositeFieldContainer[Encoding]
    encoder_version: str
    decoder_version: str
    def __init__(self, encodings: _Optional[_Iterable[_Union[Encoding, _Mapping]]] = ..., encoder_version: _Optional[str] = ..., decoder_version: _Optional[str] = ...) -> None: ...

class Keyframe(_message.Message):
    __slots__ = ("embedding", "image")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    embedding: Embedding
    image: bytes
    def __init__(self, embedding: _Optional[_Union[Embedding, _Mapping]] = ..., image: _Optional[bytes] = ...) -> None: ...

class InterpolateRequest(_message.Message):
    __slots__ = ("keyframes", "steps", "method", "output", "model_version")
    KEYFRAMES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    keyframes: _containers.RepeatedCompositeFieldContainer[Keyframe]
    steps: int
    method: InterpolationMethod
    output: OutputOptions
    model_version: str
    def __init__(self, keyframes: _Optional[_Iterable[_Union[Keyframe, _Mapping]]] = ..., steps: _Optional[int] = ..., method: _Optional[_Union[InterpolationMethod, str]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class InterpolateResponse(_message.Message):
    __slots__ = ("images", "embeddings", "encoder_version", "decoder_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    encoder_version: str
    decoder_version: str
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., encoder_version: _Optional[str] = ..., decoder_version: _Optional[str] = ...) -> None: ...

class InterpolateFrame(_message.Message):
    __slots__ = ("index", "total", "image", "embedding", "encoder_version", "decoder_version")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    index: int
    total: int
    image: Image
    embedding: Embedding
    encoder_version: str
    decoder_version: str
    def __init__(self, index: _Optional[int] = ..., total: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., encoder_version: _Optional[str] = ..., decoder_version: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersionInfo(_message.Message):
    __slots__ = ("name", "version", "facts")
    class FactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    facts: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., facts: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_items", "max_image_bytes", "max_image_pixels", "max_steps", "max_frames", "max_message_bytes", "max_request_pixels", "max_stream_pending", "max_stream_message_bytes")
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_PENDING_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_items: int
    max_image_bytes: int
    max_image_pixels: int
    max_steps: int
    max_frames: int
    max_message_bytes: int
    max_request_pixels: int
    max_stream_pending: int
    max_stream_message_bytes: int
    def __init__(self, max_items: _Optional[int] = ..., max_image_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_steps: _Optional[int] = ..., max_frames: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_request_pixels: _Optional[int] = ..., max_stream_pending: _Optional[int] = ..., max_stream_message_bytes: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("latent_dim", "image_size", "crop_mode", "crop_fraction", "encoder", "decoder", "backend", "limits", "fitted_prior")
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CROP_MODE_FIELD_NUMBER: _ClassVar[int]
    CROP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    DECODER_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    FITTED_PRIOR_FIELD_NUMBER: _ClassVar[int]
    latent_dim: int
    image_size: int
    crop_mode: str
    crop_fraction: float
    encoder: ModelVersionInfo
    decoder: ModelVersionInfo
    backend: str
    limits: Limits
    fitted_prior: bool
    def __init__(self, latent_dim: _Optional[int] = ..., image_size: _Optional[int] = ..., crop_mode: _Optional[str] = ..., crop_fraction: _Optional[float] = ..., encoder: _Optional[_Union[ModelVersionInfo, _Mapping]] = ..., decoder: _Optional[_Union[ModelVersionInfo, _Mapping]] = ..., backend: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., fitted_prior: _Optional[bool] = ...) -> None: ...

class ListAttributesRequest(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    def __init__(self, model_version: _Optional[str] = ...) -> None: ...

class Attribute(_message.Message):
    __slots__ = ("name", "kind", "scale", "counts", "auc", "explained_variance")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    AUC_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    scale: float
    counts: _containers.ScalarMap[str, int]
    auc: float
    explained_variance: float
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., scale: _Optional[float] = ..., counts: _Optional[_Mapping[str, int]] = ..., auc: _Optional[float] = ..., explained_variance: _Optional[float] = ...) -> None: ...

class ListAttributesResponse(_message.Message):
    __slots__ = ("attributes", "decoder_version")
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    DECODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    attributes: _containers.RepeatedCompositeFieldContainer[Attribute]
    decoder_version: str
    def __init__(self, attributes: _Optional[_Iterable[_Union[Attribute, _Mapping]]] = ..., decoder_version: _Optional[str] = ...) -> None: ...

class Sweep(_message.Message):
    __slots__ = ("name", "low", "high", "steps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    low: float
    high: float
    steps: int
    def __init__(self, name: _Optional[str] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., steps: _Optional[int] = ...) -> None: ...

class EditRequest(_message.Message):
    __slots__ = ("source", "weights", "sweep", "output", "model_version")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SWEEP_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    source: Keyframe
    weights: _containers.ScalarMap[str, float]
    sweep: Sweep
    output: OutputOptions
    model_version: str
    def __init__(self, source: _Optional[_Union[Keyframe, _Mapping]] = ..., weights: _Optional[_Mapping[str, float]] = ..., sweep: _Optional[_Union[Sweep, _Mapping]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class EditResponse(_message.Message):
    __slots__ = ("images", "embeddings", "sweep_weights", "encoder_version", "decoder_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    SWEEP_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    sweep_weights: _containers.RepeatedScalarFieldContainer[float]
    encoder_version: str
    decoder_version: str
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., sweep_weights: _Optional[_Iterable[float]] = ..., encoder_version: _Optional[str] = ..., decoder_version: _Optional[str] = ...) -> None: ...

class Term(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Keyframe]
    def __init__(self, items: _Optional[_Iterable[_Union[Keyframe, _Mapping]]] = ...) -> None: ...

class AnalogyRequest(_message.Message):
    __slots__ = ("a", "b", "c", "output", "model_version")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    C_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    a: Term
    b: Term
    c: Term
    output: OutputOptions
    model_version: str
    def __init__(self, a: _Optional[_Union[Term, _Mapping]] = ..., b: _Optional[_Union[Term, _Mapping]] = ..., c: _Optional[_Union[Term, _Mapping]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class AnalogyResponse(_message.Message):
    __slots__ = ("image", "embedding", "encoder_version", "decoder_version")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    image: Image
    embedding: Embedding
    encoder_version: str
    decoder_version: str
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., encoder_version: _Optional[str] = ..., decoder_version: _Optional[str] = ...) -> None: ...
