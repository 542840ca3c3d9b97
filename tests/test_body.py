"""Body models: SMPL (blend shapes, skinning, joints, file layout, on a synthetic model in SMPL's layout), the
official pickle's restricted converter, and SMPL-X on the same chain and skinning."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from unish_model.body import (NUM_JOINTS, SMPL_PARENTS, BodyModel, SmplxModel, synthetic_body_arrays,
                              write_synthetic_body_model)
from unish_model.geometry import axis_angle_to_matrix


@pytest.fixture(scope="module")
def small_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_body_model(tmp_path_factory.mktemp("body") / "smpl_small.npz", seed=3, ring_size=8,
                                      rings=64)


@pytest.fixture(scope="module")
def small_model(small_model_file: Path) -> BodyModel:
    return BodyModel.from_file(small_model_file, dtype=torch.float64)


def _reference_smpl(arrays: dict[str, np.ndarray], pose_aa: np.ndarray, betas: np.ndarray,
                    transl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SMPL written out the slow way (per joint 4x4 chain, per vertex blend) with scipy rotations."""
    parents = list(SMPL_PARENTS)
    rot = Rotation.from_rotvec(pose_aa.reshape(NUM_JOINTS, 3)).as_matrix()
    shaped = arrays["v_template"] + arrays["shapedirs"][..., : len(betas)] @ betas
    rest = arrays["J_regressor"] @ shaped
    feature = np.concatenate([(rot[j] - np.eye(3)).ravel() for j in range(1, NUM_JOINTS)])
    posed = shaped + arrays["posedirs"] @ feature
    world = []
    for j in range(NUM_JOINTS):
        local = np.eye(4)
        local[:3, :3] = rot[j]
        local[:3, 3] = rest[j] - (rest[parents[j]] if j else 0)
        world.append(local if j == 0 else world[parents[j]] @ local)
    verts = np.zeros_like(posed)
    for v in range(posed.shape[0]):
        m = np.zeros((4, 4))
        for j in np.nonzero(arrays["weights"][v])[0]:
            g = world[j].copy()
            g[:3, 3] -= g[:3, :3] @ rest[j]
            m += arrays["weights"][v, j] * g
        verts[v] = m[:3, :3] @ posed[v] + m[:3, 3]
    joints = np.stack([w[:3, 3] for w in world])
    return verts + transl, joints + transl


def test_default_synthetic_model_has_smpl_sizes(tmp_path: Path) -> None:
    path = write_synthetic_body_model(tmp_path / "smpl.npz", seed=0)
    with np.load(path, allow_pickle=False) as d:
        shapes = {k: d[k].shape for k in d.files}
        weights, regressor = d["weights"], d["J_regressor"]
    assert shapes == {"v_template": (6890, 3), "f": (13776, 3), "J_regressor": (24, 6890), "weights": (6890, 24),
                      "shapedirs": (6890, 3, 10), "posedirs": (6890, 3, 207), "kintree_table": (2, 24)}
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(regressor.sum(1), 1.0, atol=1e-12)
    model = BodyModel.from_file(path)
    assert model.num_vertices == 6890 and model.faces.shape == (13776, 3)
    # the mesh is one closed surface with SMPL's topology (genus 0: V - E + F = 2)
    faces = model.faces.numpy()
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()
    assert 6890 - len(unique) + 13776 == 2
    height = model.v_template[:, 1].max() - model.v_template[:, 1].min()
    assert 1.4 < float(height) < 2.0  # human-sized, metres


def test_zero_pose_gives_template_plus_shape(small_model: BodyModel, small_model_file: Path) -> None:
    with np.load(small_model_file) as d:
        template, shapedirs = d["v_template"], d["shapedirs"]
    betas = np.array([1.5, -0.7, 0.3, 0.0, 2.0], dtype=np.float64)
    out = small_model(torch.zeros(3, dtype=torch.float64), torch.zeros(69, dtype=torch.float64),
                      torch.from_numpy(betas))
    np.testing.assert_allclose(out.vertices.numpy(), template + shapedirs[..., :5] @ betas, atol=1e-6)
    # with betas the template really moves (so the check above is not vacuous)
    assert np.abs(shapedirs[..., :5] @ betas).max() > 1e-2


