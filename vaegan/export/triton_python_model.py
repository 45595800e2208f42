"""Triton python-backend model: runs the exported model.onnx with ONNX Runtime.

Copied into each version folder as ``model.py`` by ``vaegan export --backend python``, for
CPU Triton builds that have no onnxruntime backend. It serves the same ONNX file with the
same interface as the onnxruntime and tensorrt flavours, so clients cannot tell them apart.
Dynamic batching hands ``execute`` several requests; they run as one ONNX Runtime call, and
a request with bad input gets its own error without failing the others.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        threads = int(
            config.get("parameters", {}).get("intra_op_threads", {}).get("string_value", "0")
        )
        # Always an explicit count: with its default (0) ONNX Runtime pins a worker thread to
        # every core of the machine, even cores this process was not given (measured here:
        # a stub limited to core 0 ran a worker on core 1), so it escapes CPU pinning.
        options.intra_op_num_threads = threads if threads > 0 else len(os.sched_getaffinity(0))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = {
            t["name"]: (
                pb_utils.triton_string_to_numpy(t["data_type"]),
                [int(d) for d in t["dims"]],
            )
            for t in config["input"]
        }
        self.outputs = [t["name"] for t in config["output"]]

    def _check(self, request):
        arrays = {}
        for name, (dtype, dims) in self.inputs.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input '{name}'")
            arr = tensor.as_numpy()
            if arr.dtype != dtype or list(arr.shape[1:]) != dims:
                raise ValueError(
                    f"input '{name}' must be {np.dtype(dtype).name} [batch, {', '.join(map(str, dims))}], "
                    f"got {arr.dtype.name} {list(arr.shape)}"
                )
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ValueError(f"input '{name}' contains NaN or Inf")
            arrays[name] = arr
        return arrays

    def execute(self, requests):
        responses = [None] * len(requests)
        good, feeds = [], []
        for i, request in enumerate(requests):
            try:
                feeds.append(self._check(request))
                good.append(i)
            except ValueError as e:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
        if good:
            names = list(self.inputs)
            sizes = [len(f[names[0]]) for f in feeds]
            batch = {n: np.concatenate([f[n] for f in feeds]) for n in names}
            try:
                results = self.session.run(self.outputs, batch)
            except Exception as e:  # one failed run fails only the requests that were in it
                for i in good:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"inference failed: {e}")
                    )
                return responses
            offsets = np.cumsum([0, *sizes])
            for k, i in enumerate(good):
                lo, hi = offsets[k], offsets[k + 1]
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(n, r[lo:hi])
                        for n, r in zip(self.outputs, results, strict=True)
                    ]
                )
        return responses

    def finalize(self):
        self.session = None
