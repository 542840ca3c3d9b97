"""Small scenes in BEDLAM's released layout, made by the tests (BEDLAM itself needs registration).

Body models: a synthetic SMPL (unish_model.body.synthetic, small) and a synthetic SMPL-X made from it
(`smplx_from_smpl` of tests/test_body.py: equal to the SMPL when SMPL-X's extra joints are at rest and SMPL's hand
joints are SMPL-X's first finger joints), with SMPL-X's layout grown where SMPL and SMPL-X differ:

- more vertices than SMPL: SMPL's vertices sit at shuffled places among extra ones (midpoints of vertex pairs), so
  the SMPL-X -> SMPL map (written as GVHMR writes it: a sparse torch tensor) is a real permutation-and-selection,
  exact where it should be (one-hot rows);
- an 11th shape direction (BEDLAM's labels have 11 SMPL-X betas) that SMPL cannot express (a random per-vertex
  displacement): a body with beta 11 = 0 is exactly a SMPL body, with beta 11 = b it is b cm off, more or less.

A scene: frames rendered by rasterising the body (white on a grey background; an optional dark occluder), depth
EXR files written with OpenEXR as BEDLAM's post-render tool writes them (one FLOAT channel "Depth", ZIP, centimetres;
the background is a plane whose depth grows with the column, so a wrong pixel mapping shows), optional per-actor
masks, and the processed npz with BEDLAM's arrays (`gender` and `sub` as object arrays of strings, which numpy
pickles). Closeup scenes are rendered upright and stored turned 90 degrees counter-clockwise, so that BEDLAM's
clockwise turn makes them upright again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from unish_model.body import BodyModel, synthetic_body_arrays
from unish_model.losses.raster import rasterize

STORED_W, STORED_H = 320, 180  # BEDLAM: 1280x720; smaller here, same aspect
FOCAL = 280.0
BACKGROUND_M = 5.0  # the background plane's depth at column 0 (it grows by 1 m across the frame)
STEP = 5  # BEDLAM's processed labels keep every 5th 30 fps frame (6 fps)


@dataclass
class Models:
    smpl: Path
    smplx: Path
    smplx2smpl: Path
    body: BodyModel  # the SMPL, float64


def write_models(d: Path, seed: int = 3) -> Models:
    from test_body import smplx_from_smpl

    d.mkdir(parents=True, exist_ok=True)
    arrays = synthetic_body_arrays(seed=seed, ring_size=8, rings=64)
    np.savez(d / "SMPL_NEUTRAL.npz", **arrays)
    x = smplx_from_smpl(arrays)
    rng = np.random.default_rng(seed)
    vs = arrays["v_template"].shape[0]
    extra = 97
    pairs = rng.integers(0, vs, size=(extra, 2))
    vx = vs + extra
    perm = rng.permutation(vx)[:vs]  # SMPL vertex i is SMPL-X vertex perm[i]
    others = np.setdiff1d(np.arange(vx), perm)

    def grow(a: np.ndarray) -> np.ndarray:  # per-vertex array (Vs, ...) -> (Vx, ...)
        out = np.zeros((vx, *a.shape[1:]), a.dtype)
        out[perm] = a
        out[others] = 0.5 * (a[pairs[:, 0]] + a[pairs[:, 1]])
        return out

    shapedirs = grow(x["shapedirs"])
    eleventh = rng.normal(0, 0.01, size=(vx, 3, 1))  # 1 cm per unit, per vertex: nothing SMPL can express
    jreg = np.zeros((55, vx))
    jreg[:, perm] = x["J_regressor"]
    np.savez(d / "SMPLX_NEUTRAL.npz", v_template=grow(x["v_template"]), f=x["f"],
             shapedirs=np.concatenate([shapedirs, eleventh], axis=2), posedirs=grow(x["posedirs"]),
             J_regressor=jreg, weights=grow(x["weights"]), kintree_table=x["kintree_table"],
             hands_meanl=x["hands_meanl"], hands_meanr=x["hands_meanr"])
    mapping = torch.zeros(vs, vx, dtype=torch.float64)
    mapping[torch.arange(vs), torch.from_numpy(perm)] = 1.0
    torch.save(mapping.to_sparse(), d / "smplx2smpl_sparse.pt")
    return Models(d / "SMPL_NEUTRAL.npz", d / "SMPLX_NEUTRAL.npz", d / "smplx2smpl_sparse.pt",
                  BodyModel.from_file(d / "SMPL_NEUTRAL.npz", dtype=torch.float64))


def smplx_pose(smpl_pose: np.ndarray) -> np.ndarray:
    """(N, 72) SMPL -> (N, 165) SMPL-X full pose of the same body: root + 21 body joints, SMPL's hand joints as
    the first finger joint of each hand (joints 25 and 40), everything else at rest."""
    n = len(smpl_pose)
    full = np.zeros((n, 55, 3))
    full[:, :22] = smpl_pose[:, :66].reshape(n, 22, 3)
    full[:, 25] = smpl_pose[:, 66:69]
    full[:, 40] = smpl_pose[:, 69:72]
    return full.reshape(n, 165)


@dataclass
class Person:
    """One person's SMPL body in the camera frame over the labelled frames (30 fps frame numbers)."""

    frames: list[int]
    pose: np.ndarray  # (N, 72)
    betas: np.ndarray  # (10,)
    trans: np.ndarray  # (N, 3) SMPL transl, camera frame
    beta11: float = 0.0  # SMPL-X's 11th shape coefficient (0: exactly a SMPL body)
    sub: str = "rp_test_person"


