# vaegan training and export (torchrun + DDP; NCCL on GPUs, gloo on CPU). The PyPI torch
# wheel for Linux x86_64 bundles its CUDA libraries, so a slim Python base is enough; the
# nodes need only the NVIDIA driver. Build from the repository root:
#   docker build -f deploy/docker/training.Dockerfile -t vaegan-training .
# Add TensorRT for `vaegan export --backend tensorrt`: --build-arg EXTRA="tensorrt==10.*"
# For releases, pin the base's digest as in gateway.Dockerfile.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG EXTRA=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vaegan ./vaegan
RUN pip install --no-cache-dir '.[training]' ${EXTRA} && rm -rf /src
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin vaegan
USER 10001:10001
WORKDIR /home/vaegan
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The chart runs torchrun itself; by hand: docker run IMAGE vaegan train --help
CMD ["vaegan", "--help"]
