# syntax=docker/dockerfile:1
#
# The amphora-operator image: the project's wheel and its dependencies installed into a slim
# Python base, run as an unprivileged numeric user. Cloud credentials are never baked in: the
# Deployment mounts the clouds.yaml Secret at /etc/openstack (see deploy/README.md).
#
#   docker build -t amphora-operator:0.1.0 .
#   kind load docker-image amphora-operator:0.1.0 --name amphora     # deploy/kind/cluster.yaml
#
# Reproducible: the base is pinned by digest (check or move it with
# `docker buildx imagetools inspect python:3.11.13-slim-bookworm`), and every Python package
# is constrained to the version the tests ran with (deploy/image/constraints.txt, written by
# deploy/image/lock.py from the tested .venv).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

# --- build: the project wheel plus wheels of every dependency (no compiler in the final image)
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# README.md* : the wheel's long description, when the repository has one. The dev harness
# (hack/, distribution amphora-devtools) is not copied: the image carries only the product.
COPY pyproject.toml README.md* ./
COPY deploy/image/constraints.txt constraints.txt
COPY operator/ operator/
COPY drivers/ drivers/
RUN python -m pip wheel --wheel-dir /wheels --constraint constraints.txt .

# --- runtime
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels amphora-operator \
    && python -m pip check \
    && groupadd --gid 65532 amphora \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin amphora
USER 65532:65532
WORKDIR /tmp
# 8080: kopf liveness/readiness at /healthz; 9090: Prometheus /metrics.
EXPOSE 8080 9090
ENTRYPOINT ["amphora-operator"]
CMD ["run"]
