"""Export and evaluation: a training checkpoint -> ONNX (and TensorRT) graphs -> a version in a
Triton model repository (format: ``vaegan.repository``), the local Triton launcher, offline
latent tools, and ``vaegan evaluate``."""
