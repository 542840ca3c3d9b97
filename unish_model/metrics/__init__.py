"""Evaluation metrics exactly as the peers measure them: video depth (pi3) and world motion (GVHMR/WHAM)."""

from unish_model.metrics.align import Similarity, align_points, umeyama
from unish_model.metrics.depth import (
    ALIGN_MODES,
    AdamConfig,
    DepthResult,
    adam_scale_shift,
    aggregate_depth,
    depth_metrics,
    evaluate_dataset,
    evaluate_sequence,
    irls_scale,
    resize_to,
    valid_mask,
)
from unish_model.metrics.motion import (
    aggregate_motion,
    foot_sliding,
    global_motion_metrics,
    jitter,
    joint_errors,
    joints_from_vertices,
    rte,
    w_mpjpe,
    wa_mpjpe,
)

__all__ = [
    "ALIGN_MODES",
    "AdamConfig",
    "DepthResult",
    "Similarity",
    "adam_scale_shift",
    "aggregate_depth",
    "aggregate_motion",
    "align_points",
    "depth_metrics",
    "evaluate_dataset",
    "evaluate_sequence",
    "foot_sliding",
    "global_motion_metrics",
    "irls_scale",
    "jitter",
    "joint_errors",
    "joints_from_vertices",
    "resize_to",
    "rte",
    "umeyama",
    "valid_mask",
    "w_mpjpe",
    "wa_mpjpe",
]
