# GPU image for the paper labelling profile (YOLO, SAM2, MoGe-2, CameraHMR), training and inference.
# Build from the repository root:  docker build -f docker/cuda.Dockerfile -t unish-cuda .
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev \
    ffmpeg make git build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/unish
COPY pyproject.toml constraints.txt Makefile README.md ./
COPY flows flows
COPY tasks tasks
COPY shards shards
COPY unish_model unish_model
# The torch 2.14.1 wheel is a CUDA 13 build; sam2 builds its CUDA extension here.
RUN sed -i 's/SAM2_BUILD_CUDA=0 //' Makefile && make install PYTHON=python3.12 VENV=/opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 YOLO_CONFIG_DIR=/tmp/ultralytics \
    UNISH_WEIGHTS=/weights
VOLUME ["/weights", "/data"]
ENTRYPOINT ["unish"]
