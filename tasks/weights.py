"""The weights registry: every model file the project uses, where it lives, and how to get it.

Weights live in one folder, `$UNISH_WEIGHTS` (default `~/.cache/unish/weights`), under the file names
below. Stages call `require(name)` in `setup()` so a missing file fails before any video is touched,
with a message that says how to get it. Before any work, a command collects what it will need (`Need`, from each
stage's `weights_needed()` and its own options) and `check_needs` reports every missing file at once. `pull`
downloads what can be downloaded (streamed, hashed on the way, written to a temp name and renamed when complete);
files behind a registration wall can only be placed by hand.

SMPL, one story everywhere (`unish infer`, `keypoints:camerahmr`, `unish eval`, `unish weights check`): the file used
is `SMPL_NEUTRAL.npz` in the weights folder, made once from the official neutral model saved as `SMPL_NEUTRAL.pkl`
beside it with `python -m unish_model.body SMPL_NEUTRAL.pkl SMPL_NEUTRAL.npz` (a restricted reader: no code runs).

sha256: pinned only where the upstream publishes one; `pin_note` says where, or why a file is not pinned.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

WEIGHTS_ENV = "UNISH_WEIGHTS"
DEFAULT_WEIGHTS_DIR = Path("~/.cache/unish/weights")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsSpec:
    """One model file. `needed_by` names profiles (paper, lite) and model uses (train, infer, eval)."""

    name: str
    filename: str
    url: str | None  # direct download; None where the file is behind a registration
    sha256: str | None  # None: not pinned yet (the check then only reports the hash it sees)
    license: str
    needed_by: tuple[str, ...]
    registration: str | None = None  # page where a person registers to download it
    note: str = ""
    pin_note: str = ""  # where the upstream publishes the sha256, or why the file is not pinned
    convert_from: str | None = None  # the file a person downloads, converted once into `filename` (SMPL)
    official_file: str = ""  # the name it has where it is downloaded, when it is saved under another

    @property
    def downloadable(self) -> bool:
        return self.url is not None and self.registration is None

    def convert_command(self, dest: Path) -> str | None:
        if self.convert_from is None:
            return None
        return f"python -m unish_model.body {dest.parent / self.convert_from} {dest}"


def _hf(repo: str, path: str) -> str:
    return f"https://huggingface.co/{repo}/resolve/main/{path}"


_ULTRALYTICS_RELEASE = "https://github.com/ultralytics/assets/releases/download/v8.3.0"
_SAM2_RELEASE = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
# Why each file is not pinned (no hash is ever written here that was not read from its publisher).
_NOT_PUBLISHED_ULTRALYTICS = ("not pinned: Ultralytics gives no checksum for its release assets (compare `unish weights "
                              "check`'s hash with a digest the GitHub release page may show)")
_NOT_PUBLISHED_SAM2 = "not pinned: Meta publishes no checksum for the SAM 2.1 checkpoints (download_ckpts.sh has none)"
_HF_PUBLISHED = ("not pinned yet: Hugging Face publishes it (the file page's SHA256, the LFS pointer's oid); compare "
                 "it with the hash `unish weights check` prints")
_REGISTRATION = "not pinned: behind a registration, no public checksum"

REGISTRY: dict[str, WeightsSpec] = {
    s.name: s
    for s in (
        WeightsSpec(
            "yolo11n", "yolo11n.pt", f"{_ULTRALYTICS_RELEASE}/yolo11n.pt", None, "AGPL-3.0 (Ultralytics)",
            ("paper",), note="people:yolo default detector (COCO; persons only are used)", pin_note=_NOT_PUBLISHED_ULTRALYTICS,
        ),
        WeightsSpec(
            "yolov8n", "yolov8n.pt", f"{_ULTRALYTICS_RELEASE}/yolov8n.pt", None, "AGPL-3.0 (Ultralytics)",
            (), note="alternative detector: any YOLOv8/YOLO11 detection checkpoint works with people:yolo",
            pin_note=_NOT_PUBLISHED_ULTRALYTICS,
        ),
        WeightsSpec(
            "sam2.1_hiera_large", "sam2.1_hiera_large.pt", f"{_SAM2_RELEASE}/sam2.1_hiera_large.pt", None,
            "Apache-2.0", ("paper",), note="masks:sam2 video predictor", pin_note=_NOT_PUBLISHED_SAM2,
        ),
        WeightsSpec(
            "sam2.1_hiera_tiny", "sam2.1_hiera_tiny.pt", f"{_SAM2_RELEASE}/sam2.1_hiera_tiny.pt", None,
            "Apache-2.0", (), note="smaller SAM2.1 for quick runs", pin_note=_NOT_PUBLISHED_SAM2,
        ),
        WeightsSpec(
            "moge-2-vitl", "moge-2-vitl.pt", _hf("Ruicheng/moge-2-vitl", "model.pt"), None, "MIT",
            ("paper",), note="depth:moge (MoGe-2 ViT-L; HF file model.pt)", pin_note=_HF_PUBLISHED,
        ),
        WeightsSpec(
            "camerahmr", "camerahmr_checkpoint_cleaned.ckpt", None, None,
            "CameraHMR licence (non-commercial research)", ("paper", "train"),
            registration="https://camerahmr.is.tue.mpg.de",
            note="keypoints:camerahmr and human-branch init; download camerahmr_checkpoint_cleaned.ckpt after login",
            pin_note=_REGISTRATION,
        ),
        WeightsSpec(
            "pi3", "pi3_model.safetensors", _hf("yyfz233/Pi3", "model.safetensors"), None, "BSD-3-Clause",
            ("train",), note="scene-branch init (HF file model.safetensors)", pin_note=_HF_PUBLISHED,
        ),
        WeightsSpec(
            "unish_release", "unish_release.safetensors",
            _hf("Murphyyyy/UniSH", "checkpoints/unish_release.safetensors"), None,
            "Apache-2.0 (UniSH repository licence)", ("infer", "eval", "train"),
            note="official UniSH weights", pin_note=_HF_PUBLISHED,
        ),
        WeightsSpec(
            "smpl_neutral", "SMPL_NEUTRAL.npz", None, None, "SMPL Model Licence (non-commercial)",
            ("paper", "train", "infer", "eval"), registration="https://smpl.is.tue.mpg.de",
            note="SMPL 1.1.0 neutral model as plain arrays: save the official "
            "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl as SMPL_NEUTRAL.pkl and convert it once with "
            "`python -m unish_model.body SMPL_NEUTRAL.pkl SMPL_NEUTRAL.npz` (a restricted reader, no code runs)",
            pin_note="not pinned: made on your machine from a registered download", convert_from="SMPL_NEUTRAL.pkl",
            official_file="basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl",
        ),
    )
}


class WeightsError(RuntimeError):
    """A weights problem, with a message a person can act on."""


class WeightsMissing(WeightsError, FileNotFoundError):
    """Weights files are missing; `missing` lists them (as `Need`s) when a check collected several."""

    def __init__(self, message: str, missing: list | None = None):
        super().__init__(message)
        self.missing = list(missing or [])


class WeightsOffline(WeightsError):
    pass


class WeightsChecksumMismatch(WeightsError):
    pass


def weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()


def spec(name: str) -> WeightsSpec:
    if name not in REGISTRY:
        raise KeyError(f"unknown weights {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def weights_path(name: str) -> Path:
    return weights_dir() / spec(name).filename


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def how_to_get(s: WeightsSpec, dest: Path) -> str:
    convert = s.convert_command(dest)
    if convert and s.convert_from:
        source = dest.parent / s.convert_from
        if source.is_file():
            return f"{source} is here: convert it once with `{convert}`"
        official = f" ({s.official_file})" if s.official_file else ""
        return (f"register at {s.registration}, download the official file{official}, save it as {source} and "
                f"convert it once with `{convert}`")
    if s.registration:
        return f"register at {s.registration}, download {s.filename} and put it at {dest}"
    return f"run `unish weights pull {s.name}` where the internet is reachable, or copy {s.url} to {dest}"


@dataclass(frozen=True)
class Need:
    """A file a stage or a command will read: a registry entry (`name`), or a file the user named (`hint` says what
    to give instead)."""

    needed_by: str  # "people:yolo", "unish infer", ...
    path: Path
    name: str | None = None
    hint: str = ""

    @property
    def present(self) -> bool:
        return self.path.is_file()

    def how(self) -> str:
        return how_to_get(spec(self.name), self.path) if self.name else self.hint


def need(name: str, needed_by: str) -> Need:
    """The registry file `name`, as `needed_by` will read it from the weights folder."""
    return Need(needed_by, weights_path(name), name)


def need_file(weights: str, needed_by: str, what: str, default: str, local: str = "a local .pt file",
              choices: Iterable[str] = ()) -> Need:
    """A stage's `weights` parameter as a Need, with `registry_or_file`'s reading: a registry name, else a file."""
    if weights in REGISTRY:
        return need(weights, needed_by)
    names = f" ({', '.join(choices)})" if choices else ""
    hint = (f"{what} weights {weights!r} not found: give a registry name{names} or {local}; for the default: "
            f"{how_to_get(REGISTRY[default], weights_path(default))}")
    return Need(needed_by, Path(weights).expanduser(), None, hint)


def missing_message(missing: list[Need]) -> str:
    """Every missing file on its own line: what needs it, where it goes, and how to get it."""
    head = (f"{len(missing)} weights file{'s are' if len(missing) > 1 else ' is'} missing (weights folder "
            f"{weights_dir()}; set {WEIGHTS_ENV} to use another):")
    return "\n".join([head, *(f"  {m.path.name} (for {m.needed_by}): {m.how()}" for m in missing)])


def check_needs(needs: Iterable[Need]) -> None:
    """Raise WeightsMissing listing every missing file at once (each file once, with all that need it)."""
    by_path: dict[Path, Need] = {}
    for n in needs:
        if n.present:
            continue
        if n.path in by_path:
            seen = by_path[n.path]
            if n.needed_by not in seen.needed_by.split(", "):
                by_path[n.path] = Need(f"{seen.needed_by}, {n.needed_by}", seen.path, seen.name, seen.hint)
        else:
            by_path[n.path] = n
    if by_path:
        raise WeightsMissing(missing_message(list(by_path.values())), list(by_path.values()))


@dataclass(frozen=True)
class WeightsStatus:
    name: str
    path: Path
    present: bool
    sha256: str | None  # what the file hashes to (None when absent or not hashed)
    sha_ok: bool | None  # None: absent, not hashed, or nothing pinned to compare against

    @property
    def ok(self) -> bool:
        return self.present and self.sha_ok is not False


def check(name: str, *, hash_file: bool = True) -> WeightsStatus:
    s = spec(name)
    path = weights_dir() / s.filename
    if not path.is_file():
        return WeightsStatus(name, path, False, None, None)
    digest = sha256_file(path) if hash_file else None
    sha_ok = None if (digest is None or s.sha256 is None) else digest == s.sha256
    return WeightsStatus(name, path, True, digest, sha_ok)


def require(name: str) -> Path:
    """The path of a weights file that must be there; raise naming the file and how to get it."""
    s = spec(name)
    path = weights_dir() / s.filename
    if not path.is_file():
        raise WeightsMissing(f"weights {name!r} missing: {path} not found; {how_to_get(s, path)}", [need(name, name)])
    return path


def registry_or_file(weights: str, what: str, default: str, local: str = "a local .pt file",
                     choices: Iterable[str] = ()) -> Path:
    """A stage's `weights` parameter as a file: a registry name (the file must be in the weights folder) or a local
    file.  A missing local file raises WeightsMissing naming `choices` (registry names) and how to get `default`."""
    if weights in REGISTRY:
        return require(weights)
    path = Path(weights).expanduser()
    if not path.is_file():
        names = f" ({', '.join(choices)})" if choices else ""
        hint = how_to_get(REGISTRY[default], weights_path(default))
        raise WeightsMissing(f"{what} weights {weights!r} not found: give a registry name{names} or {local}; "
                             f"for the default: {hint}")
    return path


Opener = Callable[..., object]


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    timeout_s: float = 30.0,
    opener: Opener = urllib.request.urlopen,
) -> str:
    """Stream `url` to `dest` through a temp file in the same folder; verify sha256; rename; return the hash.

    Nothing is left at `dest` unless the whole file arrived and matched.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    host = urllib.parse.urlsplit(url).netloc or url
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        try:
            with os.fdopen(fd, "wb") as out, opener(url, timeout=timeout_s) as resp:  # type: ignore[attr-defined]
                while chunk := resp.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as e:
            raise WeightsError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise WeightsOffline(
                f"offline: cannot reach {host} ({reason}); fetch {url} where the internet is reachable and copy it to {dest}"
            ) from e
        digest = h.hexdigest()
        if sha256 is not None and digest != sha256:
            raise WeightsChecksumMismatch(f"{url}: sha256 {digest} does not match the pinned {sha256}; not kept")
        os.replace(tmp, dest)
        return digest
    finally:
        tmp.unlink(missing_ok=True)


