"""2D phantoms: DICOM validity (dciodvfy), truth that covers the lesions, determinism."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lesionlens.errors import ConfigError
from lesionlens.synth.dicom2d import CLASS_NAMES_2D, write_2d_study
from lesionlens.synth.mammo import MammoConfig, generate_mammogram
from lesionlens.synth.xray import ChestXrayConfig, generate_chest_xray
from tests.conftest import require_tool

SMALL_MG = {"rows": 400, "cols": 300}
SMALL_DX = {"rows": 320, "cols": 320}


def _dciodvfy_errors(path: Path) -> list[str]:
    tool = require_tool("dciodvfy")
    res = subprocess.run([tool, str(path)], check=False, capture_output=True, text=True, timeout=60)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("kind", ["MG-MLO", "MG-CC", "DX"])
def test_dciodvfy_has_no_errors(tmp_path: Path, kind: str, photometric: str) -> None:
    if kind.startswith("MG"):
        ph = generate_mammogram(1, MammoConfig(**SMALL_MG, view=kind[3:], photometric=photometric, bits_stored=16))
    else:
        ph = generate_chest_xray(1, ChestXrayConfig(**SMALL_DX, photometric=photometric, bits_stored=12))
    path = write_2d_study(ph, tmp_path)
    assert _dciodvfy_errors(path) == []
    import pydicom  # reading back to check what was written; tests may read files directly

    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == photometric
    assert ds.Modality == kind[:2]
    assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx(ph.pixel_spacing_mm, rel=1e-5)
    assert np.array_equal(ds.pixel_array, ph.image)
    assert ph.image.max() <= 2**ph.bits_stored - 1


def test_mammogram_lesions_inside_boxes_and_nowhere_else() -> None:
    """Same seed with and without lesions: the difference lies inside the truth boxes."""
    cfg = MammoConfig(**SMALL_MG, masses=2, calcification_clusters=2, laterality="R")
    with_les = generate_mammogram(7, cfg)
    without = generate_mammogram(7, MammoConfig(**SMALL_MG, masses=0, calcification_clusters=0, laterality="R"))
    diff = with_les.brightness() - without.brightness()
    assert len(with_les.boxes) == 4
    names = ["mass", "mass", "calcification_cluster", "calcification_cluster"]
    assert [CLASS_NAMES_2D[i] for i in with_les.labels] == names
    inside = np.zeros(diff.shape, bool)
    for x1, y1, x2, y2 in with_les.boxes.astype(int):
        inside[y1:y2, x1:x2] = True
        # every lesion makes its box brighter than the same place without it
        assert diff[y1:y2, x1:x2].max() > 0.1
    assert np.abs(diff[~inside]).max() < 0.021  # below the box threshold + quantisation


def test_calcification_specks_lie_in_cluster_box() -> None:
    ph = generate_mammogram(3, MammoConfig(**SMALL_MG, masses=0, calcification_clusters=2))
    b = ph.brightness()
    for box, info, size in zip(ph.boxes, ph.lesions, ph.sizes_mm):
        specks = np.array(info["specks_px"])
        assert 5 <= len(specks) <= 30
        assert (specks[:, 0] >= box[0]).all() and (specks[:, 0] <= box[2]).all()
        assert (specks[:, 1] >= box[1]).all() and (specks[:, 1] <= box[3]).all()
        assert 0 < size <= 12.0  # cluster extent within ~1 cm
        # specks are the brightest pixels of their box: brighter than the box's median tissue
        x1, y1, x2, y2 = box.astype(int)
        patch = b[y1:y2, x1:x2]
        assert patch.max() - np.median(patch) > 0.15


def test_mass_and_nodule_brighter_than_surroundings() -> None:
    for ph in (
        generate_mammogram(11, MammoConfig(**SMALL_MG, masses=1, calcification_clusters=0, photometric="MONOCHROME1")),
        generate_chest_xray(11, ChestXrayConfig(**SMALL_DX, nodules=2, nodule_diameter_mm=(15, 30))),
    ):
        b = ph.brightness()
        for x1, y1, x2, y2 in ph.boxes.astype(int):
            cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
            core = b[cy - 1 : cy + 2, cx - 1 : cx + 2].mean()
            ring = np.concatenate([b[y1 - 3 : y1 - 1, x1:x2].ravel(), b[y2 + 1 : y2 + 3, x1:x2].ravel()])
            assert core - ring.mean() > 0.05


def test_boxes_sizes_and_spacing() -> None:
    ph = generate_chest_xray(5, ChestXrayConfig(**SMALL_DX, nodules=3))
    assert ph.boxes.dtype == np.float32 and ph.boxes.shape == (3, 4)
    assert ph.labels.tolist() == [CLASS_NAMES_2D.index("nodule")] * 3
    assert ((ph.sizes_mm >= 5) & (ph.sizes_mm <= 30)).all()
    widths_mm = (ph.boxes[:, 2] - ph.boxes[:, 0]) * ph.pixel_spacing_mm[1]
    assert np.allclose(widths_mm, ph.sizes_mm, atol=3 * ph.pixel_spacing_mm[1] + 1.0)


def test_deterministic_by_seed() -> None:
    a = generate_mammogram(21, MammoConfig(**SMALL_MG))
    b = generate_mammogram(21, MammoConfig(**SMALL_MG))
    c = generate_mammogram(22, MammoConfig(**SMALL_MG))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, c.image)
    x1 = generate_chest_xray(4, ChestXrayConfig(**SMALL_DX))
    x2 = generate_chest_xray(4, ChestXrayConfig(**SMALL_DX))
    assert np.array_equal(x1.image, x2.image) and np.array_equal(x1.boxes, x2.boxes)


def test_truth_json_beside_dicom(tmp_path: Path) -> None:
    ph = generate_mammogram(2, MammoConfig(**SMALL_MG))
    path = write_2d_study(ph, tmp_path, patient_id="P7")
    truth = json.loads(path.with_name(path.stem + ".truth.json").read_text())
    assert truth["format"] == "lesionlens.truth2d/1" and truth["image"] == path.name
    assert truth["patient_id"] == "P7" and truth["width"] == 300 and truth["height"] == 400
    got = np.array([les["box_xyxy_px"] for les in truth["lesions"]], dtype=np.float32)
    assert np.allclose(got, ph.boxes)


def test_bad_config_raises() -> None:
    with pytest.raises(ConfigError, match="bits_stored"):
        MammoConfig(bits_stored=10)
    with pytest.raises(ConfigError, match="view"):
        MammoConfig(view="ML")
    with pytest.raises(ConfigError, match="photometric"):
        ChestXrayConfig(photometric="RGB")  # type: ignore[arg-type]