def walking_person(frames: list[int], seed: int, x0: float = 0.0, depth: float = 3.2, sub: str = "rp_a",
                   beta11: float = 0.0) -> Person:
    rng = np.random.default_rng(seed)
    n = len(frames)
    pose = rng.normal(0, 0.15, size=(n, 72))
    pose[:, :3] = np.array([np.pi, 0.0, 0.0]) + rng.normal(0, 0.1, size=(n, 3))  # upright in OpenCV's camera
    phase = np.linspace(0, 1.5, n)
    pose[:, 3 * 16 + 2] = -1.1 + 0.2 * np.sin(phase)  # arms down-ish, so the box is not all arms
    pose[:, 3 * 17 + 2] = 1.1 + 0.2 * np.sin(phase)
    trans = np.stack([x0 + 0.05 * np.arange(n), np.full(n, -0.1), depth + 0.02 * np.arange(n)], 1)
    return Person(frames, pose, rng.normal(0, 0.8, size=10), trans, beta11, sub)


def smpl_vertices(body: BodyModel, pose: np.ndarray, betas: np.ndarray, trans: np.ndarray) -> torch.Tensor:
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    n = len(pose)
    return body(t(pose[:, :3]), t(pose[:, 3:]), t(np.broadcast_to(betas, (n, len(betas)))), t(trans)).vertices


def true_vertices(models: Models, person: Person) -> torch.Tensor:
    """The person's body as rendered (the SMPL-X body, in SMPL's topology through the map), camera frame."""
    from unish_model.benchmarks.rich import load_smplx2smpl, map_vertices
    from unish_model.body import SmplxModel

    shape = np.concatenate([person.betas, [person.beta11]])
    vx = SmplxModel.from_file(models.smplx).posed_vertices(smplx_pose(person.pose), shape, person.trans)
    return map_vertices(load_smplx2smpl(models.smplx2smpl), vx)


def intrinsics(width: int, height: int, focal: float = FOCAL) -> np.ndarray:
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])


def write_depth_exr(path: Path, depth_cm: np.ndarray) -> None:
    """As BEDLAM's exr_save_depth_masks.py writes depth: one FLOAT channel named Depth, ZIP compression."""
    import OpenEXR

    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"Depth": np.ascontiguousarray(depth_cm, dtype=np.float32)}) as f:
        f.write(str(path))


def background_depth(width: int, height: int) -> np.ndarray:
    """Metres of the upright frame: a plane at BACKGROUND_M at the top left, 8 m farther at the right, 2 m farther at
    the bottom (one source pixel is 0.5% of the depth or more along x: a pixel mapping off by one shows)."""
    cols = (np.arange(width) + 0.5) / width
    rows = (np.arange(height) + 0.5) / height
    return BACKGROUND_M + 8.0 * cols[None, :] + 2.0 * rows[:, None]


COLOURS = [(255, 255, 255), (255, 60, 60)]  # person 0 white, person 1 red, on grey 90; the occluder dark (20)


@dataclass
class SceneSpec:
    name: str
    sequence: str = "seq_000000"
    people: list[Person] = field(default_factory=list)
    cam_t: tuple[float, float, float] = (0.1, -0.2, 0.4)  # cam_ext translation: BEDLAM adds it after the body
    occluder: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 of the upright frame, at 2 m
    masks: bool = False  # write per-actor masks (a distractor actor 00, the person as actor 01)
    labels_as_smpl: bool = False  # SMPL labels (pose 72, betas 10) instead of SMPL-X

    @property
    def rotated(self) -> bool:
        return "closeup" in self.name


