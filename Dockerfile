# CPU image: the simulated channel runs out of the box.
#   docker build -t voxbridge . && docker run --rm voxbridge
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libopus0 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 voxbridge
WORKDIR /app
COPY pyproject.toml README.md agents.toml ./
COPY voxbridge ./voxbridge
COPY config ./config
RUN pip install --no-cache-dir ".[piper]"
USER voxbridge
ENTRYPOINT ["voxbridge"]
CMD ["simulate", "--demo-agents", "--fast", "--out", "/tmp/sim-out"]
