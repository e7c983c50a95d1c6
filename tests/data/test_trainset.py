"""Building a 2D/2.5D training set from CT volumes with sphere truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lesionlens.data.annotations import Lesion3D, StudyTruth
from lesionlens.data.boxes import yolo_to_xyxy
from lesionlens.data.trainset import (
    CTCase,
    TrainSetConfig,
    build_training_set,
    context_stack,
    cross_section_boxes,
)
from lesionlens.dicom.types import Volume
from lesionlens.errors import ConfigError, DataFormatError, OutputError

K, R, C = 30, 64, 64
SPACING = (2.0, 0.8, 0.7)  # (k, r, c) mm
ORIGIN = np.array([-20.0, -30.0, 100.0])  # LPS of voxel (0, 0, 0)


def make_volume(series: str = "1.2.3.1", k: int = K, spacing: tuple[float, float, float] = SPACING) -> Volume:
    """Axial volume: rows go +y (posterior), columns +x (left), slices +z; lung-like background."""
    affine = np.eye(4)
    affine[:3, 0] = [0, 0, spacing[0]]
    affine[:3, 1] = [0, spacing[1], 0]
    affine[:3, 2] = [spacing[2], 0, 0]
    affine[:3, 3] = ORIGIN
    pixels = np.full((k, R, C), -850.0, np.float32)
    return Volume(
        pixels=pixels,
        affine=affine,
        modality="CT",
        study_instance_uid=series + ".0",
        series_instance_uid=series,
        sop_instance_uids=[f"{series}.{i + 1}" for i in range(k)],
        is_volumetric=True,
        has_patient_geometry=True,
    )


def paint_sphere(vol: Volume, centre: np.ndarray, diameter: float, hu: float = 50.0) -> np.ndarray:
    kk, rr, cc = np.meshgrid(*(np.arange(n) for n in vol.pixels.shape), indexing="ij")
    lps = vol.index_to_lps(np.stack([kk, rr, cc], -1).astype(float))
    inside = np.linalg.norm(lps - centre, axis=-1) <= diameter / 2
    vol.pixels[inside] = hu
    return inside


def sphere_case(pid: str, series: str, centre_idx=(15.0, 30.0, 34.0), diameter=12.0, with_map=False) -> CTCase:
    vol = make_volume(series)
    centre = vol.index_to_lps(np.array(centre_idx))
    inside = paint_sphere(vol, centre, diameter)
    truth = StudyTruth(series, series + ".0", pid, [Lesion3D(tuple(centre), diameter)])
    return CTCase(vol, truth, inside.astype(np.uint8) if with_map else None)


def empty_case(pid: str, series: str) -> CTCase:
    vol = make_volume(series)
    return CTCase(vol, StudyTruth(series, series + ".0", pid, []))


def test_boxes_cover_each_cross_section_and_nothing_else() -> None:
    case = sphere_case("p1", "1.2.3.1", centre_idx=(15.3, 30.2, 34.6), diameter=12.0)
    vol, lesion = case.volume, case.truth.lesions[0]
    centre = np.asarray(lesion.center_mm)
    radius = lesion.diameter_mm / 2
    seen = 0
    for k in range(K):
        boxes, idx, _ = cross_section_boxes(vol, [lesion], k, min_box_px=0.0)
        z = vol.index_to_lps(np.array([k, 0.0, 0.0]))[2]
        dz = abs(z - centre[2])
        if dz >= radius:
            assert len(boxes) == 0, f"slice {k} is outside the sphere but has a box"
            continue
        seen += 1
        assert len(boxes) == 1 and idx.tolist() == [0]
        rho = np.sqrt(radius**2 - dz**2)
        cidx = vol.lps_to_index(centre)
        # The exact circle in edge coordinates.
        want = [cidx[2] + 0.5 - rho / SPACING[2], cidx[1] + 0.5 - rho / SPACING[1],
                cidx[2] + 0.5 + rho / SPACING[2], cidx[1] + 0.5 + rho / SPACING[1]]
        np.testing.assert_allclose(boxes[0], want, atol=1e-3)
        # The centre of every painted voxel of that slice lies inside the box (edge coords: +0.5).
        rows, cols = np.nonzero(vol.pixels[k] > 0)
        if rows.size:
            assert boxes[0][0] <= cols.min() + 0.5 and cols.max() + 0.5 <= boxes[0][2]
            assert boxes[0][1] <= rows.min() + 0.5 and rows.max() + 0.5 <= boxes[0][3]
    assert seen == 6  # 12 mm sphere, 2 mm slices, centre at 15.3 → slices 13..18


def test_min_box_px_skips_tiny_cross_sections() -> None:
    case = sphere_case("p1", "1.2.3.1", centre_idx=(15.0, 30.0, 30.0), diameter=12.0)
    lesion = case.truth.lesions[0]
    # slice 12 is 6 mm below the centre: a tangent, radius 0 → nothing at all.
    all_boxes = [cross_section_boxes(case.volume, [lesion], k, min_box_px=0.0)[0] for k in range(K)]
    big = [cross_section_boxes(case.volume, [lesion], k, min_box_px=12.0) for k in range(K)]
    n_all = sum(len(b) for b in all_boxes)
    n_big = sum(len(b[0]) for b in big)
    n_skipped = sum(b[2] for b in big)
    assert n_big < n_all and n_big + n_skipped == n_all
    assert all(min(b[0][:, 2] - b[0][:, 0]) >= 12.0 for b in big if len(b[0]))


def test_label_map_gives_exact_mask_boxes() -> None:
    case = sphere_case("p1", "1.2.3.1", with_map=True)
    assert case.label_map is not None
    for k in range(K):
        boxes, _, _ = cross_section_boxes(case.volume, case.truth.lesions, k, label_map=case.label_map, min_box_px=0)
        rows, cols = np.nonzero(case.label_map[k])
        if rows.size == 0:
            assert len(boxes) == 0
        else:
            np.testing.assert_array_equal(boxes[0], [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])


def test_excluded_lesions_give_no_box() -> None:
    case = sphere_case("p1", "1.2.3.1")
    case.truth.lesions[0].excluded = True
    assert all(len(cross_section_boxes(case.volume, case.truth.lesions, k)[0]) == 0 for k in range(K))


def test_context_stack_offsets_follow_slice_spacing() -> None:
    vol = make_volume()
    vol.pixels[:] = np.arange(K, dtype=np.float32)[:, None, None] * 10  # slice k holds 10·k HU
    st = context_stack(vol, 10, (-2.0, 0.0, 3.0))  # spacing 2 mm → k 9, 10, 11.5
    assert st.shape == (3, R, C) and st.dtype == np.float32
    np.testing.assert_allclose(st[:, 0, 0], [90.0, 100.0, 115.0])
    edge = context_stack(vol, 0, (-5.0, 0.0))
    np.testing.assert_allclose(edge[:, 0, 0], [0.0, 0.0])  # past the first slice repeats it


def build(tmp_path: Path, cases, **cfg):
    config = TrainSetConfig.from_mapping({"ratios": (0.6, 0.2, 0.2), **cfg})
    return build_training_set(cases, tmp_path / "ds", config)


def test_build_writes_yolo_layout_with_hu_stacks(tmp_path: Path) -> None:
    cases = [sphere_case(f"p{i}", f"1.2.3.{i}") for i in range(5)] + [empty_case("n0", "1.2.9.0")]
    ds, summary = build(tmp_path, cases)
    root = tmp_path / "ds"
    doc = yaml.safe_load((root / "dataset.yaml").read_text())
    assert doc["format"] == "npy-hu" and doc["channels"] == 3 and doc["context_mm"] == [-2.5, 0.0, 2.5]
    assert doc["names"] == {0: "nodule"} and doc["train"] == "images/train"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["fingerprint"] == summary.fingerprint == doc["fingerprint"]
    assert len(manifest["images"]) == len(ds.all_images())
    positives = [im for im in ds.all_images() if len(im.boxes)]
    assert len(positives) == 5 * 5  # centre on slice 15: slices 13..17 (|dz| < 6 mm), all ≥ 2 px
    for im in ds.all_images():
        arr = np.load(root / im.image)
        assert arr.shape == (3, R, C) and arr.dtype == np.float16
        label_file = root / im.image.replace("images/", "labels/", 1).replace(".npy", ".txt")
        rows = [line.split() for line in label_file.read_text().splitlines()]
        assert len(rows) == len(im.boxes)
        if rows:
            got = yolo_to_xyxy([[float(v) for v in r[1:]] for r in rows], C, R)
            np.testing.assert_allclose(got, im.boxes, atol=0.01)
            # centre channel holds the sphere's HU under the box centre
            cx, cy = int((im.boxes[0][0] + im.boxes[0][2]) / 2), int((im.boxes[0][1] + im.boxes[0][3]) / 2)
            assert arr[1, cy, cx] == 50.0
    entry = manifest["images"][0]
    for key in ("patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid", "slice_index", "sha256"):
        assert key in entry
    first = ds.all_images()[0]
    assert first.sop_instance_uid == f"{first.series_instance_uid}.{first.slice_index + 1}"


def test_negatives_ratio_per_split_and_lung_preference(tmp_path: Path) -> None:
    cases = [sphere_case(f"p{i}", f"1.2.3.{i}") for i in range(10)] + [empty_case(f"n{i}", f"1.2.9.{i}") for i in range(4)]
    for case in cases:  # the top 10 slices are soft tissue: never preferred as negatives
        case.volume.pixels[:10] = 40.0
    ds, summary = build(tmp_path, cases, negative_ratio=0.5)
    for split, items in ds.splits.items():
        pos = sum(1 for im in items if len(im.boxes))
        neg = sum(1 for im in items if not len(im.boxes))
        assert neg == round(0.5 * pos), split
        assert summary.positives[split] == pos and summary.negatives[split] == neg
        assert all(im.slice_index >= 10 for im in items if not len(im.boxes))
    # no negative comes from a slice near a lesion (radius 6 mm + 2.5 mm context → |dz| ≥ 8.5 mm)
    for im in ds.all_images():
        if not len(im.boxes) and not im.patient_id.startswith("n"):
            assert abs(im.slice_index - 15) * 2.0 >= 8.5


def test_no_negatives_when_ratio_zero(tmp_path: Path) -> None:
    ds, summary = build(tmp_path, [sphere_case(f"p{i}", f"1.2.3.{i}") for i in range(3)], negative_ratio=0.0)
    assert all(len(im.boxes) for im in ds.all_images()) and sum(summary.negatives.values()) == 0


def test_patients_never_span_splits(tmp_path: Path) -> None:
    cases = []
    for i in range(12):  # two series per patient
        cases += [sphere_case(f"p{i}", f"1.2.3.{i}.1"), sphere_case(f"p{i}", f"1.2.3.{i}.2")]
    ds, _ = build(tmp_path, cases)
    owners: dict[str, set[str]] = {}
    for split, items in ds.splits.items():
        for im in items:
            owners.setdefault(im.patient_id, set()).add(split)
    assert len(owners) == 12 and all(len(s) == 1 for s in owners.values())


def test_fingerprint_is_deterministic_and_tracks_data(tmp_path: Path) -> None:
    cases = [sphere_case(f"p{i}", f"1.2.3.{i}") for i in range(4)]
    fp1 = build(tmp_path / "a", cases)[1].fingerprint
    fp2 = build(tmp_path / "b", list(reversed(cases)))[1].fingerprint
    assert fp1 == fp2
    assert build(tmp_path / "c", cases, seed=1)[1].fingerprint != fp1  # another split
    cases[0].volume.pixels[15, 30, 34] = 60.0  # one voxel of a positive slice
    assert build(tmp_path / "d", cases)[1].fingerprint != fp1


def test_png16_single_channel(tmp_path: Path) -> None:
    from PIL import Image

    ds, _ = build(tmp_path, [sphere_case("p0", "1.2.3.0")], image_format="png16", context_mm=(0.0,), ratios=(1, 0, 0))
    root = tmp_path / "ds"
    assert yaml.safe_load((root / "dataset.yaml").read_text())["png_window"] == [-600.0, 1600.0]
    im = next(im for im in ds.splits["train"] if len(im.boxes))
    arr = np.asarray(Image.open(root / im.image))
    assert arr.dtype.itemsize == 2 or arr.max() > 255
    cx, cy = int((im.boxes[0][0] + im.boxes[0][2]) / 2), int((im.boxes[0][1] + im.boxes[0][3]) / 2)
    assert abs(int(arr[cy, cx]) - round((50 + 1400) / 1600 * 65535)) <= 1


def test_bad_config_and_inputs_raise_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="png16"):
        TrainSetConfig.from_mapping({"image_format": "png16"})
    with pytest.raises(ConfigError, match="ratios"):
        TrainSetConfig.from_mapping({"ratios": (-1, 1)})
    with pytest.raises(ConfigError, match="min_box_px"):
        TrainSetConfig.from_mapping({"min_box_px": -1})
    with pytest.raises(DataFormatError):
        build_training_set([], tmp_path / "x")
    case = sphere_case("p0", "1.2.3.0")
    case.truth.lesions[0].label = "mass"
    with pytest.raises(DataFormatError, match="mass"):
        build_training_set([case], tmp_path / "y", TrainSetConfig(names=["nodule"]))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError):
        build_training_set([sphere_case("p0", "1.2.3.0")], tmp_path / "busy")


def test_ellipsoid_truth_box_matches_painted_ellipsoid() -> None:
    vol = make_volume()
    centre = vol.index_to_lps(np.array([15.0, 31.3, 30.6]))
    axes = np.array([18.0, 8.0, 10.0])  # full lengths, mm
    theta = np.deg2rad(30)
    dirs = np.array([[np.cos(theta), np.sin(theta), 0], [-np.sin(theta), np.cos(theta), 0], [0, 0, 1.0]])
    kk, rr, cc = np.meshgrid(*(np.arange(n) for n in vol.pixels.shape), indexing="ij")
    rel = vol.index_to_lps(np.stack([kk, rr, cc], -1).astype(float)) - centre
    inside = (((rel @ dirs.T) / (axes / 2)) ** 2).sum(-1) <= 1
    lesion = Lesion3D(tuple(centre), 10.0, extra={"axes_mm": axes.tolist(), "axis_directions_lps": dirs.tolist()})
    n = 0
    for k in range(K):
        boxes, _, _ = cross_section_boxes(vol, [lesion], k, min_box_px=0)
        rows, cols = np.nonzero(inside[k])
        if rows.size == 0:
            continue
        n += 1
        b = boxes[0]
        # every voxel centre inside the ellipsoid lies in the box, and the box is tight (< 1 px slack)
        assert b[0] <= cols.min() + 0.5 and cols.max() + 0.5 <= b[2]
        assert b[1] <= rows.min() + 0.5 and rows.max() + 0.5 <= b[3]
        assert cols.min() + 0.5 - b[0] < 1.0 and b[2] - (cols.max() + 0.5) < 1.0
        assert rows.min() + 0.5 - b[1] < 1.0 and b[3] - (rows.max() + 0.5) < 1.0
    assert n >= 4


def test_same_series_twice_is_refused(tmp_path: Path) -> None:
    case = sphere_case("p0", "1.2.3.0")
    with pytest.raises(DataFormatError, match="twice"):
        build_training_set([case, case], tmp_path / "ds")


def _label_boxes(root: Path) -> dict[str, list[list[float]]]:
    out = {}
    for lab in sorted(root.glob("labels/*/*.txt")):
        rows = [list(map(float, ln.split()[1:])) for ln in lab.read_text().splitlines() if ln.strip()]
        if rows:
            out[lab.stem] = rows
    return out


def test_a_dicom_folder_with_its_label_map_gives_the_exact_mask_boxes(tmp_path: Path) -> None:
    """``write_ct_study(with_label_map=True)`` saves labels.npz; a training set built from the DICOM
    folder then has the same boxes as one built from the in-memory phantom with its label map, and
    differs from the ellipsoid boxes a folder without it gives (lobulated nodules)."""
    from lesionlens.data.trainset import CTCase, TrainSetConfig, build_training_set
    from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study
    from lesionlens.synth.truth import load_truth

    cfg = CTPhantomConfig(matrix=(96, 96), n_slices=24, pixel_spacing_mm=(3.5, 4.0), slice_spacings_mm=(2.5,),
                          n_nodules=(3, 3), p_no_nodules=0.0, nodule_diameter_mm=(10.0, 20.0),
                          small_nodule_fraction=0.0, p_lobulated=1.0, pixel_representation="signed")
    ph = generate_ct(5, cfg)
    write_ct_study(ph, tmp_path / "with" / "s", with_label_map=True)
    write_ct_study(ph, tmp_path / "without" / "s")
    assert (tmp_path / "with" / "s" / "labels.npz").is_file()
    assert not (tmp_path / "without" / "s" / "labels.npz").exists()
    ts = TrainSetConfig(ratios=(1.0, 0.0, 0.0), negative_ratio=0.0, min_box_px=1.0)
    build_training_set([tmp_path / "with"], tmp_path / "ds-with", ts)
    build_training_set([tmp_path / "without"], tmp_path / "ds-without", ts)
    truth = load_truth(tmp_path / "with" / "s" / "truth.json")
    from lesionlens.dicom.study import read_study

    (vol,) = read_study([tmp_path / "with" / "s"], workers=1).volumes
    build_training_set([CTCase(vol, truth, ph.labels, source="mem")], tmp_path / "ds-mem", ts)
    with_map, ellipsoid, mem = (_label_boxes(tmp_path / "ds-with"), _label_boxes(tmp_path / "ds-without"),
                                _label_boxes(tmp_path / "ds-mem"))
    assert with_map and list(with_map.values()) == list(mem.values())
    assert list(with_map.values()) != list(ellipsoid.values())

    # a label map that does not fit the series is not used, and says why
    np.savez_compressed(tmp_path / "with" / "s" / "labels.npz", labels=ph.labels[:-1], affine=ph.affine)
    from lesionlens.data.trainset import discover_ct_cases

    (case,) = discover_ct_cases(tmp_path / "with")
    loaded = case.load()
    assert loaded.label_map is None
    assert any(p.code == "label-map" and "shape" in p.message for p in loaded.problems)
