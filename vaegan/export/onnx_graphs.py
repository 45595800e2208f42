"""Encoder and decoder as ONNX graphs with pixel interfaces, checked against PyTorch.

The graphs take and return uint8 HWC pixels; conversion to and from the networks' [-1, 1]
NCHW floats happens inside them, exactly as ``training.model.from_pixels/to_pixels`` do.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from vaegan.interface import DECODER_INPUT, DECODER_OUTPUT, ENCODER_INPUT, ENCODER_OUTPUTS
from vaegan.training.model import VAEGAN, from_pixels, to_pixels

OPSET = 18
MAX_BATCH = 4096  # upper bound of the dynamic batch axis
#: Parity limits. Pixels: at most one level (rounding at .5 boundaries may flip).
#: mu: absolute error relative to the spread of mu, fp32 vs fp16.
PIXEL_TOLERANCE = 1
PIXEL_TOLERANCE_FP16 = 3
MU_TOLERANCE = 1e-4
MU_TOLERANCE_FP16 = 2e-2


class EncoderGraph(nn.Module):
    """uint8 [B, H, W, 3] -> (mu, logvar) fp32 [B, latent]."""

    def __init__(self, encoder: nn.Module, fp16: bool):
        super().__init__()
        self.encoder, self.dtype = encoder, torch.float16 if fp16 else torch.float32

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(from_pixels(image).to(self.dtype))
        return mu.float(), logvar.float()


class DecoderGraph(nn.Module):
    """fp32 [B, latent] -> uint8 [B, H, W, 3]."""

    def __init__(self, decoder: nn.Module, fp16: bool):
        super().__init__()
        self.decoder, self.dtype = decoder, torch.float16 if fp16 else torch.float32

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return to_pixels(self.decoder(z.to(self.dtype)).float())


@dataclass
class Exported:
    encoder: bytes
    decoder: bytes
    parity: dict[str, float]  # the check's figures, printed and stored in the model facts


def _to_onnx(
    module: nn.Module, example: torch.Tensor, inputs: list[str], outputs: list[str]
) -> bytes:
    """torch.export-based ONNX export with a dynamic batch axis, checked by onnx.checker."""
    # The exporter restores each module's train/eval flag afterwards, recursively, so a
    # wrapper must be in eval mode itself or it can flip the wrapped network to training.
    module.eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    # It notes, once per process, that torchvision's ops are absent: they are not used here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    model = program.model_proto
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def export_graphs(model: VAEGAN, fp16: bool = False, check_batches=(1, 7, 17)) -> Exported:
    """Export both graphs from an eval-mode model and check them on real inputs."""
    cfg = model.cfg
    net = copy.deepcopy(model).eval()
    if fp16:
        net = net.half()
    size, latent = cfg.image_size, cfg.latent_dim
    enc = _to_onnx(
        EncoderGraph(net.encoder, fp16),
        torch.zeros(2, size, size, 3, dtype=torch.uint8),
        [ENCODER_INPUT],
        list(ENCODER_OUTPUTS),
    )
    dec = _to_onnx(
        DecoderGraph(net.decoder, fp16), torch.zeros(2, latent), [DECODER_INPUT], [DECODER_OUTPUT]
    )
    parity = check_parity(model, enc, dec, fp16, check_batches)
    return Exported(enc, dec, parity)


@torch.no_grad()
def check_parity(
    model: VAEGAN, enc: bytes, dec: bytes, fp16: bool, batches=(1, 7, 17)
) -> dict[str, float]:
    """Compare ONNX Runtime with the fp32 PyTorch model on real inputs: decodes of prior
    samples (which are what the decoder makes) fed back through the encoder.
    Raises ``ExportCheckFailed`` past the tolerances."""
    ref = copy.deepcopy(model).eval()  # a separate copy: nothing the exporter did can touch it
    enc_s = ort.InferenceSession(enc, providers=["CPUExecutionProvider"])
    dec_s = ort.InferenceSession(dec, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1234)
    worst_px, worst_mu, worst_logvar, mu_scale = 0, 0.0, 0.0, 0.0
    for b in batches:
        z = ref.sample_prior(b, g)
        px_ref = to_pixels(ref.decode(z)).numpy()
        px = dec_s.run(None, {DECODER_INPUT: z.numpy()})[0]
        worst_px = max(worst_px, int(np.abs(px.astype(int) - px_ref.astype(int)).max()))
        mu_ref, logvar_ref = (t.numpy() for t in ref.encode(from_pixels(torch.from_numpy(px_ref))))
        mu, logvar = enc_s.run(None, {ENCODER_INPUT: px_ref})
        worst_mu = max(worst_mu, float(np.abs(mu - mu_ref).max()))
        worst_logvar = max(worst_logvar, float(np.abs(logvar - logvar_ref).max()))
        mu_scale = max(mu_scale, float(np.abs(mu_ref).max()))
    px_tol = PIXEL_TOLERANCE_FP16 if fp16 else PIXEL_TOLERANCE
    mu_tol = (MU_TOLERANCE_FP16 if fp16 else MU_TOLERANCE) * max(1.0, mu_scale)
    figures = {
        "decoder_max_pixel_diff": worst_px,
        "decoder_pixel_tolerance": px_tol,
        "encoder_max_mu_diff": worst_mu,
        "encoder_mu_tolerance": mu_tol,
        "encoder_max_logvar_diff": worst_logvar,
        "batches_checked": list(batches),
    }
    if worst_px > px_tol or worst_mu > mu_tol:
        from vaegan.errors import VaeganError

        raise VaeganError(f"exported graphs disagree with PyTorch beyond tolerance: {figures}")
    return figures
