# streamrec's image: what `make install` installs, without the dev tools, as a non-root user.
# It starts nothing by itself: KubeRay (cluster/kuberay/render.py) runs `ray start` in it, and Ray
# jobs run `python -m cluster.jobs.*`.
#
#   docker build -t registry.example.com/streamrec:0.1.0 .                            # CPU torch
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t ...:0.1.0-cuda .
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

# the torch pin of the Makefile (a test keeps them equal); the CPU wheel unless TORCH_INDEX names another
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    RAY_USAGE_STATS_ENABLED=0

RUN useradd --create-home --uid 1000 --shell /bin/bash ray
WORKDIR /home/ray/streamrec

RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ray_config.yaml ./
COPY streamrec ./streamrec
COPY rl ./rl
COPY actors ./actors
COPY serve ./serve
COPY cluster ./cluster
COPY bench ./bench
RUN pip install . && chown -R ray:ray /home/ray

USER ray
ENV STREAMREC_CONFIG=/home/ray/streamrec/ray_config.yaml
CMD ["bash"]