def test_matches_slow_reference(small_model: BodyModel, small_model_file: Path) -> None:
    with np.load(small_model_file) as d:
        arrays = {k: d[k].astype(np.float64) for k in d.files}
    rng = np.random.default_rng(0)
    pose = rng.normal(0, 0.4, size=72)
    betas = rng.normal(0, 1, size=10)
    transl = rng.normal(0, 1, size=3)
    ref_v, ref_j = _reference_smpl(arrays, pose, betas, transl)
    t = lambda x: torch.from_numpy(x)  # noqa: E731
    out = small_model(t(pose[:3]), t(pose[3:]), t(betas), t(transl))
    np.testing.assert_allclose(out.vertices.numpy(), ref_v, atol=1e-9)
    np.testing.assert_allclose(out.joints.numpy(), ref_j, atol=1e-9)
    # rotation matrices and axis-angle give the same body
    rm = axis_angle_to_matrix(t(pose).reshape(24, 3))
    out2 = small_model(rm[0], rm[1:], t(betas), t(transl))
    np.testing.assert_allclose(out2.vertices.numpy(), ref_v, atol=1e-9)


def test_root_rotation_is_rigid(small_model: BodyModel) -> None:
    g = torch.Generator().manual_seed(1)
    body = torch.randn(69, generator=g, dtype=torch.float64) * 0.3
    betas = torch.randn(10, generator=g, dtype=torch.float64)
    base = small_model(torch.zeros(3, dtype=torch.float64), body, betas)
    root = torch.tensor([0.3, -1.2, 0.5], dtype=torch.float64)
    r = axis_angle_to_matrix(root)
    turned = small_model(root, body, betas)
    pivot = base.rest_joints[0]  # SMPL rotates about the rest pelvis
    expected = (base.vertices - pivot) @ r.T + pivot
    torch.testing.assert_close(turned.vertices, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(turned.joints, (base.joints - pivot) @ r.T + pivot, atol=1e-10, rtol=0)
    assert (turned.vertices - base.vertices).abs().max() > 0.1


def test_joints_and_regressor(small_model: BodyModel) -> None:
    zero = small_model(torch.zeros(3, dtype=torch.float64), torch.zeros(69, dtype=torch.float64),
                       torch.ones(10, dtype=torch.float64), torch.tensor([0.1, 0.2, 3.0], dtype=torch.float64))
    torch.testing.assert_close(zero.joints, small_model.J_regressor.double() @ zero.vertices, atol=1e-9, rtol=0)
    # posed: regress_joints is J_regressor @ posed vertices (the evaluation protocol), batched
    posed = small_model(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 69, dtype=torch.float64) * 0.3)
    regressed = small_model.regress_joints(posed.vertices)
    assert regressed.shape == (4, 24, 3)
    torch.testing.assert_close(regressed[2], small_model.J_regressor.double() @ posed.vertices[2])
    assert (regressed - posed.joints).norm(dim=-1).max() < 0.05  # close to the chain's joints, not equal


def test_batch_shapes_and_float32(small_model_file: Path) -> None:
    model = BodyModel.from_file(small_model_file)
    out = model(torch.zeros(2, 3, 3, 3) + torch.eye(3), torch.zeros(2, 3, 23, 3), torch.zeros(2, 3, 10),
                torch.zeros(2, 3, 3))
    assert out.vertices.shape == (2, 3, model.num_vertices, 3) and out.vertices.dtype == torch.float32
    with pytest.raises(ValueError, match="body_pose"):
        model(torch.zeros(3), torch.zeros(60))


def test_file_round_trip(small_model_file: Path, tmp_path: Path) -> None:
    arrays = synthetic_body_arrays(seed=3, ring_size=8, rings=64)
    with np.load(small_model_file, allow_pickle=False) as d:
        for key, value in arrays.items():
            np.testing.assert_array_equal(d[key], value)
    # aliases: `faces` and `kintree` load the same model
    renamed = dict(arrays)
    renamed["faces"] = renamed.pop("f")
    renamed["kintree"] = renamed.pop("kintree_table")
    np.savez(tmp_path / "alias.npz", **renamed)
    a = BodyModel.from_file(small_model_file)
    b = BodyModel.from_file(tmp_path / "alias.npz")
    torch.testing.assert_close(a.faces, b.faces)
    torch.testing.assert_close(a(torch.ones(3), torch.ones(69) * 0.1).vertices,
                               b(torch.ones(3), torch.ones(69) * 0.1).vertices)


def test_missing_key_names_the_file(tmp_path: Path) -> None:
    arrays = synthetic_body_arrays(seed=0, ring_size=4, rings=60)
    del arrays["posedirs"]
    path = tmp_path / "broken_model.npz"
    np.savez(path, **arrays)
    with pytest.raises(KeyError, match=r"broken_model\.npz.*posedirs"):
        BodyModel.from_file(path)
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        BodyModel.from_file(tmp_path / "nowhere.npz")
    np.savez(tmp_path / "objects.npz", v_template=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="objects.npz"):
        BodyModel.from_file(tmp_path / "objects.npz")


