"""SR writer: a TID 1500 Comprehensive 3D SR that dciodvfy accepts, dsrdump parses and highdicom
reads back to what was written (measurements, tracking identifiers, regions, references).

The 2D-radiograph and multi-frame helpers here are shared with ``test_seg`` / ``test_gsps``.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from lesionlens.dicom.io import read_dataset
from lesionlens.dicom.scan import scan
from lesionlens.dicom.study import load_series
from lesionlens.dicom.types import Volume
from lesionlens.errors import OutputError
from lesionlens.pipeline.types import (
    AxisLine,
    Lesion,
    LesionMask,
    Location,
    Measurements,
    SeriesResult,
    StudyResult,
)
from lesionlens.reports.dicom_common import NODULE_TYPES, SOLIDNESS, read_sources
from lesionlens.reports.sr import write_sr
from lesionlens.synth.dicom2d import write_2d_study
from lesionlens.synth.xray import ChestXrayConfig, generate_chest_xray
from tests.conftest import pydicom_data_dir, require_tool
from tests.pipeline.phantom_results import phantom_study

# --------------------------------------------------------------------------------------------
# shared helpers


def dciodvfy_problems(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) dciodvfy reports for ``path``."""
    exe = require_tool("dciodvfy")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


def box_lesion(vol: Volume, k: int, box: tuple[int, int, int, int], tid: str = "L1",
               center_mm: np.ndarray | None = None) -> Lesion:
    """A lesion filling the ellipse inscribed in ``box`` (xyxy px) on slice ``k``, measured."""
    x1, y1, x2, y2 = box
    rr, cc = np.mgrid[y1:y2, x1:x2]
    cy, cx = (y1 + y2 - 1) / 2, (x1 + x2 - 1) / 2
    mask = ((rr - cy) / ((y2 - y1) / 2)) ** 2 + ((cc - cx) / ((x2 - x1) / 2)) ** 2 <= 1
    sp = vol.spacing_mm
    la = AxisLine(k, (float(x1), (y1 + y2) / 2), (float(x2), (y1 + y2) / 2), (x2 - x1) * float(sp[2]))
    sa = AxisLine(k, ((x1 + x2) / 2, float(y1)), ((x1 + x2) / 2, float(y2)), (y2 - y1) * float(sp[1]))
    meas = Measurements(la, sa, (la.length_mm + sa.length_mm) / 2, 9.0, None, 42.25, 99.0, "part-solid", 3.0,
                        LesionMask(mask[None], (k, y1, x1)))
    return Lesion(tid, f"2.25.{4242 + int(tid[1:])}", "nodule", 0.8123, k, np.array(box, np.float32), (k, k),
                  center_mm, 9.0, meas, Location("right", None, None, k + 1, vol.sop_instance_uids[k]))


def radiograph(tmp: Path) -> tuple[StudyResult, SeriesResult]:
    """A DX chest radiograph (MONOCHROME1, no patient geometry) with one measured lesion."""
    ph = generate_chest_xray(1, ChestXrayConfig(rows=320, cols=320, photometric="MONOCHROME1"))
    (series,) = scan(write_2d_study(ph, tmp)).series
    (vol,) = load_series(series)
    x1, y1, x2, y2 = (int(v) for v in ph.boxes[0])
    les = box_lesion(vol, 0, (x1, y1, max(x2, x1 + 4), max(y2, y1 + 4)))
    s = SeriesResult(vol, [les])
    return StudyResult(vol.study_instance_uid, series=[s], model={"name": "m", "version": "1"}), s


def enhanced_ct() -> tuple[StudyResult, SeriesResult]:
    """pydicom-data's 2-frame enhanced CT (frames stored in reverse slice order) with a lesion."""
    (series,) = scan(pydicom_data_dir() / "eCT_Supplemental.dcm").series
    (vol,) = load_series(series)
    les = box_lesion(vol, 1, (100, 120, 140, 150), center_mm=vol.index_to_lps([1, 135, 120]))
    s = SeriesResult(vol, [les])
    return StudyResult(vol.study_instance_uid, series=[s], model={"name": "m", "version": "1"}), s


# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyResult, SeriesResult, list, Path]:
    ps = phantom_study(tmp_path_factory.mktemp("ct"))
    res, series = ps.result, ps.result.series[0]
    sources = read_sources(series)
    path = write_sr(res, series, tmp_path_factory.mktemp("out") / "sr.dcm", sources=sources)
    return res, series, sources, path


def _value(group: object, name: object) -> float:
    (m,) = group.get_measurements(name=name)  # type: ignore[attr-defined]
    return float(m.value)


def test_sr_passes_dciodvfy(ct) -> None:
    errors, warnings = dciodvfy_problems(ct[3])
    assert errors == [] and warnings == []


def test_dsrdump_parses_it_and_shows_ids_and_values(ct) -> None:
    _, series, _, path = ct
    out = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Imaging Measurement Report" in text and "NOT FOR CLINICAL USE" in text
    for les in series.lesions:
        m = les.measurements
        assert f'"{les.tracking_id}"' in text and les.tracking_uid in text
        assert f'"{round(m.long_axis.length_mm, 2):g}"' in text.replace('.0"', '"')
        assert f'"{round(m.volume_mm3, 1):g}"' in text.replace('.0"', '"')


def test_reads_back_to_what_was_written(ct) -> None:
    res, series, sources, path = ct
    vol = series.volume
    sr = hd.sr.srread(path)
    assert sr.StudyInstanceUID == vol.study_instance_uid and sr.SeriesInstanceUID != vol.series_instance_uid
    assert sr.PatientName == sources[0].PatientName and sr.PatientID == sources[0].PatientID
    assert "NOT FOR CLINICAL USE" in sr.SeriesDescription and res.model["version"] in sr.SeriesDescription
    assert sr.Manufacturer == "LesionLens" and list(sr.SoftwareVersions)[-1] == res.model["version"]
    (observer,) = sr.content.get_observer_contexts()
    assert observer.observer_type == codes.DCM.Device
    for les in series.lesions:
        m = les.measurements
        (planar,) = sr.content.get_planar_roi_measurement_groups(tracking_uid=les.tracking_uid)
        assert planar.tracking_identifier == les.tracking_id
        assert planar.finding_type == codes.SCT.Nodule
        (site,) = planar.finding_sites
        assert site.value == codes.SCT.Lung
        assert site.laterality == (codes.SCT.Left if les.location.side == "left" else codes.SCT.Right)
        assert _value(planar, codes.SCT.LongAxis) == pytest.approx(m.long_axis.length_mm, abs=0.006)
        assert _value(planar, codes.SCT.ShortAxis) == pytest.approx(m.short_axis.length_mm, abs=0.006)
        assert _value(planar, codes.SCT.Diameter) == pytest.approx(m.mean_diameter_mm, abs=0.006)
        assert _value(planar, codes.DCM.CertaintyOfFinding) == pytest.approx(100 * les.confidence, abs=0.006)
        (qe,) = planar.get_qualitative_evaluations(name=SOLIDNESS)
        assert qe.value == NODULE_TYPES[m.nodule_type]
        x1, y1, x2, y2 = les.bbox_px
        np.testing.assert_allclose(planar.roi.value, [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]])
        ref = planar.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == vol.sop_instance_uids[les.key_k]

        (vg,) = sr.content.get_volumetric_roi_measurement_groups(tracking_uid=les.tracking_uid)
        assert vg.tracking_identifier == les.tracking_id
        assert _value(vg, codes.SCT.Volume) == pytest.approx(m.volume_mm3, abs=0.051)
        assert _value(vg, codes.DCM.MeanAttenuationCoefficient) == pytest.approx(m.mean_hu, abs=0.051)
        assert _value(vg, codes.DCM.MaximumAttenuationCoefficient) == pytest.approx(m.max_hu, abs=0.051)
        assert vg.roi.graphic_type == hd.sr.GraphicTypeValues3D.POINT
        np.testing.assert_allclose(vg.roi.graphic_data[0], les.center_mm, atol=1e-3)
        assert vg.roi.frame_of_reference_uid == vol.frame_of_reference_uid


def test_evidence_lists_every_source_image(ct) -> None:
    _, series, _, path = ct
    sr = hd.sr.srread(path)
    evidence = sr.get_evidence()  # (study, series, SOP instance, SOP class) UIDs
    assert {sop for _, _, sop, _ in evidence} == set(series.volume.sop_instance_uids)
    assert {se for _, se, _, _ in evidence} == {series.volume.series_instance_uid}


