"""Benchmark the training losses: each stage's objective for a batch of 2 clips x 30 frames at 518x294, and how
the rasteriser, the Chamfer distance and the ROE solver scale with their sizes.

    .venv/bin/python bench/losses.py [--threads 2] [--repeats 2] [--device cpu] [--rows stage1,raster,...]

Each row runs in a fresh child process, so its peak resident memory (ru_maxrss) belongs to that run alone:
`base MB` is the process after importing torch and building the inputs, `peak MB` the highest point during the
warm-up and timed calls (on CUDA: the peak of torch's allocator during the timed calls).  `fwd s` is the loss,
`bwd s` its backward pass (rows without gradients show -); the best of `--repeats` calls after one warm-up call.
On a small machine shared with other jobs, prefer `--threads 1`: when the cores are oversubscribed, two OpenMP
threads wait on each other at every one of the many small parallel regions (the 50k-point Chamfer row took
15x longer with 2 threads than with 1 under a load average of 7 on 2 cores).

Inputs are synthetic but sized like the real thing: a person (an ellipsoid, ~45% of the frame height) 2-2.5 m
away in front of a wall for stage 1 (MoGe-2 depth, SAM2 mask; K = 16 anchors, tau = 0.2 m gives patches of
~1-2 thousand pixels); the synthetic SMPL-layout body (6890 vertices, 13776 triangles) for stages 2 and 3, its
rendered depth as the person's point cloud in stage 3.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

B, T, H, W = 2, 30, 294, 518
FOCAL = 400.0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


# ------------------------------------------------------------------------------------------------ inputs


def _intrinsics(torch, b: int, t: int, device):  # noqa: ANN001, ANN202
    k = torch.tensor([[FOCAL, 0, W / 2], [0, FOCAL, H / 2], [0, 0, 1]], device=device)
    return k.expand(b, t, 3, 3).clone()


def _body(torch, device):  # noqa: ANN001, ANN202
    from unish_model.body import BodyModel, write_synthetic_body_model

    path = write_synthetic_body_model(Path(tempfile.mkdtemp()) / "smpl.npz")
    return BodyModel.from_file(path).to(device)


def _poses(torch, b: int, t: int, device):  # noqa: ANN001, ANN202
    from unish_model.geometry import axis_angle_to_matrix

    g = torch.Generator().manual_seed(0)
    aa = 0.25 * torch.randn(b, t, 24, 3, generator=g)
    aa[..., 0, :] = torch.tensor([math.pi, 0.0, 0.0]) + 0.1 * aa[..., 0, :]
    return axis_angle_to_matrix(aa).to(device), torch.randn(b, t, 10, generator=g).to(device)


def stage1_case(torch, device):  # noqa: ANN001, ANN202
    from unish_model.losses import Stage1Config, Stage1Inputs, stage1_loss

    g = torch.Generator().manual_seed(0)
    cols, rows = torch.meshgrid(torch.arange(W) + 0.5, torch.arange(H) + 0.5, indexing="xy")
    shift = torch.linspace(-30, 30, B * T)[:, None, None]
    r2 = ((cols - W / 2 - shift) / 60) ** 2 + ((rows - H / 2) / 132) ** 2
    person = r2 < 1
    depth = torch.where(person, 2.5 - 0.4 * (1 - r2).clamp_min(0).sqrt(), 5.0 + 0.004 * rows)
    depth = depth.reshape(B, T, H, W)
    valid = torch.rand(B, T, H, W, generator=g) > 0.02
    z = (depth - 0.5) / 3.0 * (1 + 0.01 * torch.randn(B, T, H, W, generator=g))
    points = torch.stack([(cols - W / 2) / FOCAL * z, (rows - H / 2) / FOCAL * z, z], -1)
    inputs = Stage1Inputs(points=points.to(device).requires_grad_(True), points_orig=(points * 1.01).to(device),
                          confidence=torch.rand(B, T, H, W, generator=g).to(device), depth=depth.to(device),
                          depth_valid=valid.to(device), intrinsics=_intrinsics(torch, B, T, device),
                          person_mask=person.reshape(B, T, H, W).to(device))
    gen_device = device if device.type == "cuda" else "cpu"
    return (lambda: stage1_loss(inputs, Stage1Config(), torch.Generator(gen_device).manual_seed(0))[0]), \
        f"K=16 anchors/frame, tau 0.2 m, ROE on 64 pts/patch"


def stage2_case(torch, device):  # noqa: ANN001, ANN202
    from unish_model.losses import Stage2Inputs, stage2_loss
    from unish_model.losses.raster import project_points

    body = _body(torch, device)
    pose, betas = _poses(torch, B, T, device)
    g = torch.Generator().manual_seed(1)
    gt = (torch.rand(B, T, H, W, 3, generator=g) * torch.tensor([4.0, 3.0, 2.0]) + torch.tensor([-2, -1.5, 2.5]))
    gt = gt.to(device)
    mask = torch.ones(B, T, H, W, dtype=torch.bool, device=device)
    trans = torch.tensor([0.0, 0.2, 3.5], device=device).expand(B, T, 3)
    k = _intrinsics(torch, B, T, device)
    with torch.no_grad():
        joints = body(pose[..., 0, :, :], pose[..., 1:, :, :], betas, trans).joints
    inputs = Stage2Inputs(local_points=0.4 * gt, point_mask=mask, scale=torch.full((B, 1), 2.0, device=device,
                                                                                   requires_grad=True),
                          trans_cam=(0.4 * trans).clone().requires_grad_(True), pose=pose.clone().requires_grad_(True),
                          betas=betas.clone().requires_grad_(True), intrinsics=k, gt_points=gt, gt_point_mask=mask,
                          gt_pose=pose, gt_betas=betas + 0.1, gt_trans=trans + 0.05,
                          gt_joints_2d=project_points(joints, k) + 3.0)
    return (lambda: stage2_loss(inputs, body)[0]), "SMPL 6890 verts x 4 posings, s_opt at 64x64"


def _stage3_inputs(torch, device, body):  # noqa: ANN001, ANN202
    from unish_model.losses import Stage3Inputs
    from unish_model.losses.raster import project_points, rasterize
    from unish_model.postprocess import depth_to_point_map

    pose, betas = _poses(torch, B, T, device)
    trans = torch.tensor([0.0, 0.2, 2.6], device=device).expand(B, T, 3)
    k = _intrinsics(torch, B, T, device)
    with torch.no_grad():
        out = body(pose[..., 0, :, :], pose[..., 1:, :, :], betas, trans)
        raster = rasterize(out.vertices, body.faces, k, (H, W))
        person = raster.face_index >= 0
        depth = torch.where(person, raster.depth, torch.full_like(raster.depth, 5.0)).float()
        k_norm = k.clone()
        k_norm[..., 0, :] /= W
        k_norm[..., 1, :] /= H
        points = depth_to_point_map(depth, k_norm) * 1.02
    return Stage3Inputs(pose=pose, betas=betas, transl=(trans + 0.03).clone().requires_grad_(True),
                        scene_points=points.requires_grad_(True), person_mask=person, intrinsics=k,
                        keypoints_2d=project_points(out.joints, k) + 2.0,
                        keypoints_conf=torch.rand(B, T, 24, device=device)), int(person.sum()) // (B * T)


def stage3_case(torch, device):  # noqa: ANN001, ANN202
    from unish_model.losses import stage3_loss

    body = _body(torch, device)
    inputs, person_px = _stage3_inputs(torch, device, body)
    return (lambda: stage3_loss(inputs, body)[0]), f"13776 tris z-buffered, ~{person_px} person px/frame"


def raster_case(torch, device, subdivisions: int, frames: int):  # noqa: ANN001, ANN202
    import trimesh

    from unish_model.losses.raster import visible_vertices

    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.5)
    verts = torch.tensor(sphere.vertices, dtype=torch.float32, device=device) + torch.tensor([0, 0, 2.0],
                                                                                              device=device)
    faces = torch.tensor(sphere.faces, device=device)
    verts = verts.expand(frames, -1, -1)
    k = _intrinsics(torch, 1, frames, device)[0]
    return (lambda: visible_vertices(verts, faces, k, (H, W))), f"{len(sphere.faces)} tris x {frames} frames"


def chamfer_case(torch, device, sources: int, targets: int, frames: int):  # noqa: ANN001, ANN202
    from unish_model.losses.chamfer import one_way_chamfer

    g = torch.Generator().manual_seed(2)
    src = (torch.randn(frames, sources, 3, generator=g) * 0.3 + torch.tensor([0, 0, 3.0])).to(device)
    tgt = (torch.randn(frames, targets, 3, generator=g) * 0.3 + torch.tensor([0, 0, 3.0])).to(device)
    src.requires_grad_(True)
    tgt.requires_grad_(True)
    return (lambda: one_way_chamfer(src, tgt).sum()), f"{sources} -> {targets} pts x {frames} frames"


def roe_case(torch, device, points: int, kind: str):  # noqa: ANN001, ANN202
    from unish_model.losses.roe import align_points_scale, align_points_scale_z_shift

    g = torch.Generator().manual_seed(3)
    rows = B * T if kind == "scale" else 1
    p = (torch.randn(rows, points, 3, generator=g) + torch.tensor([0, 0, 3.0])).to(device)
    q = 1.7 * p + 0.05 * torch.randn(rows, points, 3, generator=g).to(device)
    w = torch.ones(rows, points, device=device)
    p.requires_grad_(True)
    if kind == "scale":
        return (lambda: align_points_scale(p, q, w, 1.0).sum()), f"{rows} x {points} pts, scale only"
    return (lambda: align_points_scale_z_shift(p, q, w, 1.0)[0].sum()), f"{points} pts, anchor search"


ROWS = {
    "stage1": ("stage 1 total (2x30 @ 518x294)", lambda torch, d: stage1_case(torch, d)),
    "stage2": ("stage 2 total (2x30 @ 518x294)", lambda torch, d: stage2_case(torch, d)),
    "stage3": ("stage 3 total (2x30 @ 518x294)", lambda torch, d: stage3_case(torch, d)),
    **{f"raster{s}": (f"rasterise + visibility", (lambda s: lambda torch, d: raster_case(torch, d, s, 1))(s))
       for s in (3, 4, 5, 6)},
    "raster_batch": ("rasterise + visibility", lambda torch, d: raster_case(torch, d, 5, 60)),
    **{f"chamfer_p{p}": ("one-way Chamfer", (lambda p: lambda torch, d: chamfer_case(torch, d, 3000, p, 60))(p))
       for p in (5000, 20000, 50000)},
    **{f"chamfer_s{s}": ("one-way Chamfer", (lambda s: lambda torch, d: chamfer_case(torch, d, s, 20000, 60))(s))
       for s in (1000, 7000)},
    "roe_scale": ("ROE scale", lambda torch, d: roe_case(torch, d, 4096, "scale")),
    **{f"roe_zshift{n}": ("ROE scale + z-shift", (lambda n: lambda torch, d: roe_case(torch, d, n, "zshift"))(n))
       for n in (256, 1024, 4096)},
}


def child(row: str, repeats: int, threads: int | None, device_name: str) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    torch.manual_seed(0)
    call, detail = ROWS[row][1](torch, device)
    base = _rss_mb()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    out = call()  # warm-up
    if out.requires_grad:
        out.backward()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fwd, bwd = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        sync()
        fwd.append(time.perf_counter() - t0)
        if out.requires_grad:
            t0 = time.perf_counter()
            out.backward()
            sync()
            bwd.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else _rss_mb()
    return {"fwd": min(fwd), "bwd": min(bwd) if bwd else None, "base": base, "peak": peak, "detail": detail,
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeats, args.threads, args.device)))
        return

    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"unknown rows {unknown}; choose from {list(ROWS)}")
    print(f"losses on {args.device}, {args.threads} threads, best of {args.repeats} after a warm-up; "
          f"each row in a fresh process\n")
    print(f"{'row':32s} {'what':44s} {'fwd s':>7s} {'bwd s':>7s} {'base MB':>8s} {'peak MB':>8s}")
    results = {}
    for row in rows:
        cmd = [sys.executable, __file__, "--child", row, "--repeats", str(args.repeats), "--threads",
               str(args.threads), "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode:
            print(f"{row:32s} FAILED: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[row] = r
        bwd = f"{r['bwd']:7.2f}" if r["bwd"] is not None else f"{'-':>7s}"
        print(f"{ROWS[row][0]:32s} {r['detail']:44s} {r['fwd']:7.2f} {bwd} {r['base']:8.0f} {r['peak']:8.0f}")
    stages = [results.get(f"stage{i}") for i in (1, 2, 3)]
    if all(stages):
        per_step = sum(s["fwd"] + (s["bwd"] or 0) for s in stages)
        worst = max(s["peak"] for s in stages)
        print(f"\nsummary: the three stage losses for 2x30 frames at 518x294 take "
              + ", ".join(f"{s['fwd'] + (s['bwd'] or 0):.2f} s" for s in stages)
              + f" (forward + backward; {per_step:.1f} s together) with peak memory up to {worst:.0f} MB "
              f"on {args.device} with {args.threads} threads")
    else:
        print("\nsummary: " + ", ".join(f"{k} {v['fwd']:.2f} s" for k, v in results.items()))


if __name__ == "__main__":
    main()
