"""Copy-paste of lesions and mosaic (lesionlens.data.mix) and their use in training samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lesionlens.data.mix import LesionBank, mosaic, paste_lesions


def _disk_image(size: int, cx: float, cy: float, r: float, bg: float = -850.0, fg: float = 30.0,
                channels: int = 3) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    img = np.full((channels, size, size), bg, np.float32)
    img[:, (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = fg
    return img


def test_bank_cuts_patches_with_margin_and_box_inside() -> None:
    img = _disk_image(64, 20, 30, 5)
    bank = LesionBank(margin_px=3)
    bank.offer(img, np.array([[15, 25, 25, 35]], np.float32), np.array([0]))
    assert len(bank) == 1
    p = bank.patches[0]
    assert p.image.shape == (3, 16, 16)  # 10 px box + 3 px margin each side
    assert p.box.tolist() == [3.0, 3.0, 13.0, 13.0]
    assert p.image[1, 8, 8] == 30.0 and p.image[1, 0, 0] == -850.0


def test_bank_is_a_bounded_reservoir_and_skips_huge_lesions() -> None:
    bank = LesionBank(capacity=5, seed=1, max_side_px=20)
    img = _disk_image(64, 32, 32, 4)
    for _ in range(40):
        bank.offer(img, np.array([[28, 28, 36, 36]], np.float32), np.array([0]))
    bank.offer(img, np.array([[0, 0, 60, 60]], np.float32), np.array([0]))  # too large: not banked
    assert len(bank) == 5 and bank.seen == 40


def test_paste_max_blends_into_lung_and_appends_the_box() -> None:
    bank = LesionBank(margin_px=2)
    bank.offer(_disk_image(64, 20, 20, 4), np.array([[16, 16, 24, 24]], np.float32), np.array([0]))
    target = np.full((3, 64, 64), -850.0, np.float32)
    target[:, 10, :] = 50.0  # a "vessel" row, denser than the lesion's rim
    rng = np.random.default_rng(0)
    out, boxes, labels = paste_lesions(target, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), bank, rng)
    assert boxes.shape == (1, 4) and labels.tolist() == [0]
    x0, y0, x1, y1 = boxes[0]
    assert x1 - x0 == 8 and y1 - y0 == 8
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    assert np.allclose(out[:, cy, cx], 30.0)  # the lesion's centre, on every channel
    changed = np.argwhere(np.any(out != target, axis=0))
    # nothing changes outside the box grown by the 1 px feather
    assert changed[:, 1].min() >= x0 - 1 and changed[:, 1].max() <= x1 and changed[:, 0].min() >= y0 - 1
    assert changed[:, 0].max() <= y1
    assert np.all(out[:, 10, :] >= 50.0)  # max blend: the denser vessel is never darkened
    assert np.all(out >= target)


def test_paste_avoids_soft_tissue_and_existing_boxes() -> None:
    bank = LesionBank()
    bank.offer(_disk_image(64, 20, 20, 4), np.array([[16, 16, 24, 24]], np.float32), np.array([0]))
    tissue = np.full((3, 48, 48), 40.0, np.float32)
    out, boxes, _ = paste_lesions(tissue, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), bank,
                                  np.random.default_rng(0), n=3)
    assert len(boxes) == 0 and np.array_equal(out, tissue)
    # without the lung rule (2D images) it pastes anywhere
    _, boxes2, _ = paste_lesions(tissue, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), bank,
                                 np.random.default_rng(0), lung_hu=None)
    assert len(boxes2) == 1
    # an image filled by one existing box leaves no free place
    lung = np.full((3, 20, 20), -850.0, np.float32)
    full = np.array([[0, 0, 20, 20]], np.float32)
    _, boxes3, _ = paste_lesions(lung, full, np.array([0]), bank, np.random.default_rng(0), n=2)
    assert boxes3.tolist() == full.tolist()


def test_mosaic_tiles_four_samples_and_shifts_their_boxes() -> None:
    parts = []
    for v in range(4):
        img = np.full((2, 16, 16), float(v), np.float32)
        parts.append((img, np.array([[2, 3, 8, 9], [15, 15, 17, 17]], np.float32), np.array([v, v])))
    out, boxes, labels = mosaic(parts, 32)
    assert out.shape == (2, 32, 32)
    assert out[0, 0, 0] == 0 and out[0, 0, 31] == 1 and out[0, 31, 0] == 2 and out[0, 31, 31] == 3
    # the 2 px box hanging over each tile's edge is clipped to 1 px and dropped
    assert labels.tolist() == [0, 1, 2, 3]
    assert boxes.tolist() == [[2, 3, 8, 9], [18, 3, 24, 9], [2, 19, 8, 25], [18, 19, 24, 25]]
    with pytest.raises(ValueError):
        mosaic(parts[:3], 32)


def test_training_samples_use_mosaic_and_copy_paste(tmp_path: Path) -> None:
    from lesionlens.engine.dataset import DetectionSamples, read_dataset_yaml
    from lesionlens.engine.preprocess import InputSpec
    from lesionlens.errors import ConfigError
    from tests.engine.test_dataset import _make_dataset

    _make_dataset(tmp_path, n=4, size=96)  # p0, p2 positives; p1, p3 negatives; lung -850, lesions 30 HU
    info = read_dataset_yaml(tmp_path)
    ds = DetectionSamples(info, "train", InputSpec(), crop=64, seed=3, copy_paste=1.0)
    ds[0]
    ds[2]  # the bank now holds both lesions
    assert len(ds.bank) == 2
    x, t = ds[1]  # a negative image gains pasted lesions
    assert 1 <= len(t["boxes"]) <= 2
    for b in t["boxes"].round().int().tolist():
        cx, cy = (b[0] + b[2]) // 2, (b[1] + b[3]) // 2
        assert float(x[1, cy, cx]) > 0.5  # bright (lesion) at the pasted box's centre

    ds_m = DetectionSamples(info, "train", InputSpec(), crop=64, seed=3, mosaic=1.0)
    x, t = ds_m[0]
    assert x.shape == (3, 64, 64)
    for b in t["boxes"].tolist():  # every box lies inside one 32 px tile
        assert (b[2] <= 32 or b[0] >= 32) and (b[3] <= 32 or b[1] >= 32)
    assert len(t["boxes"]) >= 1  # tile 0 is cropped around p0's lesion
    with pytest.raises(ConfigError):
        DetectionSamples(info, "train", InputSpec(), crop=64, mosaic=1.5)


def test_train_config_reaches_the_samples(tmp_path: Path) -> None:
    from lesionlens.engine.config import TrainConfig
    from lesionlens.engine.trainer import Trainer
    from tests.engine.test_dataset import _make_dataset

    _make_dataset(tmp_path)
    base = dict(data=str(tmp_path / "dataset.yaml"), model="n", epochs=1, batch=2, imgsz=48, device="cpu",
                out=str(tmp_path / "run"))
    loader, _ = Trainer(TrainConfig(**base, mosaic=0.5, copy_paste=0.25))._loaders()
    assert (loader.dataset.mosaic, loader.dataset.copy_paste) == (0.5, 0.25) and loader.dataset.bank is not None
    off, _ = Trainer(TrainConfig(**base, mosaic=0.5, copy_paste=0.25, augment=False))._loaders()
    assert (off.dataset.mosaic, off.dataset.copy_paste) == (0.0, 0.0) and off.dataset.bank is None