def pull(name: str, *, force: bool = False, timeout_s: float = 30.0, opener: Opener = urllib.request.urlopen) -> Path:
    s = spec(name)
    dest = weights_dir() / s.filename
    if not s.downloadable:
        raise WeightsMissing(f"{name} cannot be downloaded automatically: {how_to_get(s, dest)}")
    if dest.is_file() and not force:
        st = check(name)
        if st.sha_ok is False:
            raise WeightsChecksumMismatch(f"{dest} exists but its sha256 {st.sha256} is not the pinned {s.sha256}; "
                                          "pull again with --force")
        return dest
    assert s.url is not None
    download(s.url, dest, sha256=s.sha256, timeout_s=timeout_s, opener=opener)
    return dest


def names_for(needed_by: str | None = None) -> list[str]:
    return [n for n, s in REGISTRY.items() if needed_by is None or needed_by in s.needed_by]


def uses() -> list[str]:
    """What `needed_by` names: the profiles and model uses (paper, train, infer, eval)."""
    return sorted({u for s in REGISTRY.values() for u in s.needed_by})


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "unish"


def prepare_ultralytics_env() -> None:
    """Switch Ultralytics offline and to weights-only checkpoint loading; call before it is imported.

    Ultralytics reads these switches once, at import: YOLO_OFFLINE stops every online check and
    telemetry, YOLO_AUTOINSTALL=0 stops pip installs at run time, ULTRALYTICS_SAFE_LOAD=1 makes it load
    `.pt` files with torch.load(weights_only=True) and an allow-list of its own classes, and
    YOLO_CONFIG_DIR gives it a writable folder for its settings file.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    if not os.environ.get("YOLO_CONFIG_DIR"):
        cfg = _cache_root() / "ultralytics"
        try:
            cfg.mkdir(parents=True, exist_ok=True)
            probe = cfg / ".write-test"
            probe.touch()
            probe.unlink()
        except OSError:
            cfg = Path(tempfile.gettempdir()) / "unish-ultralytics"
            cfg.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(cfg)


def status_rows(names: Iterable[str], *, hash_file: bool = True) -> list[tuple[WeightsSpec, WeightsStatus]]:
    return [(spec(n), check(n, hash_file=hash_file)) for n in names]
