# CPU curation worker: runs `unish curate` / Prefect work-pool jobs (lite profile, spine, packing).
# Build from the repository root:  docker build -f docker/curation.Dockerfile -t unish-curation .
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg make git build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/unish
COPY pyproject.toml constraints.txt Makefile README.md ./
COPY flows flows
COPY tasks tasks
COPY shards shards
COPY unish_model unish_model
RUN make install PYTHON=python3.11 VENV=/opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 YOLO_CONFIG_DIR=/tmp/ultralytics \
    UNISH_WEIGHTS=/weights
VOLUME ["/weights", "/data"]
ENTRYPOINT ["unish"]
