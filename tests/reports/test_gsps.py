"""GSPS writer: boxes, axes and labels on the key slices, lung window for CT, dciodvfy-clean."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from lesionlens.dicom.io import read_dataset
from lesionlens.errors import OutputError
from lesionlens.reports.dicom_common import read_sources
from lesionlens.reports.gsps import write_gsps
from tests.pipeline.phantom_results import phantom_study
from tests.reports.test_sr import dciodvfy_problems, enhanced_ct, radiograph


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory):
    ps = phantom_study(tmp_path_factory.mktemp("ct"))
    res, series = ps.result, ps.result.series[0]
    sources = read_sources(series)
    path = write_gsps(res, series, tmp_path_factory.mktemp("out") / "gsps.dcm", sources=sources)
    assert path is not None
    return res, series, sources, path


def _annotations(ds: Dataset) -> list[tuple[str, str, int | None, Dataset]]:
    """(layer, referenced SOP instance UID, frame or None, annotation item)."""
    out = []
    for ann in ds.GraphicAnnotationSequence:
        (ref,) = ann.ReferencedImageSequence
        frame = int(ref.ReferencedFrameNumber) if "ReferencedFrameNumber" in ref else None
        out.append((ann.GraphicLayer, ref.ReferencedSOPInstanceUID, frame, ann))
    return out


def _copy(ds: Dataset, **changes: object) -> Dataset:
    out = Dataset()
    out.update(ds)
    for k, v in changes.items():
        setattr(out, k, v)
    return out


def test_gsps_passes_dciodvfy(ct) -> None:
    assert dciodvfy_problems(ct[3]) == ([], [])


def test_boxes_axes_and_labels_on_the_key_slices(ct) -> None:
    _, series, _, path = ct
    ds = read_dataset(path, stop_before_pixels=True)
    vol = series.volume
    anns = _annotations(ds)
    assert {layer.GraphicLayer for layer in ds.GraphicLayerSequence} == {"LESIONS", "LONG_AXIS", "SHORT_AXIS"}
    for les in series.lesions:
        m = les.measurements
        key_uid = vol.sop_instance_uids[les.key_k]
        boxes = [g for layer, uid, _, a in anns if layer == "LESIONS" and uid == key_uid
                 for g in a.get("GraphicObjectSequence", []) if g.get("TrackingUID") == les.tracking_uid]
        (box,) = boxes
        x1, y1, x2, y2 = (float(v) for v in les.bbox_px)
        assert box.GraphicType == "POLYLINE" and box.GraphicAnnotationUnits == "PIXEL"
        np.testing.assert_allclose(np.reshape(box.GraphicData, (-1, 2)),
                                   [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]])
        assert box.TrackingID == les.tracking_id
        axis_uid = vol.sop_instance_uids[m.long_axis.k]
        (line,) = [g for layer, uid, _, a in anns if layer == "LONG_AXIS" and uid == axis_uid
                   for g in a.GraphicObjectSequence if g.TrackingUID == les.tracking_uid]
        np.testing.assert_allclose(np.reshape(line.GraphicData, (-1, 2)), [m.long_axis.start, m.long_axis.end])
        texts = [t for layer, uid, _, a in anns if uid == axis_uid for t in a.get("TextObjectSequence", [])
                 if t.TrackingUID == les.tracking_uid]
        assert [t.UnformattedTextValue for t in texts] == [f"{les.tracking_id} {m.long_axis.length_mm:.1f} mm"]
        (t,) = texts
        rows, cols = vol.pixels.shape[1:]
        assert 0 <= t.BoundingBoxTopLeftHandCorner[0] < t.BoundingBoxBottomRightHandCorner[0] <= cols
        assert 0 <= t.BoundingBoxTopLeftHandCorner[1] < t.BoundingBoxBottomRightHandCorner[1] <= rows


def test_lung_window_over_the_whole_series(ct) -> None:
    _, series, _, path = ct
    ds = read_dataset(path, stop_before_pixels=True)
    (voi,) = ds.SoftcopyVOILUTSequence
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (-600.0, 1500.0)
    assert voi.WindowCenterWidthExplanation == "LUNG"
    refs = {r.ReferencedSOPInstanceUID for r in ds.ReferencedSeriesSequence[0].ReferencedImageSequence}
    assert refs == set(series.volume.sop_instance_uids)
    assert ds.RescaleType == "HU" and ds.PresentationLUTShape == "IDENTITY"
    assert ds.StudyInstanceUID == series.volume.study_instance_uid and ds.Modality == "PR"
    assert "NOT FOR CLINICAL USE" in ds.SeriesDescription


def test_uids_are_deterministic(ct, tmp_path: Path) -> None:
    res, series, sources, path = ct
    again = write_gsps(res, series, tmp_path / "again.dcm", sources=sources)
    a, b = read_dataset(path, stop_before_pixels=True), read_dataset(again, stop_before_pixels=True)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)


def test_nothing_written_without_lesions(ct, tmp_path: Path) -> None:
    res, series, sources, _ = ct
    assert write_gsps(res, dataclasses.replace(series, lesions=[]), tmp_path / "x.dcm", sources=sources) is None
    assert not (tmp_path / "x.dcm").exists()


def test_unmeasured_lesion_gets_box_and_detector_size(ct, tmp_path: Path) -> None:
    res, series, sources, _ = ct
    les = dataclasses.replace(series.lesions[0], measurements=None, diameter_mm=7.25)
    p = write_gsps(res, dataclasses.replace(series, lesions=[les]), tmp_path / "g.dcm", sources=sources)
    assert dciodvfy_problems(p)[0] == []
    anns = _annotations(read_dataset(p, stop_before_pixels=True))
    assert {layer for layer, *_ in anns} == {"LESIONS"}
    (text,) = [t for *_, a in anns for t in a.get("TextObjectSequence", [])]
    assert text.UnformattedTextValue == f"{les.tracking_id} 7.2 mm"


def test_differing_rescale_references_only_annotated_slices(ct, tmp_path: Path) -> None:
    res, series, sources, _ = ct
    key = {les.key_k for les in series.lesions} | {les.measurements.long_axis.k for les in series.lesions}
    odd = next(k for k in range(len(sources)) if k not in key)
    srcs = list(sources)
    srcs[odd] = _copy(sources[odd], RescaleIntercept=-1000)
    p = write_gsps(res, series, tmp_path / "g.dcm", sources=srcs)
    refs = {r.ReferencedSOPInstanceUID for r in read_dataset(p, stop_before_pixels=True).ReferencedSeriesSequence[0].ReferencedImageSequence}
    assert refs == {series.volume.sop_instance_uids[k] for k in key}
    srcs[min(key)] = _copy(sources[min(key)], RescaleIntercept=-1000)
    with pytest.raises(OutputError, match="rescale"):
        write_gsps(res, series, tmp_path / "bad.dcm", sources=srcs)


def test_colour_images_are_refused(ct, tmp_path: Path) -> None:
    res, series, sources, _ = ct
    srcs = [_copy(ds, SamplesPerPixel=3) for ds in sources]
    with pytest.raises(OutputError, match="colour"):
        write_gsps(res, series, tmp_path / "x.dcm", sources=srcs)


def test_radiograph_monochrome1(tmp_path: Path) -> None:
    res, series = radiograph(tmp_path)
    p = write_gsps(res, series, tmp_path / "gsps.dcm")
    assert dciodvfy_problems(p) == ([], [])
    ds = read_dataset(p, stop_before_pixels=True)
    assert ds.PresentationLUTShape == "INVERSE"  # shown as the MONOCHROME1 source intends
    assert all(v.get("WindowCenterWidthExplanation") != "LUNG" for v in ds.get("SoftcopyVOILUTSequence", []))


def test_multiframe_source(tmp_path: Path) -> None:
    res, series = enhanced_ct()
    p = write_gsps(res, series, tmp_path / "gsps.dcm")
    assert dciodvfy_problems(p)[0] == []
    frames = {frame for _, _, frame, _ in _annotations(read_dataset(p, stop_before_pixels=True))}
    assert frames == {series.volume.frame_numbers[1]}
