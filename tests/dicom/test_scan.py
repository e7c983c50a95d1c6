"""Header scan: classification and patient → study → series grouping."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from series_factory import SeriesSpec, make_non_image, write_series

from lesionlens.dicom import InstanceKind, scan
from lesionlens.dicom.write import save_dataset


def test_groups_and_classifies(tmp_path: Path, pydicom_files: Path) -> None:
    write_series(SeriesSpec(seed="a", n_slices=4, series_number=2), tmp_path / "x" / "deep")
    write_series(SeriesSpec(seed="b", n_slices=3, series_number=3), tmp_path / "y")
    write_series(SeriesSpec(seed="c", n_slices=2, study_seed="other"), tmp_path / "z")
    save_dataset(make_non_image("sr"), tmp_path / "report.dcm")
    (tmp_path / "notes.txt").write_text("not dicom at all")
    shutil.copy(pydicom_files / "rtplan.dcm", tmp_path / "plan.dcm")
    cat = scan(tmp_path)
    assert len(cat.patients) == 2  # P1 and the RT plan's patient
    studies = {s.study_instance_uid: s for s in cat.studies}
    assert len(studies) == 3
    counts = sorted(len(se.instances) for se in cat.series)
    assert counts == [1, 1, 2, 3, 4]
    kinds = {i.source.rsplit("/", 1)[-1]: i.kind for se in cat.series for i in se.instances}
    assert kinds["report.dcm"] is InstanceKind.NON_IMAGE and kinds["plan.dcm"] is InstanceKind.NON_IMAGE
    assert [s.source for s in cat.skipped] == [str(tmp_path / "notes.txt")]
    assert cat.skipped[0].kind is InstanceKind.NOT_DICOM and "text" in cat.skipped[0].reason
    series_a = next(se for se in cat.series if len(se.instances) == 4)
    inst = series_a.instances[0]
    assert inst.rows == 32 and inst.frames == 1 and inst.pixel_spacing == (0.7, 0.8)
    assert inst.image_position_patient is not None and inst.modality == "CT"


def test_scan_zip_and_list(tmp_path: Path) -> None:
    paths = write_series(SeriesSpec(seed="z", n_slices=3), tmp_path / "s")
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, p in enumerate(paths):
            zf.write(p, f"series/{i}.dcm")
        zf.writestr("readme.txt", "hello")
    cat = scan(archive)
    (se,) = cat.series
    assert sorted(i.source for i in se.instances) == [f"{archive}!series/{i}.dcm" for i in range(3)]
    assert [s.source for s in cat.skipped] == [f"{archive}!readme.txt"]
    cat2 = scan([paths[0], paths[1]])
    assert len(cat2.series[0].instances) == 2


def test_enhanced_frames_counted(pydicom_data_files: Path) -> None:
    cat = scan(pydicom_data_files / "emri_small.dcm")
    (inst,) = cat.series[0].instances
    assert inst.frames == 10 and inst.kind is InstanceKind.IMAGE
