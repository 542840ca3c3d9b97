"""The SMPL skeleton as the shards store it (pure constants: importable with nothing installed, so the torch-only
model code and the torch-free labellers share them)."""

# The 24 SMPL joints, in the order the keypoints family stores joints2d (and the body model poses them), and
# each joint's parent in SMPL's kinematic tree (-1: the root): the skeleton a drawing of joints connects.
SMPL_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle",
    "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