def test_uids_are_deterministic_and_distinct(ct, tmp_path: Path) -> None:
    res, series, sources, path = ct
    again = write_sr(res, series, tmp_path / "again.dcm", sources=sources)
    a, b = read_dataset(path, stop_before_pixels=True), read_dataset(again, stop_before_pixels=True)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    fewer = dataclasses.replace(series, lesions=series.lesions[:1])
    c = read_dataset(write_sr(res, fewer, tmp_path / "fewer.dcm", sources=sources), stop_before_pixels=True)
    assert c.SOPInstanceUID != a.SOPInstanceUID and c.SeriesInstanceUID == a.SeriesInstanceUID


def test_sources_are_read_when_not_given(ct, tmp_path: Path) -> None:
    res, series, _, _ = ct
    p = write_sr(res, series, tmp_path / "sr.dcm")
    assert len(hd.sr.srread(p).content.get_planar_roi_measurement_groups()) == len(series.lesions)


def test_no_lesions_still_gives_a_valid_report(ct, tmp_path: Path) -> None:
    res, series, sources, _ = ct
    empty = dataclasses.replace(series, lesions=[])
    p = write_sr(res, empty, tmp_path / "none.dcm", sources=sources)
    assert dciodvfy_problems(p) == ([], [])
    sr = hd.sr.srread(p)
    assert sr.content.get_planar_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    assert _value(group, codes.SCT.NumberOfLesions) == 0


def test_radiograph_has_image_regions_only(tmp_path: Path) -> None:
    res, series = radiograph(tmp_path)
    p = write_sr(res, series, tmp_path / "sr.dcm")
    assert dciodvfy_problems(p) == ([], [])
    sr = hd.sr.srread(p)
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    (les,) = series.lesions
    (planar,) = sr.content.get_planar_roi_measurement_groups(tracking_uid=les.tracking_uid)
    assert _value(planar, codes.SCT.LongAxis) == pytest.approx(les.measurements.long_axis.length_mm, abs=0.006)
    assert planar.get_measurements(name=codes.DCM.MeanAttenuationCoefficient) == []  # not HU on a radiograph
    assert b"SCOORD3D" not in p.read_bytes()


def test_multiframe_source(tmp_path: Path) -> None:
    res, series = enhanced_ct()
    p = write_sr(res, series, tmp_path / "sr.dcm")
    assert dciodvfy_problems(p)[0] == []
    sr = hd.sr.srread(p)
    (les,) = series.lesions
    (planar,) = sr.content.get_planar_roi_measurement_groups(tracking_uid=les.tracking_uid)
    ref = planar.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert [int(f) for f in np.atleast_1d(ref.ReferencedFrameNumber)] == [series.volume.frame_numbers[1]]
    assert len(sr.content.get_volumetric_roi_measurement_groups(tracking_uid=les.tracking_uid)) == 1


def test_mismatched_or_missing_sources_are_refused(ct, tmp_path: Path) -> None:
    res, series, sources, _ = ct
    with pytest.raises(OutputError, match="SOP instance"):
        write_sr(res, series, tmp_path / "x.dcm", sources=list(reversed(sources)))
    with pytest.raises(OutputError, match="source headers given"):
        write_sr(res, series, tmp_path / "x.dcm", sources=sources[:3])
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    vol = dataclasses.replace(series.volume, sources=[str(png)] * series.volume.shape[0])
    with pytest.raises(OutputError, match="image.png"):
        write_sr(res, dataclasses.replace(series, volume=vol), tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_sparse_source_headers_still_give_a_valid_report(ct, tmp_path: Path) -> None:
    res, series, sources, _ = ct
    first = Dataset()
    first.update(sources[0])
    for kw in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        delattr(first, kw)
    p = write_sr(res, series, tmp_path / "sr.dcm", sources=[first, *sources[1:]])
    assert dciodvfy_problems(p)[0] == []
    back = read_dataset(p, stop_before_pixels=True)
    assert back.PatientID == sources[0].PatientID and back.AccessionNumber == "" and back.StudyID == ""
    assert "StudyID" not in first  # the caller's dataset is left as it was
