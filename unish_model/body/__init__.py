"""Body models, one idea per file:

- `model.py`: SMPL (`BodyModel`, loaded from an `.npz` in SMPL's own layout, no pickle), its kinematic chain and
  linear blend skinning;
- `smplx.py`: SMPL-X (`SmplxModel`, RICH's ground truth), posed by the same chain and skinning;
- `synthetic.py`: a made-up model in SMPL's layout for tests and demos (`write_synthetic_body_model`);
- `smpl_pickle.py`: the official SMPL `.pkl` -> `.npz` converter (a restricted reader: no code from the file runs),
  `python -m unish_model.body SMPL_NEUTRAL.pkl SMPL_NEUTRAL.npz`;
- `fit.py`: SMPL fitted to vertices in SMPL's topology (SMPL-X bodies through the SMPL-X -> SMPL map: BEDLAM).

Everything is importable from `unish_model.body` itself.
"""
from unish_model.body.model import (
    NUM_JOINTS,
    REQUIRED_KEYS,
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
    BodyModel,
    BodyOutput,
    as_rotmats,
    chain_transforms,
    linear_blend_skinning,
)
from unish_model.body.fit import DEFAULT_MAX_FIT_ERROR_M, FitParams, SmplFit, fit_smpl, smpl_pose_from_smplx
from unish_model.body.smpl_pickle import convert_smpl_pickle, smpl_arrays_from_pickle
from unish_model.body.smplx import SMPLX_JOINTS, SmplxModel
from unish_model.body.synthetic import synthetic_body_arrays, write_synthetic_body_model

__all__ = [
    "NUM_JOINTS", "SMPL_PARENTS", "SMPL_JOINT_NAMES", "REQUIRED_KEYS", "BodyModel", "BodyOutput", "as_rotmats",
    "chain_transforms", "linear_blend_skinning", "SMPLX_JOINTS", "SmplxModel", "synthetic_body_arrays",
    "write_synthetic_body_model", "smpl_arrays_from_pickle", "convert_smpl_pickle", "DEFAULT_MAX_FIT_ERROR_M",
    "FitParams", "SmplFit", "fit_smpl", "smpl_pose_from_smplx",
]
