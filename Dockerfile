# syntax=docker/dockerfile:1
# SpectraMind on a CUDA GPU. Build and run (shared memory for DataLoader workers; outputs kept on the host):
#   docker build -t spectramind .
#   docker run --gpus all --shm-size=8g --user "$(id -u):$(id -g)" -v "$PWD/outputs:/work/outputs" \
#       spectramind train trainer=defaults
#
# torch 2.13.0 from PyPI is the CUDA 13.0 build (requirements/torch-cuda.txt), so the base is the CUDA 13.0
# runtime: its NVIDIA_REQUIRE_CUDA (cuda>=13.0) makes the NVIDIA container toolkit refuse a host driver too old
# for that build (CUDA 13 needs driver >= 580) when the container starts, instead of torch failing mid-run.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# Ubuntu 24.04's python3 is 3.12. requirements/runtime.lock.txt is resolved for Python 3.11 on Linux x86_64, the
# interpreter CI's locked job tests those pins on; it carries the hash of every file of each pinned release (3.12's
# wheels too), and `pip check` below fails the build if 3.12 needed a dependency the lock lacks. apt versions are
# left to the base image's release, whose security updates would break exact pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

# The package as a wheel, built from the sources alone (.dockerignore keeps everything else out).
FROM base AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY configs ./configs
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /dist .

FROM base AS runtime
COPY requirements/ /tmp/requirements/
# Every pin of the lock, hash-checked: spectramind's dependencies and torch's own (sympy, networkx, the CUDA 13.0
# wheels, ...). Then torch's CUDA build, which the lock leaves out: as a constraint the hashed lock would turn on
# pip's hash checking for torch too, which torch-cuda.txt gives no hash, so torch goes in with --no-deps, and
# `pip check` below proves that the lock's pins satisfy its requirements and spectramind's.
RUN pip install --require-hashes --no-deps -r /tmp/requirements/runtime.lock.txt \
    && pip install --no-deps -r /tmp/requirements/torch-cuda.txt
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl \
    && pip check \
    && rm -rf /tmp/dist /tmp/requirements \
    && useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin spectramind \
    && install -d -o 10001 -g 10001 /work
# Numeric, so that `docker run --user` and hosts without this name agree on who owns /work.
USER 10001:10001
# Under `docker run --user` the home folder may not be writable; matplotlib's cache goes to /tmp instead.
ENV MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /work
ENTRYPOINT ["spectramind"]
CMD ["--help"]
