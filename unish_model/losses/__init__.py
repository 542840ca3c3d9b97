"""The objectives of UniSH's three training stages, as functions of tensors (no model object, no Prefect).

    from unish_model.losses import stage1_loss, Stage1Inputs, Stage1Config, FrozenPointHead, original_points
    total, terms = stage1_loss(Stage1Inputs(...), Stage1Config(), generator)     # human surface refinement
    total, terms = stage2_loss(Stage2Inputs(...), body, Stage2Config())          # coarse alignment
    total, terms = stage3_loss(Stage3Inputs(...), body, Stage3Config())          # fine alignment

Each returns the scalar total and a dict of named terms for logging.  The pieces: `roe` (MoGe's robust optimal
estimation: scale, scale + z-shift, depth scale + shift), `raster` (z-buffer visibility), `chamfer` (one-way
Chamfer), `config` (the paper's weights and every other knob, with sources).
"""
from .config import Stage1Config, Stage2Config, Stage3Config
from .stage1 import FrozenPointHead, Stage1Inputs, original_points, stage1_loss
from .stage2 import Stage2Inputs, stage2_loss
from .stage3 import Stage3Inputs, stage3_loss

__all__ = [
    "Stage1Config", "Stage2Config", "Stage3Config",
    "Stage1Inputs", "Stage2Inputs", "Stage3Inputs",
    "stage1_loss", "stage2_loss", "stage3_loss",
    "FrozenPointHead", "original_points",
]
