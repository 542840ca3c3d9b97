"""Benchmark readers on tiny fixtures written in each dataset's on-disk layout."""

from __future__ import annotations

import os
import pickle
import pickletools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from unish_model.benchmarks import (
    UnsafePickleError,
    list_bonn,
    list_emdb,
    read_bonn_sequence,
    read_emdb_pickle,
    read_rich_cameras,
    read_rich_labels,
    safe_load,
    smplx_to_smpl_vertices,
)

# ------------------------------------------------------------------------------------- Bonn


def _write_bonn(root: Path, name: str, frames: int = 145) -> None:
    seq = root / f"rgbd_bonn_{name}"
    (seq / "rgb").mkdir(parents=True)
    (seq / "depth").mkdir()
    # Timestamps as names; depth stamps differ from rgb ones, pairing is by sorted index.
    for i in reversed(range(frames)):
        stamp = 1548266469.0 + i * 0.0333
        rgb = np.zeros((4, 5, 3), dtype=np.uint8)
        rgb[..., 2] = i  # red channel carries the frame index (written as BGR)
        cv2.imwrite(str(seq / "rgb" / f"{stamp:.6f}.png"), rgb)
        depth = np.full((4, 5), 5000 + i, dtype=np.uint16)
        depth[0, 0] = 0
        cv2.imwrite(str(seq / "depth" / f"{stamp + 0.01:.6f}.png"), depth)
    (seq / "groundtruth.txt").write_text("# timestamp tx ty tz qx qy qz qw\n")


def test_bonn_takes_sorted_frames_30_to_140(tmp_path: Path) -> None:
    _write_bonn(tmp_path, "crowd2")
    seq = read_bonn_sequence(tmp_path, "crowd2")
    assert len(seq.rgb_paths) == len(seq.depth_paths) == 110
    depth = seq.load_depth()
    assert depth.shape == (110, 4, 5) and depth.dtype == np.float64
    np.testing.assert_allclose(depth[:, 1, 1], (5000 + np.arange(30, 140)) / 5000.0)
    assert (depth[:, 0, 0] == 0).all()
    rgb = seq.load_rgb()
    assert rgb.shape == (110, 4, 5, 3)
    np.testing.assert_array_equal(rgb[:, 0, 0, 0], np.arange(30, 140))  # RGB order
    assert seq.intrinsics[0, 0] == pytest.approx(542.822841)


def test_bonn_uses_prepared_110_frame_folders(tmp_path: Path) -> None:
    seq_dir = tmp_path / "rgbd_bonn_balloon2"
    (seq_dir / "rgb_110").mkdir(parents=True)
    (seq_dir / "depth_110").mkdir()
    for i in range(110):
        cv2.imwrite(str(seq_dir / "rgb_110" / f"{i:04d}.png"), np.zeros((2, 3, 3), np.uint8))
        cv2.imwrite(str(seq_dir / "depth_110" / f"{i:04d}.png"), np.full((2, 3), 7 + i, np.uint16))
    depth = read_bonn_sequence(tmp_path, "balloon2").load_depth()
    assert depth[0, 0, 0] == pytest.approx(7 / 5000) and depth[-1, 0, 0] == pytest.approx(116 / 5000)


def test_bonn_errors_name_the_folder(tmp_path: Path) -> None:
    _write_bonn(tmp_path, "crowd3", frames=100)
    with pytest.raises(ValueError, match="rgbd_bonn_crowd3"):
        read_bonn_sequence(tmp_path, "crowd3")
    with pytest.raises(FileNotFoundError, match="synchronous"):
        list_bonn(tmp_path, ("synchronous",))


# ------------------------------------------------------------------------------------- EMDB


def _emdb_annotation(name: str, n: int, emdb2: bool) -> dict:
    rng = np.random.default_rng(len(name))
    return {
        "gender": "female",
        "name": name,
        "emdb1": not emdb2,
        "emdb2": emdb2,
        "n_frames": n,
        "good_frames_mask": np.arange(n) % 5 != 0,
        "camera": {
            "intrinsics": np.array([[900.0, 0, 360], [0, 900.0, 640], [0, 0, 1]]),
            "extrinsics": np.tile(np.eye(4), (n, 1, 1)),
            "width": 720,
            "height": 1280,
        },
        "smpl": {
            "poses_root": rng.normal(size=(n, 3)),
            "poses_body": rng.normal(size=(n, 69)),
            "trans": rng.normal(size=(n, 3)),
            "betas": rng.normal(size=10),
        },
        "kp2d": rng.normal(size=(n, 24, 2)),
        "bboxes": {"bboxes": rng.normal(size=(n, 4)), "invalid_idxs": np.arange(0, n, 5)},
    }


