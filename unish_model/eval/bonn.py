"""Video depth on Bonn RGB-D Dynamic, as pi3 / CUT3R / MonST3R measure it.

Frames sorted()[30:140] (the reader, `unish_model.benchmarks.bonn`): 110 frames, windows 0-29, 25-54, 50-79, 75-104
and 80-109 at the dataset's 30 fps.  No person boxes: the whole frame is the person box (the human branch does not
touch the depth).  The depth is UniSH's `depth_map` (local z + the recovered shift, metres); window k's depth is
multiplied by its stitching scale and the sequence's metric scale, so all 110 frames share one unit before the
protocol's single scale&shift alignment over the whole sequence (`unish_model.metrics.depth.evaluate_sequence`);
the dataset number weights each sequence by its valid pixels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from unish_model.benchmarks.bonn import BonnSequence
from unish_model.eval.frames import resize_frames
from unish_model.eval.results import BenchmarkResult, SequenceResult, Sink
from unish_model.eval.windows import Log, WindowConfig, model_input_size, quiet, run_windows
from unish_model.metrics.depth import DepthResult, aggregate_depth, evaluate_sequence
from unish_model.runner import Predictor

__all__ = ["BONN_COLUMNS", "evaluate_bonn"]

BONN_COLUMNS = ("abs_rel", "delta_1.25", "rmse", "log_rmse")


def evaluate_bonn(sequences: Sequence[BonnSequence], predictor: Predictor, config: WindowConfig = WindowConfig(),
                  align: str = "scale&shift", fps: float = 30.0, log: Log = quiet, sink: Sink | None = None
                  ) -> BenchmarkResult:
    """Video depth on Bonn: stitched per-window depth, one alignment per sequence, pixel-weighted dataset mean."""
    rows: list[SequenceResult] = []
    depth_results: list[DepthResult] = []
    for seq in sequences:
        rgb = seq.load_rgb()
        size = model_input_size(rgb.shape[1], rgb.shape[2], config.long_side)
        images = resize_frames(rgb, size)
        del rgb
        stitched = run_windows(seq.name, len(images), lambda idx: (images[idx], None), predictor, config, fps, log)
        if stitched.depth is None:
            raise ValueError(f"{seq.name}: the predictor returned no depth")
        gt = seq.load_depth()
        result = evaluate_sequence(stitched.depth, gt, align)
        depth_results.append(result)
        rows.append(SequenceResult(seq.name, len(gt), dict(result.metrics), {
            "valid_pixels": result.valid_pixels, "align_scale": result.scale, "align_shift": result.shift,
            "adam_steps": result.steps_run, "windows": len(stitched.window_starts),
            "window_starts": stitched.window_starts, "metric_scale": stitched.metric_scale,
            "input_size": [int(size[1]), int(size[0])]}))
        log(f"{seq.name}: abs_rel {result.metrics['abs_rel']:.4f}, delta<1.25 {result.metrics['delta_1.25']:.4f}")
        if sink is not None:
            sink(seq.name, {"pred_depth": stitched.depth, "c2w": stitched.c2w.astype(np.float32)})
    overall = aggregate_depth(depth_results) if depth_results else {}
    protocol = {"frames": "sorted()[30:140]", "align": align, "max_depth": 70.0, "window": config.window,
                "stride": config.stride, "long_side": config.long_side, "fps": fps,
                "dataset mean": "per-sequence metrics weighted by valid pixels"}
    return BenchmarkResult("bonn", BONN_COLUMNS, rows, overall, protocol)
