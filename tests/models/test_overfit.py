"""A tiny detector overfits 8 synthetic images of bright blobs: loss falls, recall@IoU0.5 = 1."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from lesionlens.models.boxes import box_iou_pairwise
from lesionlens.models.detector import DetectorConfig, build_detector
from lesionlens.models.loss import DetectionLoss
from lesionlens.models.postprocess import Postprocessor


def make_blobs(n_images: int = 8, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Images ``(n, 1, size, size)`` float32 with 0-2 bright discs each, and their xyxy boxes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    images = rng.normal(0, 0.1, (n_images, 1, size, size)).astype(np.float32)
    targets = []
    for i in range(n_images):
        boxes = []
        for _ in range(int(rng.integers(0, 3)) if i else 2):
            r = float(rng.uniform(3, 8))
            cx, cy = rng.uniform(r + 1, size - r - 1, 2)
            if any(abs(cx - (b[0] + b[2]) / 2) < 2 * r + 8 and abs(cy - (b[1] + b[3]) / 2) < 2 * r + 8 for b in boxes):
                continue
            images[i, 0][(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] += 1.0
            boxes.append([cx - r, cy - r, cx + r, cy + r])
        targets.append((torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.zeros(len(boxes), dtype=torch.long)))
    return torch.from_numpy(images), targets


@pytest.mark.slow
def test_tiny_detector_overfits_blobs() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    images, targets = make_blobs()
    assert sum(len(t[0]) for t in targets) >= 6 and any(len(t[0]) == 0 for t in targets)
    cfg = DetectorConfig(size="n", in_channels=1, num_classes=1)
    model = build_detector(cfg)
    crit = DetectionLoss(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.0)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps, pct_start=0.1)
    losses = []
    t0 = time.perf_counter()
    model.train()
    for _ in range(steps):
        out = crit(model(images), targets)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        sched.step()
        losses.append(float(out["loss"].detach()))
    elapsed = time.perf_counter() - t0
    assert np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:5]), (losses[:5], losses[-10:])
    model.eval()
    with torch.no_grad():
        # scores are trained towards IoU-quality soft targets, so true lesions sit well below 1
        dets = Postprocessor(conf=0.05, iou=0.5, max_det=10)(model(images))
    hits = total = 0
    for d, (gt, _) in zip(dets, targets):
        total += len(gt)
        if len(gt) and len(d):
            iou = box_iou_pairwise(gt, torch.from_numpy(d.boxes))
            hits += int((iou.max(1).values >= 0.5).sum())
    assert total and hits == total, f"recall {hits}/{total}"
    for d, (gt, _) in zip(dets, targets):
        if len(gt) == 0:
            assert len(d) == 0, f"false positives on a negative image: {d.scores}"
        else:
            assert len(d) <= 2 * len(gt)
    print(f"overfit: {steps} steps in {elapsed:.1f} s, loss {losses[0]:.2f} -> {np.mean(losses[-10:]):.3f}")
