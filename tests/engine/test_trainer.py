from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lesionlens.engine.checkpoint import identity, read_meta
from lesionlens.engine.config import load_config
from lesionlens.engine.trainer import Trainer, load_package_model, lr_factor
from lesionlens.errors import ConfigError


def _dataset(root: Path, n: int = 6, size: int = 64, names: list[str] | None = None) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            img = rng.normal(-850, 20, (3, size, size)).astype(np.float32)
            cx, cy, r = rng.uniform(16, 48), rng.uniform(16, 48), rng.uniform(4, 7)
            img[:, (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r] = 40
            np.save(root / "images" / split / f"i{i}.npy", img)
            (root / "labels" / split / f"i{i}.txt").write_text(
                f"0 {cx / size} {cy / size} {2 * r / size} {2 * r / size}\n")
    (root / "dataset.yaml").write_text(yaml.safe_dump(
        {"path": ".", "train": "images/train", "val": "images/val", "names": names or ["nodule"],
         "channels": 3, "format": "npy-hu", "context_mm": [-2.5, 0.0, 2.5]}))
    (root / "manifest.json").write_text(json.dumps({"fingerprint": "f" * 64}))
    return root / "dataset.yaml"


def test_training_loss_falls_and_writes_a_complete_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = _dataset(tmp_path / "ds")
    cfg = load_config(None, data=str(data), model="n", epochs=12, batch=4, imgsz=64, device="cpu",
                      out=str(tmp_path / "run"), lr=4e-3, steps_per_epoch=10, warmup_epochs=0.5, augment=False)
    res = Trainer(cfg).fit()
    losses = [r["train_loss"] for r in res.history]
    assert losses[-1] < 0.6 * losses[0]
    # it learned to find the blobs on held-out images, not just to lower a number
    assert max(r["val_ap50"] for r in res.history) > 0.1
    assert res.epochs_run == 12 and res.images_per_s > 0
    for f in ("config.yaml", "results.csv", "results.json", "losses.png", "pr_curve.png"):
        assert (res.run_dir / f).is_file(), f
    meta = read_meta(res.best)
    assert meta.names == ["nodule"] and meta.data_fingerprint == "f" * 64
    assert meta.train_config["epochs"] == 12 and "val_ap50" in meta.metrics
    assert len(identity(res.best)["sha256"]) == 64
    model, meta2 = load_package_model(res.last)
    assert meta2.input.kind == "ct-hu" and model.config.in_channels == 3

    # resume continues from the saved epoch and keeps the history
    cfg2 = cfg.model_copy(update={"epochs": 13, "resume": True})
    res2 = Trainer(cfg2).fit()
    assert [r["epoch"] for r in res2.history] == list(range(1, 14))


def test_fine_tune_onto_new_classes_keeps_backbone(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = _dataset(tmp_path / "ds", n=4)
    base = Trainer(load_config(None, data=str(data), model="n", epochs=1, batch=4, imgsz=64, device="cpu",
                               out=str(tmp_path / "a"), steps_per_epoch=1)).fit()
    data2 = _dataset(tmp_path / "ds2", n=4, names=["mass", "calcification_cluster"])
    t = Trainer(load_config(None, data=str(data2), model=str(base.best), epochs=1, batch=4, imgsz=64,
                            device="cpu", out=str(tmp_path / "b"), steps_per_epoch=1))
    assert t.model.config.num_classes == 2 and t.model.config.class_names == ["mass", "calcification_cluster"]
    old, _ = load_package_model(base.best)
    new_sd, old_sd = t.model.state_dict(), old.state_dict()
    kept = [k for k in old_sd if k.startswith("backbone.") and old_sd[k].dtype.is_floating_point]
    assert kept and all(torch.equal(new_sd[k], old_sd[k]) for k in kept)
    assert new_sd["head.cls.0.2.weight"].shape[0] == 2


def test_config_layers_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("data: d.yaml\nepochs: 7\nbatch: 3\n")
    cfg = load_config(f, batch=5, epochs=None)
    assert cfg.epochs == 7 and cfg.batch == 5  # flags beat the file, None flags are ignored
    with pytest.raises(ConfigError, match="epochs"):
        load_config(None, data="d.yaml", epochs=0)
    with pytest.raises(ConfigError, match="epoch"):
        load_config(None, data="d.yaml", epoch=3)  # typo refused
    with pytest.raises(ConfigError, match="model"):
        load_config(None, data="d.yaml", model="xl")


def test_lr_schedule_warms_up_then_decays() -> None:
    f = [lr_factor(s, 100, 10, 0.05) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] == pytest.approx(0.05, abs=0.01)
