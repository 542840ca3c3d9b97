"""Flow parameters (pydantic): what a user can set for a curation run, in one place."""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from shards.writer import ShardLimits
from tasks.pipeline import SpineParams
from tasks.shots import ShotParams, WindowParams


class ClipOutputConfig(BaseModel):
    """What every command that writes clips sets alike (`curate`, `bedlam`): a clip's frames, their JPEG quality,
    and the shards' bounds."""

    window_frames: int = Field(30, ge=1)
    window_fps: float = Field(6.0, gt=0)
    stride_s: float | None = Field(None, gt=0, description="seconds between window starts (default: back to back)")
    jpeg_quality: int = Field(92, ge=50, le=100)
    shard_max_mb: float = Field(512.0, gt=0)
    shard_max_samples: int = Field(1000, ge=1)
    verify_shards: bool = Field(False, description="check every finished shard's digests, not only changed files")

    def shard_limits(self) -> ShardLimits:
        return ShardLimits(int(self.shard_max_mb * 1024 * 1024), self.shard_max_samples)


class CurateConfig(ClipOutputConfig):
    profile: str = Field("none", description="labelling profile: none, lite or paper")
    stages: list[str] | None = Field(None, description="explicit labelling stage names (overrides the profile)")
    stage_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="keyword arguments per stage name, e.g. {'people:hog': {...}}")
    workers: int = Field(2, ge=1, description="videos processed at once")
    window_seconds: float = Field(5.0, gt=0)
    shot_threshold: float = Field(27.0, gt=0)
    min_scene_len_s: float = Field(0.5, ge=0)
    section_pad_s: float = Field(2.0, ge=0)
    fetch_retries: int = Field(3, ge=0, description="retries of a transient download error (queued, not waited on)")
    fetch_retry_delays_s: list[float] = Field(default_factory=lambda: [10.0, 60.0, 300.0],
                                              description="seconds before each retry (the last one repeats)")
    host_backoff_s: float = Field(30.0, ge=0, description="pause for a host:port after a transient error there")
    fetch_timeout_s: float = Field(20.0, gt=0, description="socket time-out of a download")
    max_frame_offset_s: float | None = Field(
        None, gt=0, description="farthest a sampled frame may be from its time (default half the sample interval)")
    cookies: str | None = None
    proxy: str | None = None
    progress: bool = True
    # Where the videos run (flows/runners.py): Prefect's thread pool here, or a Ray cluster.
    runner: Literal["local", "ray"] = Field("local", description="local (threads on this machine) or ray")
    ray_address: str | None = Field(None, description="Ray cluster address; auto: the one `ray start` began here; "
                                    "none: a temporary local cluster")
    ray_gpus_per_labeller: float = Field(1.0, ge=0, description="GPUs each Ray labeller asks for (GPU stages only)")
    ray_labellers: int | None = Field(None, ge=1, description="Ray labeller actors (default: one per "
                                      "ray_gpus_per_labeller GPUs of the cluster; CPU stages: none, they run in "
                                      "the video tasks)")

    def spine(self) -> SpineParams:
        return SpineParams(
            windows=WindowParams(self.window_seconds, self.window_fps, self.window_frames, self.stride_s,
                                 self.max_frame_offset_s),
            shots=ShotParams(self.shot_threshold, self.min_scene_len_s),
            jpeg_quality=self.jpeg_quality,
            shard_limits=self.shard_limits(),
        )

    def stage_names(self) -> list[str]:
        names = self._stage_names()
        unknown = set(self.stage_params) - set(names)
        if unknown:
            raise ValueError(f"parameters given for stages that do not run: {', '.join(sorted(unknown))}")
        return names

    def _stage_names(self) -> list[str]:
        if self.stages is not None:
            return list(self.stages)
        if self.profile == "none":
            return []
        from tasks.profiles import PROFILES  # noqa: PLC0415 (profiles import the stage backends)

        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; known: none, {', '.join(sorted(PROFILES))}")
        return list(PROFILES[self.profile])


def parse_stage_params(items: list[str]) -> dict[str, dict[str, Any]]:
    """`STAGE.KEY=VALUE` items (VALUE as JSON when it parses, else a string) -> {stage: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, raw = item.partition("=")
        stage, dot, key = target.rpartition(".")
        if not sep or not dot or not stage or not key:
            raise ValueError(f"stage parameter {item!r} is not STAGE.KEY=VALUE (e.g. masks:sam2.box_margin=0.1)")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(stage, {})[key] = value
    return out
