"""One prepared GPU check of training: a paper-size optimiser step of each stage (random weights, a synthetic
batch of 2 clips x 30 frames at 518x294, bf16 autocast), its time and peak memory, and stage 1's step against
the forward of the same batch. Needs torch only (and numpy), like `unish_model`.

    python bench/gpu_train_check.py --out bench/results/gpu_train_h200.json     # on a CUDA machine
    python bench/gpu_train_check.py --tiny --device cpu                          # a dry run of every code path

Goals (issue: the trainer): every stage fits in 80 GB per GPU at the paper's batch; a stage-1 step costs at
most 3x the forward of the same batch.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def synthetic_batch(batch: int, frames: int, height: int, width: int, device: str):
    """Every tensor a stage reads (unish_model/train/clips.py), plausible in range: a person in the middle."""
    from unish_model.train.batch import ClipBatch

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    disc = (((yy - height / 2) / (0.4 * height)) ** 2 + ((xx - width / 2) / (0.2 * width)) ** 2) < 1
    depth = (2.0 + 0.5 * xx / width + 0.3 * yy / height - 0.3 * disc).float()
    k = torch.tensor([[0.8 * width, 0, width / 2], [0, 0.8 * width, height / 2], [0, 0, 1.0]])
    lead = (batch, frames)
    pose = torch.zeros(*lead, 72)
    pose[..., 0] = torch.pi
    pose[..., 3:] = 0.2 * torch.randn(*lead, 69, generator=g)
    tensors = {
        "frames": torch.rand(*lead, 3, height, width, generator=g),
        "masks": disc.expand(*lead, -1, -1).clone(),
        "depth": depth.expand(*lead, -1, -1).clone(), "depth_valid": torch.ones(*lead, height, width, dtype=torch.bool),
        "intrinsics": k.expand(*lead, 3, 3).clone(),
        "keypoints": torch.stack([width / 2 + 40 * torch.randn(*lead, 24, generator=g),
                                  height / 2 + 80 * torch.randn(*lead, 24, generator=g)], -1),
        "keypoint_conf": torch.full((*lead, 24), 0.9),
        "gt_pose": pose, "gt_betas": torch.zeros(*lead, 10), "gt_trans": torch.tensor([0.0, 0.0, 3.0]).expand(*lead, 3).clone(),
        "gt_intrinsics": k.expand(*lead, 3, 3).clone(), "gt_extrinsics": torch.eye(4).expand(*lead, 4, 4).clone(),
        "gt_depth": depth.expand(*lead, -1, -1).clone(), "gt_depth_valid": torch.ones(*lead, height, width, dtype=torch.bool),
    }
    return ClipBatch(tensors, [f"clip{i}" for i in range(batch)], [{} for _ in range(batch)]).to(device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def stage_section(stage: int, config: Any, body: Any, batch: Any, device: str, repeats: int) -> dict[str, Any]:
    from unish_model.pipeline import UniSH
    from unish_model.train.loop import param_groups
    from unish_model.train.stages import StageStep, freeze_for_stage

    model = UniSH(config).to(device)
    freeze_for_stage(model, stage)
    step = StageStep(model, stage, body=body, activation_checkpointing=(stage == 2)).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=5e-5, betas=(0.9, 0.95))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def one_step() -> float:
        step.train()
        with amp:
            total, _ = step(batch, torch.Generator(device=device).manual_seed(0))
        total.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(total.detach())

    one_step()  # warm-up (allocator, kernels)
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        loss = one_step()
        sync(device)
        times.append(time.perf_counter() - t)
    row = {"stage": stage, "step_s": sorted(times)[len(times) // 2], "loss": loss,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
           "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    if stage == 1:  # the forward of the same batch, for the step/forward ratio
        with torch.no_grad(), amp:
            model.run_scene(batch["frames"])
            sync(device)
            t = time.perf_counter()
            for _ in range(repeats):
                model.run_scene(batch["frames"])
            sync(device)
        row["forward_s"] = (time.perf_counter() - t) / repeats
        row["step_over_forward"] = row["step_s"] / row["forward_s"]
    del model, step, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="the tiny model and 4 frames (a dry run)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from unish_model.body import BodyModel, write_synthetic_body_model
    from unish_model.pipeline import UniSHConfig

    config = UniSHConfig.tiny() if args.tiny else UniSHConfig.paper()
    frames = 4 if args.tiny else 30
    with tempfile.TemporaryDirectory() as tmp:
        body = BodyModel.from_file(write_synthetic_body_model(Path(tmp) / "smpl.npz")).to(args.device)
    batch = synthetic_batch(2, frames, 294, 518, args.device)
    rows = []
    for stage in (1, 2, 3):
        try:
            rows.append(stage_section(stage, config, body, batch, args.device, args.repeats))
        except Exception as e:  # one stage failing (out of memory, say) is a result too
            rows.append({"stage": stage, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]})
        print(json.dumps(rows[-1], default=str), flush=True)
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
              "model": "tiny" if args.tiny else "paper", "batch": 2, "frames": frames, "size": [518, 294], "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
