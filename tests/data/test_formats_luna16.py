"""LUNA16: CSV + MetaImage round trip and malformed CSV rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lesionlens.data.annotations import Lesion3D, StudyTruth
from lesionlens.data.formats.luna16 import read_luna16, read_luna16_csv, write_luna16
from lesionlens.dicom.formats import read_image
from lesionlens.dicom.types import Volume
from lesionlens.errors import DataFormatError

UID_A = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"
UID_B = "1.2.826.0.1.3680043.2.1125.1"


def _volume() -> Volume:
    rng = np.random.default_rng(0)
    px = rng.integers(-1024, 400, (6, 8, 10)).astype(np.float32)
    aff = np.array([[0, 0, 0.7, -170.2], [0, 0.7, 0, -180.0], [2.5, 0, 0, -340.25], [0, 0, 0, 1]], dtype=np.float64)
    return Volume(pixels=px, affine=aff)


def test_round_trip(tmp_path: Path) -> None:
    a = StudyTruth(UID_A, lesions=[
        Lesion3D((-128.6994211, -175.3192718, -298.3875064), 5.651470635),
        Lesion3D((103.7836509, -211.9251487, -227.12125), 4.224708481),
        Lesion3D((-100.5, 67.26, -231.8), 0.0, excluded=True, extra={"diameter_unknown": True}),
        Lesion3D((1.0, 2.0, 3.0), 3.2, excluded=True),
    ])
    b = StudyTruth(UID_B)  # a negative series: volume only
    vol = _volume()
    write_luna16(tmp_path, [(a, vol), (b, vol)])
    assert (tmp_path / "annotations.csv").read_text().splitlines()[0] == "seriesuid,coordX,coordY,coordZ,diameter_mm"
    assert ",-1.0" in (tmp_path / "annotations_excluded.csv").read_text()
    ds = read_luna16(tmp_path)
    assert [s.series_instance_uid for s in ds.studies] == sorted([UID_A, UID_B])
    assert set(ds.volumes) == {UID_A, UID_B}
    got = ds.study(UID_A)
    assert len(got.lesions) == 4 and ds.study(UID_B).lesions == []
    for x, y in zip(got.lesions, a.lesions):
        assert np.allclose(x.center_mm, y.center_mm, atol=1e-9) and x.diameter_mm == pytest.approx(y.diameter_mm)
        assert x.excluded == y.excluded
    back = read_image(ds.volumes[UID_A])
    assert np.array_equal(back.pixels, vol.pixels)
    assert np.allclose(back.affine, vol.affine)
    # the world coordinates of a lesion land where they were in the volume
    idx = back.lps_to_index(np.array(a.lesions[0].center_mm))
    assert np.allclose(idx, vol.lps_to_index(np.array(a.lesions[0].center_mm)))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("seriesuid,coordX,coordY,diameter_mm\n", "line 1: header lacks column"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,1,2,3,4\n1.2,1,x,3,4\n", "line 3: column 'coordY' is not a number"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,1,2,3\n", "line 2: 4 fields"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\n,1,2,3,4\n", "line 2: column 'seriesuid' is empty"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,1,2,3,-1\n", "line 2: column 'diameter_mm' must be > 0"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,1,2,nan,3\n", "not finite"),
        ("", "empty file"),
    ],
)
def test_bad_csv(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "annotations.csv"
    p.write_text(text)
    with pytest.raises(DataFormatError, match=match) as err:
        read_luna16_csv(p)
    assert err.value.path == str(p)


def test_missing_annotations_and_bad_uid(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="annotations.csv not found"):
        read_luna16(tmp_path)
    with pytest.raises(DataFormatError, match="file name"):
        write_luna16(tmp_path, [(StudyTruth("../etc/x"), None)])
