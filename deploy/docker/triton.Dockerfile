# Triton for vaegan: NVIDIA's server image as is; models come from the repository the chart
# mounts (PVC) or names (s3://, gs://, as://). 24.10 is Triton 2.51, the version the tests
# run locally. For releases, also pin the digest (docker buildx imagetools inspect ...).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}
# The python-backend flavour runs model.py with ONNX Runtime; the onnxruntime and tensorrt
# flavours need nothing added. numpy<2: Triton's python backend stub needs numpy 1.x.
RUN pip install --no-cache-dir 'numpy<2' onnxruntime==1.19.2
USER triton-server
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