def _fake_official_pickle(path: Path, arrays: dict[str, np.ndarray], protocol: int) -> None:
    """A pickle laid out like SMPL's: shapedirs as a chumpy Ch (a stand-in class registered as chumpy.ch.Ch
    while pickling), J_regressor as a scipy sparse matrix, plus extra keys the reader ignores."""
    import pickle
    import sys
    import types

    import scipy.sparse

    class Ch:  # what chumpy's Ch pickles as: its __dict__ with the value under 'x'
        def __init__(self, x: np.ndarray) -> None:
            self.x = x
            self.label = "shapedirs"

    module = types.ModuleType("chumpy.ch")
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    module.Ch = Ch  # type: ignore[attr-defined]
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = types.ModuleType("chumpy"), module
    try:
        data = dict(arrays)
        data["shapedirs"] = Ch(arrays["shapedirs"])
        data["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"])
        data["bs_style"], data["bs_type"] = "lbs", "lrotmin"
        with path.open("wb") as f:
            pickle.dump(data, f, protocol=protocol)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


@pytest.mark.parametrize("protocol", [1, 2])
def test_official_pickle_converts_with_restricted_reader(tmp_path: Path, protocol: int) -> None:
    from unish_model.body import convert_smpl_pickle

    arrays = synthetic_body_arrays(seed=5, ring_size=4, rings=60)
    _fake_official_pickle(tmp_path / "SMPL_NEUTRAL.pkl", arrays, protocol)
    out = convert_smpl_pickle(tmp_path / "SMPL_NEUTRAL.pkl", tmp_path / "SMPL_NEUTRAL.npz")
    with np.load(out, allow_pickle=False) as d:
        for key, value in arrays.items():
            np.testing.assert_allclose(d[key], value, atol=0, err_msg=key)
    BodyModel.from_file(out)


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    import os
    import pickle

    from unish_model.body import convert_smpl_pickle

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"v_template": Evil()}))
    with pytest.raises(ValueError, match="evil.pkl.*refusing"):
        convert_smpl_pickle(tmp_path / "evil.pkl", tmp_path / "evil.npz")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "evil.npz").exists()


def test_three_frames_of_axis_angle_are_not_read_as_one_matrix(tmp_path):
    model = BodyModel.from_file(write_synthetic_body_model(tmp_path / "b.npz", ring_size=8, rings=60))
    torch.manual_seed(0)
    aa = torch.randn(3, 3) * 0.5  # three frames' global_orient, axis-angle
    body = torch.zeros(3, 23, 3)
    batched = model(aa, body).vertices
    one_by_one = torch.stack([model(aa[i], body[i]).vertices for i in range(3)])
    torch.testing.assert_close(batched, one_by_one)
    as_matrices = model(axis_angle_to_matrix(aa), body).vertices
    torch.testing.assert_close(batched, as_matrices)


# ----------------------------------------------------------------------------------------------- SMPL-X


def smplx_from_smpl(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A 55-joint SMPL-X-layout model that equals the SMPL one when hands, jaw and eyes are at rest: joints 0-21 as
    SMPL, SMPL's hand joints 22 / 23 become the first finger joints 25 / 40 (children of the wrists)."""
    parents = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
               20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
               21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53]
    to_x = {j: j for j in range(22)} | {22: 25, 23: 40}
    v = arrays["v_template"].shape[0]
    jreg = np.zeros((55, v))
    weights = np.zeros((v, 55))
    posedirs = np.zeros((v, 3, 54 * 9))
    for j, jx in to_x.items():
        jreg[jx] = arrays["J_regressor"][j]
        weights[:, jx] = arrays["weights"][:, j]
        if j > 0:
            posedirs[..., (jx - 1) * 9: jx * 9] = arrays["posedirs"][..., (j - 1) * 9: j * 9]
    for jx in range(55):  # joints without an SMPL counterpart sit on their parent
        if jx not in to_x.values():
            jreg[jx] = jreg[parents[jx]]
    return {"v_template": arrays["v_template"], "f": arrays["f"], "shapedirs": arrays["shapedirs"],
            "posedirs": posedirs, "J_regressor": jreg, "weights": weights,
            "kintree_table": np.stack([np.array(parents), np.arange(55)]), "hands_meanl": np.zeros(45),
            "hands_meanr": np.zeros(45)}


