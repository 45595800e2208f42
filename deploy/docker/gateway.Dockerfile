# The vaegan gRPC gateway: serving extras only (no torch), non-root, read-only-root friendly.
# Build from the repository root:  docker build -f deploy/docker/gateway.Dockerfile -t vaegan-gateway .
# The base is pinned to an exact patch release. For releases, also pin its digest:
#   docker buildx imagetools inspect python:3.11.10-slim-bookworm  ->  FROM python:3.11.10-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vaegan ./vaegan
RUN pip install --no-cache-dir --prefix=/install '.[serving]'

FROM ${PYTHON_IMAGE}
COPY --from=build /install /usr/local
# A fixed, unprivileged user (the chart's securityContext runs as this uid).
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin vaegan
USER 10001:10001
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 VAEGAN_HOST=[::] VAEGAN_PORT=50051 VAEGAN_METRICS_PORT=9090
EXPOSE 50051 9090
# Kubernetes probes the gRPC health service natively (grpc probe); no probe binary needed.
ENTRYPOINT ["vaegan", "serve"]