def write_scene(root: Path, labels_dir: Path, models: Models, spec: SceneSpec) -> dict:
    """Render one scene; returns what was rendered, in upright pixels: `zbuf` (frame -> depth, metres), `owner`
    (frame -> person index per pixel, -1 background, -2 occluder), `k` and the `upright` size."""
    upright_w, upright_h = (STORED_H, STORED_W) if spec.rotated else (STORED_W, STORED_H)
    k = intrinsics(upright_w, upright_h)
    cam_t = np.asarray(spec.cam_t)
    seq_dir = root / spec.name
    frames = sorted({f for p in spec.people for f in p.frames})
    silhouettes: dict[int, dict[int, np.ndarray]] = {}  # person -> frame -> upright bool mask (visible)
    zbuf = {f: background_depth(upright_w, upright_h).copy() for f in frames}
    owner = {f: np.full((upright_h, upright_w), -1) for f in frames}
    if spec.occluder is not None:
        x0, y0, x1, y1 = spec.occluder
        for f in frames:
            zbuf[f][y0:y1, x0:x1] = 2.0
            owner[f][y0:y1, x0:x1] = -2
    for pi, person in enumerate(spec.people):
        verts = true_vertices(models, person)
        raster = rasterize(verts, models.body.faces, torch.from_numpy(np.repeat(k[None], len(verts), 0)),
                           (upright_h, upright_w))
        for i, f in enumerate(person.frames):
            z = raster.depth[i].numpy()
            nearer = z < zbuf[f]
            zbuf[f] = np.where(nearer, z, zbuf[f])
            owner[f] = np.where(nearer, pi, owner[f])
    for pi in range(len(spec.people)):
        silhouettes[pi] = {f: owner[f] == pi for f in frames}
    rows = []
    for f in frames:
        image = np.full((upright_h, upright_w, 3), 90, np.uint8)
        for pi in range(len(spec.people)):
            image[owner[f] == pi] = COLOURS[pi]
        image[owner[f] == -2] = 20
        stem = f"{spec.sequence}_{f:04d}"
        store = (lambda a: np.rot90(a, 1)) if spec.rotated else (lambda a: a)  # noqa: E731
        png = seq_dir / "png" / spec.sequence / f"{stem}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(png), np.ascontiguousarray(store(image)[..., ::-1]))
        write_depth_exr(seq_dir / "depth" / spec.sequence / f"{stem}_depth.exr", store(zbuf[f] * 100.0))
        if spec.masks:
            mdir = seq_dir / "masks" / spec.sequence
            mdir.mkdir(parents=True, exist_ok=True)
            distractor = np.zeros((upright_h, upright_w), np.uint8)
            distractor[5:40, 5:60] = 255
            cv2.imwrite(str(mdir / f"{stem}_00_body.png"), np.ascontiguousarray(store(distractor)))
            cv2.imwrite(str(mdir / f"{stem}_env.png"), np.ascontiguousarray(store(255 - distractor)))
            for pi in range(len(spec.people)):
                m = silhouettes[pi][f].astype(np.uint8) * 255
                if m.any():  # BEDLAM writes an actor's mask only where it is in view
                    body = m.copy()
                    body[: upright_h // 2] = 0  # body and clothing split, as BEDLAM's are: the union is the person
                    cloth = m.copy()
                    cloth[upright_h // 2:] = 0
                    cv2.imwrite(str(mdir / f"{stem}_{pi + 1:02d}_body.png"), np.ascontiguousarray(store(body)))
                    cv2.imwrite(str(mdir / f"{stem}_{pi + 1:02d}_clothing.png"), np.ascontiguousarray(store(cloth)))
    for pi, person in enumerate(spec.people):
        for i, f in enumerate(person.frames):
            rows.append((pi, i, f))
    rows.sort(key=lambda r: (r[2], r[0]))  # BEDLAM's npz lists rows body by body; any order must work
    n = len(rows)
    pose = np.zeros((n, 72 if spec.labels_as_smpl else 165))
    shape = np.zeros((n, 10 if spec.labels_as_smpl else 11))
    trans_cam = np.zeros((n, 3))
    for r, (pi, i, f) in enumerate(rows):
        p = spec.people[pi]
        pose[r] = p.pose[i] if spec.labels_as_smpl else smplx_pose(p.pose[i:i + 1])[0]
        shape[r, :10] = p.betas
        if not spec.labels_as_smpl:
            shape[r, 10] = p.beta11
        trans_cam[r] = p.trans[i] - cam_t
    ext = np.repeat(np.eye(4)[None], n, 0)
    ext[:, :3, 3] = cam_t
    labels_dir.mkdir(parents=True, exist_ok=True)
    np.savez(labels_dir / f"{spec.name}.npz",
             imgname=np.array([f"{spec.sequence}/{spec.sequence}_{f:04d}.png" for _, _, f in rows]),
             center=np.zeros((n, 2)), scale=np.ones(n), pose_cam=pose, pose_world=pose, shape=shape,
             trans_cam=trans_cam, trans_world=trans_cam, gtkps=np.zeros((n, 127, 3)),
             cam_int=np.repeat(k[None], n, 0), cam_ext=ext,
             gender=np.array(["neutral"] * n, dtype=object),
             sub=np.array([spec.people[pi].sub for pi, _, _ in rows], dtype=object))
    return {"zbuf": zbuf, "owner": owner, "k": k, "upright": (upright_w, upright_h)}