def test_smplx_model_equals_smpl_at_rest_hands(tmp_path: Path) -> None:
    arrays = synthetic_body_arrays()
    np.savez(tmp_path / "smpl.npz", **arrays)
    body = BodyModel.from_file(tmp_path / "smpl.npz")
    np.savez(tmp_path / "x.npz", **smplx_from_smpl(arrays))
    smplx = SmplxModel.from_file(tmp_path / "x.npz")
    rng = np.random.default_rng(0)
    go, bp, betas, tr = rng.normal(size=(3, 3)), 0.3 * rng.normal(size=(3, 63)), rng.normal(size=(3, 10)), \
        rng.normal(size=(3, 3))
    vx = smplx.vertices(go, bp, betas, tr).numpy()
    body_pose = np.concatenate([bp, np.zeros((3, 6))], axis=1).reshape(3, 23, 3)  # SMPL's hands at rest
    vs = body(axis_angle_to_matrix(torch.from_numpy(go)), torch.from_numpy(body_pose), torch.from_numpy(betas),
              torch.from_numpy(tr)).vertices.numpy()
    np.testing.assert_allclose(vx, vs, atol=2e-5)


def test_smplx_file_must_have_55_joints(tmp_path: Path) -> None:
    np.savez(tmp_path / "smpl_as_smplx.npz", **synthetic_body_arrays(ring_size=4, rings=60))
    with pytest.raises(ValueError, match="24 joints, expected 55"):
        SmplxModel.from_file(tmp_path / "smpl_as_smplx.npz")


def test_pickle_converter_command_line(tmp_path: Path) -> None:
    """`python -m unish_model.body SMPL_NEUTRAL.pkl SMPL_NEUTRAL.npz`, as the README documents it."""
    import subprocess
    import sys

    arrays = synthetic_body_arrays(seed=5, ring_size=4, rings=60)
    _fake_official_pickle(tmp_path / "SMPL_NEUTRAL.pkl", arrays, 2)
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "unish_model.body", str(tmp_path / "SMPL_NEUTRAL.pkl"),
                          str(tmp_path / "SMPL_NEUTRAL.npz")], cwd=repo, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert BodyModel.from_file(tmp_path / "SMPL_NEUTRAL.npz").num_vertices == len(arrays["v_template"])
    usage = subprocess.run([sys.executable, "-m", "unish_model.body"], cwd=repo, capture_output=True, text=True)
    assert usage.returncode == 1 and "usage: python -m unish_model.body" in usage.stderr


# ------------------------------------------------------------------------------------------ against smplx.SMPL


def test_body_model_equals_smplx_smpl_on_the_same_arrays(tmp_path: Path) -> None:
    """Our loader and skinning against the reference implementation (the `smplx` package, 0.1.28) on the synthetic
    model at SMPL's size: same vertices and joints for random poses, shapes and translations.  smplx is given the
    arrays themselves (its own SMPL loader would unpickle the file); our BodyModel keeps loading the .npz without
    pickle."""
    import smplx  # a test dependency: its absence is a failure, not a skip
    from smplx.utils import Struct

    path = write_synthetic_body_model(tmp_path / "smpl.npz", seed=7)
    with np.load(path, allow_pickle=False) as d:
        arrays = {k: d[k] for k in d.files}
    reference = smplx.SMPL(model_path=str(path), data_struct=Struct(**arrays), num_betas=10, batch_size=1)
    ours = BodyModel.from_file(path)
    g = torch.Generator().manual_seed(0)
    n = 16
    go, bp = torch.randn(n, 3, generator=g) * 0.8, torch.randn(n, 69, generator=g) * 0.5
    betas, transl = torch.randn(n, 10, generator=g), torch.randn(n, 3, generator=g)
    with torch.no_grad():
        ref = reference(global_orient=go, body_pose=bp, betas=betas, transl=transl)
        out = ours(go, bp, betas, transl)
    # Both run in float32 from the same float64 arrays, in a different order of operations: they differ by float32
    # rounding, ~eps * |v| per operation (measured 4.8e-7 m on vertices up to 3.3 m here; eps = 1.2e-7).  The bound,
    # 16 eps |v|max = 6e-6 m, is far below any real disagreement (a wrong blend shape or joint moves vertices by mm).
    bound = 16 * torch.finfo(torch.float32).eps * float(ref.vertices.abs().max())
    assert float(ref.vertices.abs().max()) > 1.0 and bound < 1e-5
    torch.testing.assert_close(out.vertices, ref.vertices, atol=bound, rtol=0)
    torch.testing.assert_close(out.joints, ref.joints[:, :24], atol=bound, rtol=0)  # smplx appends 21 vertex joints
    # the comparison can see a difference: 0.01 more of one beta moves vertices by ~0.6 mm, 100 times the bound
    moved = ours(go, bp, betas + torch.tensor([1e-2] + [0.0] * 9), transl).vertices
    assert float((moved - ref.vertices).abs().max()) > 10 * bound
