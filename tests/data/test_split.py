"""Patient-level splits: no leakage, ratios, determinism; re-splitting a dataset on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lesionlens.data.split import allocate_counts, parse_ratios, resplit_dataset, split_patients
from lesionlens.data.stats import read_training_set
from lesionlens.errors import ConfigError


def test_every_patient_in_exactly_one_split_with_ratios_respected() -> None:
    pids = [f"P{i:04d}" for i in range(1000)]
    got = split_patients(pids + pids[:50], (0.7, 0.15, 0.15), seed=3)  # duplicates are fine
    assert set(got) == set(pids)
    counts = {s: sum(1 for v in got.values() if v == s) for s in ("train", "val", "test")}
    assert counts == {"train": 700, "val": 150, "test": 150}
    groups = {s: {p for p, v in got.items() if v == s} for s in counts}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert not (groups["val"] & groups["test"])


def test_deterministic_order_independent_and_seed_dependent() -> None:
    pids = [f"P{i}" for i in range(60)]
    a = split_patients(pids, (0.6, 0.2, 0.2), seed=7)
    b = split_patients(list(reversed(pids)), (0.6, 0.2, 0.2), seed=7)
    c = split_patients(pids, (0.6, 0.2, 0.2), seed=8)
    assert a == b and a != c


def test_stratified_split_spreads_each_group() -> None:
    pids = [f"P{i}" for i in range(40)]
    strata = {p: ("pos" if i < 10 else "neg") for i, p in enumerate(pids)}
    got = split_patients(pids, (0.6, 0.2, 0.2), seed=0, strata=strata)
    pos = [got[p] for p in pids[:10]]
    assert pos.count("train") == 6 and pos.count("val") == 2 and pos.count("test") == 2


def test_zero_ratio_split_stays_empty_and_counts_sum() -> None:
    got = split_patients([f"P{i}" for i in range(9)], (0.8, 0.2, 0.0), seed=1)
    assert "test" not in got.values()
    assert allocate_counts(7, (0.7, 0.15, 0.15)) == [5, 1, 1]
    assert sum(allocate_counts(11, (1, 1, 1))) == 11


@pytest.mark.parametrize("text", ["a,b", "-1,2", "0,0,0", "0.5,0.2,0.2,0.1", ""])
def test_bad_ratios_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="ratios"):
        parse_ratios(text)


def test_parse_ratios_normalises() -> None:
    assert parse_ratios("70, 15,15") == pytest.approx((0.7, 0.15, 0.15))


def _yolo_dataset(root: Path, n_patients: int = 10) -> None:
    """A plain YOLO dataset without manifest: patient = file-name part before '__'."""
    import numpy as np

    for split in ("train", "val", "test"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    for p in range(n_patients):
        for s in range(3):
            split = ("train", "val", "test")[s]  # each patient deliberately spread over all splits
            np.save(root / "images" / split / f"pt{p}__s{s}.npy", np.zeros((1, 16, 16), np.float16))
            (root / "labels" / split / f"pt{p}__s{s}.txt").write_text("0 0.5 0.5 0.25 0.25\n" if p % 2 else "")
    (root / "dataset.yaml").write_text(
        yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val", "test": "images/test", "names": ["nodule"]})
    )


def test_resplit_plain_yolo_removes_leakage(tmp_path: Path) -> None:
    _yolo_dataset(tmp_path)
    assignment = resplit_dataset(tmp_path, (0.6, 0.2, 0.2), seed=0)
    ds = read_training_set(tmp_path)
    owners: dict[str, set[str]] = {}
    for split, items in ds.splits.items():
        for im in items:
            owners.setdefault(im.patient_id, set()).add(split)
            assert (tmp_path / im.image).exists()
            label = (tmp_path / im.image.replace("images/", "labels/", 1)).with_suffix(".txt")
            assert label.exists()
            assert len(im.boxes) == (1 if int(im.patient_id[2:]) % 2 else 0)  # labels moved with images
    assert len(owners) == 10 and all(len(v) == 1 for v in owners.values())
    assert {p: next(iter(v)) for p, v in owners.items()} == assignment
    assert len(ds.all_images()) == 30


def test_resplit_updates_manifest_and_fingerprint(tmp_path: Path) -> None:
    from test_trainset import build, sphere_case  # same folder (pytest puts it on sys.path)

    cases = [sphere_case(f"p{i}", f"1.2.3.{i}") for i in range(8)]
    _, summary = build(tmp_path, cases)
    root = tmp_path / "ds"
    resplit_dataset(root, (0.5, 0.25, 0.25), seed=11)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["fingerprint"] != summary.fingerprint
    assert yaml.safe_load((root / "dataset.yaml").read_text())["fingerprint"] == manifest["fingerprint"]
    for e in manifest["images"]:
        assert e["image"].startswith(f"images/{e['split']}/") and (root / e["image"]).exists()
        assert (root / e["label"]).exists()
    per_split = {}
    for e in manifest["images"]:
        per_split.setdefault(e["patient_id"], set()).add(e["split"])
    assert all(len(v) == 1 for v in per_split.values())
    assert sorted(sum(1 for v in per_split.values() if s in v) for s in ("train", "val", "test")) == [2, 2, 4]
