"""Tensor and model names shared by the exported graphs, config.pbtxt and every client.

One set of constants, so the ONNX export, the Triton configuration and the gateway can
never disagree on a name. Images cross every boundary as uint8 RGB HWC pixels; the
[-1, 1] normalisation lives only inside the graphs.
"""

ENCODER_MODEL = "vaegan_encoder"
DECODER_MODEL = "vaegan_decoder"

ENCODER_INPUT = "image"  # UINT8 [batch, H, W, 3]
ENCODER_OUTPUTS = ("mu", "logvar")  # FP32 [batch, latent] each
DECODER_INPUT = "z"  # FP32 [batch, latent]
DECODER_OUTPUT = "image"  # UINT8 [batch, H, W, 3]

#: config.pbtxt parameters carrying the model's facts (read by the gateway).
PARAM_LATENT_DIM = "vaegan.latent_dim"
PARAM_IMAGE_SIZE = "vaegan.image_size"
PARAM_CROP = "vaegan.crop"  # JSON CropPolicy
PARAM_ROLE = "vaegan.role"  # "encoder" or "decoder"
PARAM_VERSION_FACTS = "vaegan.version_facts"  # JSON {version: facts}
