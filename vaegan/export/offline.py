"""One exported model version run in-process with ONNX Runtime: the same graphs Triton
serves, for work on a repository without a server (attribute directions, principal
directions at export, sweep grids)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vaegan import interface as api
from vaegan.errors import VaeganError
from vaegan.preprocess import CropPolicy, preprocess

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


class OfflineModel:
    def __init__(self, repo: str | Path, version: str, threads: int = 2):
        import onnxruntime as ort

        self.repo, self.version = Path(repo), version
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.sessions = {}
        for model in (api.ENCODER_MODEL, api.DECODER_MODEL):
            path = self.repo / model / version / "model.onnx"
            if not path.is_file():
                raise VaeganError(
                    f"{path} not found: offline work needs the ONNX flavour of the export "
                    "(onnxruntime or python backend), not TensorRT plans"
                )
            self.sessions[model] = ort.InferenceSession(
                str(path), opts, providers=["CPUExecutionProvider"]
            )
        facts = json.loads((self.repo / api.ENCODER_MODEL / version / "facts.json").read_text())
        self.crop = CropPolicy.from_dict(facts["crop"])

    def encode(self, pixels: np.ndarray, chunk: int = 64) -> np.ndarray:
        """uint8 [N, H, W, 3] -> mu [N, D]."""
        enc = self.sessions[api.ENCODER_MODEL]
        out = [
            enc.run([api.ENCODER_OUTPUTS[0]], {api.ENCODER_INPUT: pixels[i : i + chunk]})[0]
            for i in range(0, len(pixels), chunk)
        ]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def decode(self, z: np.ndarray, chunk: int = 64) -> np.ndarray:
        """z [N, D] -> uint8 [N, H, W, 3]."""
        dec = self.sessions[api.DECODER_MODEL]
        return np.concatenate(
            [
                dec.run(
                    [api.DECODER_OUTPUT], {api.DECODER_INPUT: z[i : i + chunk].astype(np.float32)}
                )[0]
                for i in range(0, len(z), chunk)
            ]
        )

    def load_folder(self, folder: str | Path) -> np.ndarray:
        """Every PNG/JPEG under ``folder``, cropped as the model was trained."""
        folder = Path(folder)
        if not folder.is_dir():
            raise VaeganError(f"{folder} is not a folder")
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        pixels = [preprocess(p, self.crop) for p in paths]
        size = self.crop.size
        return np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
