# CPU image (default):   docker build -t voxbridge .
# CUDA image:            docker build --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 -t voxbridge:cuda .
# Run:  docker run -e DISCORD_TOKEN=... -v $PWD/agents.toml:/app/agents.toml voxbridge
#       docker run voxbridge run --no-discord   (API on :4900, simulated channels)
#       docker run voxbridge simulate --demo-agents --fast
ARG BASE=python:3.11-slim
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libopus0 curl \
        $( [ -x /usr/bin/python3.11 ] || command -v python3 >/dev/null || echo python3 python3-venv python3-pip ) \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 voxbridge
WORKDIR /app
COPY pyproject.toml README.md agents.toml ./
COPY voxbridge ./voxbridge
COPY config ./config
RUN python3 -m pip install ".[piper,postgres]"
USER voxbridge
ENV VOXBRIDGE_GENERAL__STATE_DIR=/home/voxbridge/state VOXBRIDGE_API__HOST=0.0.0.0
EXPOSE 4900
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s CMD curl -fsS http://127.0.0.1:4900/health || exit 1
ENTRYPOINT ["voxbridge"]
CMD ["run"]
