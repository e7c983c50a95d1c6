"""Series selection rules and reasons."""

from __future__ import annotations

from pathlib import Path

from series_factory import SeriesSpec, make_non_image, write_series

from lesionlens.dicom import SelectionRules, read_study, scan, select_series
from lesionlens.dicom.write import save_dataset


def _study(tmp_path: Path) -> Path:
    write_series(SeriesSpec(seed="thin", n_slices=14, series_number=3, spacing=1.0), tmp_path)
    write_series(SeriesSpec(seed="thick", n_slices=12, series_number=2, spacing=5.0), tmp_path)
    write_series(
        SeriesSpec(seed="loc", n_slices=1, series_number=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                   iop=(1, 0, 0, 0, 0, -1), description="TOPO"),
        tmp_path,
    )
    write_series(SeriesSpec(seed="sag", n_slices=12, series_number=4, iop=(0, 1, 0, 0, 0, -1)), tmp_path)
    write_series(SeriesSpec(seed="mpr", n_slices=12, series_number=5, image_type=("DERIVED", "SECONDARY", "MPR")), tmp_path)
    save_dataset(make_non_image("ko"), tmp_path / "ko.dcm")
    save_dataset(make_non_image("sr", seed="sr"), tmp_path / "sr.dcm")
    return tmp_path


def test_default_picks_volumetric_axial_ct(tmp_path: Path) -> None:
    result = read_study(_study(tmp_path))
    by_num = {se.series_number: se for se in result.catalog.series if se.modality == "CT"}
    assert [se.series_number for se in result.catalog.series if se.selected] == [3]
    assert "volumetric" in by_num[3].reason
    assert "localizer" in by_num[1].reason.lower()
    assert "not axial" in by_num[4].reason
    assert "DERIVED" in by_num[5].reason
    assert "preferred" in by_num[2].reason
    non_image = [se for se in result.catalog.series if se.modality in ("KO", "SR")]
    assert len(non_image) == 2 and all(not se.selected and "non-image" in se.reason for se in non_image)
    assert len(result.volumes) == 1 and result.volumes[0].shape[0] == 14


def test_rules_change_the_choice(tmp_path: Path) -> None:
    cat = scan(_study(tmp_path))
    picked = select_series(cat, SelectionRules(require_axial=False, max_volumetric_per_study=None, allow_derived=True, allow_secondary=True))
    assert sorted(se.series_number for se in picked) == [2, 3, 4, 5]
    picked = select_series(cat, SelectionRules(exclude_description="CHEST"))
    assert picked == [] and all(not se.selected for se in cat.series)
    picked = select_series(cat, SelectionRules(allow_localizer=True, modalities=("CT",), min_slices=1, require_axial=False, max_volumetric_per_study=1))
    assert [se.series_number for se in picked] == [3]


def test_2d_study_selects_primary_images(pydicom_data_files: Path) -> None:
    cat = scan([pydicom_data_files / "RG3_UNCR.dcm"])
    (se,) = select_series(cat)
    assert se.modality == "CR" and se.selected and "2D" in se.reason
