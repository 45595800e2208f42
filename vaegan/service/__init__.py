"""The gRPC gateway: transport (grpc.aio server, interceptors) -> servicer (messages <->
arrays) -> latent core (request semantics on arrays, limits) -> batcher -> backend (Triton or
embedded ONNX Runtime) -> model repository."""
