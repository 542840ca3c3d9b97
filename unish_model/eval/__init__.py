"""Run UniSH over the evaluation benchmarks and score it with the peers' protocols.  One module per idea:

- `windows.py`: how a sequence is cut into model windows and sized (`WindowConfig`, `plan_windows`,
  `model_input_size`), and a whole sequence run in memory through the window runner (`run_windows`);
- `frames.py`: frame sources (image files, a video) and image reading / resizing;
- `predictors.py`: the ground-truth predictor (`--oracle`); UniSH itself is `unish_model.runner.UniSHPredictor`;
- `results.py`: per-sequence and overall results, as JSON, Markdown and table rows;
- `bonn.py`: the video-depth protocol (Bonn RGB-D Dynamic, as pi3 / CUT3R / MonST3R);
- `motion.py`: the world-motion protocol (EMDB-2, RICH, as GVHMR / WHAM).

The window runner itself (predict, stitch, new frames; camera-frame SMPL to the world) is `unish_model.runner`,
shared with `unish infer`.  The dataset readers, and each dataset's glue for the protocols (layout checks, person
boxes, ground truth), are in `unish_model.benchmarks`; the metric functions in `unish_model.metrics`.  Torch and
numpy only (images are read with OpenCV when it is installed, else Pillow).
"""
