"""The gRPC gateway: transport (grpc.aio server, interceptor) -> thin servicer (messages <->
arrays) -> batcher -> backend (Triton or embedded ONNX Runtime) -> model repository."""
