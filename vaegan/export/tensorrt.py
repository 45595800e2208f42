"""ONNX -> TensorRT plan with a batch optimisation profile. Needs an NVIDIA GPU and the
``tensorrt`` package; elsewhere it says so and stops before anything is written."""

from __future__ import annotations

from vaegan.errors import VaeganError
from vaegan.export.options import Profile


def require_tensorrt():
    """The tensorrt module, or a VaeganError naming what is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise VaeganError(
            "--backend tensorrt needs an NVIDIA GPU and the 'tensorrt' Python package "
            "(pip install tensorrt); build plans on the GPU machine that will serve them, "
            "or export --backend onnxruntime"
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise VaeganError("--backend tensorrt needs a CUDA GPU on this machine; none is visible")
    return trt


def build_plan(
    onnx_bytes: bytes, input_name: str, input_dims: list[int], profile: Profile, fp16: bool
) -> bytes:
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise VaeganError(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    opt = builder.create_optimization_profile()
    opt.set_shape(
        input_name,
        (profile.min_batch, *input_dims),
        (profile.opt_batch, *input_dims),
        (profile.max_batch, *input_dims),
    )
    config.add_optimization_profile(opt)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise VaeganError("TensorRT failed to build the engine (see its log above)")
    return bytes(plan)
