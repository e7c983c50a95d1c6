from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from lesionlens.engine.dataset import DetectionSamples, collate, read_dataset_yaml
from lesionlens.engine.preprocess import InputSpec, normalize
from lesionlens.errors import ConfigError, DataFormatError


def _make_dataset(root: Path, n: int = 4, size: int = 96) -> None:
    yy, xx = np.mgrid[0:size, 0:size]
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            img = np.full((3, size, size), -850, np.float32)
            cx, cy, r = 20 + 15 * i, 60 - 5 * i, 4 + i
            img[:, (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r] = 30
            np.save(root / "images" / split / f"p{i}.npy", img.astype(np.float16))
            if i % 2 == 0:  # odd images are negatives (no label file)
                (root / "labels" / split / f"p{i}.txt").write_text(
                    f"0 {cx / size} {cy / size} {2 * r / size} {2 * r / size}\n"
                )
    (root / "dataset.yaml").write_text(
        yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val", "names": {0: "nodule"},
                        "channels": 3, "format": "npy-hu", "context_mm": [-2.5, 0, 2.5]})
    )


def test_crops_keep_the_lesion_inside_its_box(tmp_path: Path) -> None:
    _make_dataset(tmp_path)
    info = read_dataset_yaml(tmp_path)
    assert info.names == ["nodule"] and info.channels == 3 and set(info.splits) == {"train", "val"}
    ds = DetectionSamples(info, "train", InputSpec(), crop=48, seed=1)
    for i in range(len(ds)):
        for _ in range(5):
            x, t = ds[i]
            assert x.shape == (3, 48, 48) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
            if i % 2:
                assert len(t["boxes"]) == 0
                continue
            assert len(t["boxes"]) == 1
            x1, y1, x2, y2 = t["boxes"][0].round().int().tolist()
            bright = x[1] > 0.5
            # every bright (lesion) pixel lies inside the box, and the box is mostly lesion
            ys, xs = np.nonzero(bright.numpy())
            assert xs.min() >= x1 and xs.max() < x2 and ys.min() >= y1 and ys.max() < y2
    xb, tb = collate([ds[0], ds[1]])
    assert xb.shape == (2, 3, 48, 48) and len(tb) == 2


def test_validation_returns_whole_padded_image(tmp_path: Path) -> None:
    _make_dataset(tmp_path, size=90)
    ds = DetectionSamples(read_dataset_yaml(tmp_path), "val", InputSpec(), crop=None)
    x, t = ds[0]
    assert x.shape == (3, 96, 96)
    assert t["boxes"][0].tolist() == pytest.approx([16, 56, 24, 64], abs=1e-4)


def test_bad_label_line_names_file_and_line(tmp_path: Path) -> None:
    _make_dataset(tmp_path)
    (tmp_path / "labels" / "train" / "p0.txt").write_text("0 0.5 0.5 0.1 0.1\n3 0.5 0.5 0.1 0.1\n")
    ds = DetectionSamples(read_dataset_yaml(tmp_path), "train", InputSpec(), crop=48)
    with pytest.raises(DataFormatError, match=r"p0.txt: line 2: class 3"):
        ds[0]


def test_missing_yaml_and_channel_mismatch(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="dataset.yaml not found"):
        read_dataset_yaml(tmp_path)
    _make_dataset(tmp_path)
    ds = DetectionSamples(read_dataset_yaml(tmp_path), "train", InputSpec(channels=1, context_mm=(0.0,)), crop=48)
    with pytest.raises(DataFormatError, match="3 channels"):
        ds[0]


def test_normalize_ct_window_and_spec_validation() -> None:
    spec = InputSpec()
    x = normalize(np.array([[[-1400.0, -600.0, 200.0, 1000.0]]]), spec)
    assert x.ravel().tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ConfigError, match="context_mm"):
        InputSpec(channels=5)
    assert InputSpec.from_dict(spec.to_dict()) == spec


def test_small_lesion_images_are_weighted_up(tmp_path: Path) -> None:
    _make_dataset(tmp_path)  # p0: 8 px box, p1/p3: negatives, p2: 12 px box
    ds = DetectionSamples(read_dataset_yaml(tmp_path), "train", InputSpec(), crop=48)
    assert [p.name for p in ds.images] == ["p0.npy", "p1.npy", "p2.npy", "p3.npy"]
    assert ds.image_size(0) == (96, 96)
    assert ds.sample_weights(10.0, 3.0).tolist() == [4.0, 1.0, 1.0, 1.0]
    assert ds.sample_weights(13.0, 3.0).tolist() == [4.0, 1.0, 4.0, 1.0]
    assert ds.sample_weights(13.0, 0.0).tolist() == [1.0] * 4


def test_trainer_draws_small_lesion_images_more_often(tmp_path: Path) -> None:
    import torch

    from lesionlens.engine.config import TrainConfig
    from lesionlens.engine.trainer import Trainer

    _make_dataset(tmp_path, n=4)
    cfg = TrainConfig(data=str(tmp_path / "dataset.yaml"), model="n", epochs=1, batch=1, imgsz=48,
                      device="cpu", out=str(tmp_path / "run"), small_boost=9.0, small_px=10.0)
    loader, _ = Trainer(cfg)._loaders()
    assert isinstance(loader.sampler, torch.utils.data.WeightedRandomSampler)
    drawn = np.bincount(np.array(list(iter(loader.sampler)) * 1), minlength=4)
    for _ in range(99):
        drawn += np.bincount(np.array(list(iter(loader.sampler))), minlength=4)
    share = drawn / drawn.sum()  # expected 10/13 for p0, 1/13 for the others
    assert share[0] > 0.65 and max(share[1:]) < 0.15
    plain, _ = Trainer(cfg.model_copy(update={"small_boost": 0.0}))._loaders()
    assert not isinstance(plain.sampler, torch.utils.data.WeightedRandomSampler)