def _write_emdb(root: Path, subject: str, seq: str, ann: dict, protocol: int = 4) -> Path:
    folder = root / subject / seq
    (folder / "images").mkdir(parents=True)
    for i in range(ann["n_frames"]):
        (folder / "images" / f"{i:05d}.jpg").write_bytes(b"")
    path = folder / f"{subject}_{seq}_data.pkl"
    path.write_bytes(pickle.dumps(ann, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_emdb_pickle_reads_back(tmp_path: Path, protocol: int) -> None:
    ann = _emdb_annotation("P0_09_outdoor_walk", 7, emdb2=True)
    path = _write_emdb(tmp_path, "P0", "09_outdoor_walk", ann, protocol)
    seq = read_emdb_pickle(path)
    assert seq.name == "P0_09_outdoor_walk" and seq.gender == "female"
    assert seq.emdb2 and not seq.emdb1 and seq.n_frames == 7
    np.testing.assert_array_equal(seq.good_frames_mask, ann["good_frames_mask"])
    np.testing.assert_array_equal(seq.poses_body, ann["smpl"]["poses_body"])
    np.testing.assert_array_equal(seq.world_to_camera, ann["camera"]["extrinsics"])
    np.testing.assert_array_equal(seq.betas, ann["smpl"]["betas"])
    assert len(seq.image_paths) == 7


def test_emdb_lists_the_emdb2_split(tmp_path: Path) -> None:
    _write_emdb(tmp_path, "P0", "09_outdoor_walk", _emdb_annotation("P0_09_outdoor_walk", 4, True))
    _write_emdb(tmp_path, "P1", "14_outdoor_climb", _emdb_annotation("P1_14_outdoor_climb", 4, False))
    assert [s.name for s in list_emdb(tmp_path, split=2)] == ["P0_09_outdoor_walk"]
    assert [s.name for s in list_emdb(tmp_path, split=1)] == ["P1_14_outdoor_climb"]
    assert len(list_emdb(tmp_path, split=None)) == 2


def test_emdb_shape_errors_name_the_file(tmp_path: Path) -> None:
    ann = _emdb_annotation("P0_09_outdoor_walk", 5, True)
    ann["smpl"]["trans"] = np.zeros((4, 3))
    path = _write_emdb(tmp_path, "P0", "09_outdoor_walk", ann)
    with pytest.raises(ValueError, match=r"_data\.pkl: smpl\.trans"):
        read_emdb_pickle(path)


class _RunsCode:
    """A pickle payload that calls os.system when unpickled by a plain unpickler."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_restricted_unpickler_refuses_code_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"smpl": _RunsCode(f"touch {marker}")})
    with pytest.raises(UnsafePickleError, match="system"):
        safe_load(payload)
    assert not marker.exists()
    # Through the EMDB reader too, with the error naming the file.
    bad = tmp_path / "P0" / "01_x"
    bad.mkdir(parents=True)
    (bad / "P0_01_x_data.pkl").write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"P0_01_x_data\.pkl"):
        read_emdb_pickle(bad / "P0_01_x_data.pkl")
    assert not marker.exists()
    # The payload is live (it would call os.system when unpickled), shown without running it.
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(payload)]
    assert ("SHORT_BINUNICODE", "system") in ops and any(name == "REDUCE" for name, _ in ops)


@pytest.mark.parametrize("obj", [eval, getattr, Path("x"), torch.zeros(1)], ids=lambda o: type(o).__name__)
def test_restricted_unpickler_refuses_other_globals(obj: object) -> None:
    with pytest.raises(UnsafePickleError):
        safe_load(pickle.dumps(obj))


def test_restricted_unpickler_keeps_plain_data() -> None:
    data = {"a": [1, 2.5, "x", None, True], "b": (np.int64(3), np.float32(1.5)), "c": {1, 2}, "d": b"\x00\xff"}
    assert safe_load(pickle.dumps(data, protocol=2)) == data


# ------------------------------------------------------------------------------------- RICH


def _rich_label(n: int, gender: str) -> dict:
    return {
        "gt_smplx_params": {
            "global_orient": torch.randn(n, 3),
            "body_pose": torch.randn(n, 63),
            "betas": torch.randn(n, 10),
            "transl": torch.randn(n, 3),
        },
        "gender": gender,
        "frame_id": torch.arange(n) * 2,
    }


def test_rich_labels_read_with_weights_only(tmp_path: Path) -> None:
    labels = {
        "test/Gym_010_dips2/cam_05": _rich_label(6, "male"),
        "test/ParkingLot2_009_overfence1/cam_04": _rich_label(4, "female"),
    }
    path = tmp_path / "rich_test_labels.pt"
    torch.save(labels, path)
    seqs = read_rich_labels(path)
    assert list(seqs) == list(labels)
    gym = seqs["test/Gym_010_dips2/cam_05"]
    assert gym.gender == "male" and gym.body_pose.shape == (6, 63)
    np.testing.assert_array_equal(gym.frame_id, np.arange(6) * 2)
    np.testing.assert_allclose(gym.transl, labels["test/Gym_010_dips2/cam_05"]["gt_smplx_params"]["transl"].numpy())

    cams = {"Gym_010_cam_05": (torch.eye(4), torch.eye(3) * 2)}
    torch.save(cams, tmp_path / "cam2params.pt")
    t_w2c, k = read_rich_cameras(tmp_path / "cam2params.pt")["Gym_010_cam_05"]
    assert t_w2c.shape == (4, 4) and k[0, 0] == 2.0


class _NotWeights:
    pass


def test_rich_refuses_files_that_are_not_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "rich_test_labels.pt"
    torch.save({"test/x/cam_00": _NotWeights()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        read_rich_labels(path)


def test_rich_malformed_sequence_is_named(tmp_path: Path) -> None:
    label = _rich_label(3, "male")
    del label["gt_smplx_params"]["transl"]
    torch.save({"test/Gym_013_burpee4/cam_06": label}, tmp_path / "l.pt")
    with pytest.raises(ValueError, match="Gym_013_burpee4"):
        read_rich_labels(tmp_path / "l.pt")


def test_smplx_to_smpl_vertices_dense_and_sparse() -> None:
    verts = np.random.default_rng(3).normal(size=(2, 5, 3))
    mapping = np.zeros((3, 5))
    mapping[0, 4] = 1.0
    mapping[1, [0, 1]] = 0.5
    mapping[2, 2] = 1.0
    expected = np.einsum("sv,fvc->fsc", mapping, verts)
    np.testing.assert_allclose(smplx_to_smpl_vertices(verts, mapping), expected)
    sparse = torch.from_numpy(mapping).to_sparse()
    np.testing.assert_allclose(smplx_to_smpl_vertices(verts, sparse), expected)
