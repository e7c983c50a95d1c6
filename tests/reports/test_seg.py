"""SEG writer: one BINARY segment per lesion, dciodvfy-clean, read back by highdicom voxel-exact."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes

from lesionlens.dicom.io import read_dataset
from lesionlens.pipeline.types import LesionMask, SeriesResult
from lesionlens.reports.dicom_common import read_sources
from lesionlens.reports.seg import write_seg
from tests.pipeline.phantom_results import phantom_study
from tests.reports.test_sr import dciodvfy_problems, enhanced_ct, radiograph


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory):
    ps = phantom_study(tmp_path_factory.mktemp("ct"))
    res, series = ps.result, ps.result.series[0]
    sources = read_sources(series)
    path = write_seg(res, series, tmp_path_factory.mktemp("out") / "seg.dcm", sources=sources)
    assert path is not None
    return res, series, sources, path


def _volume_masks(seg: hd.seg.Segmentation, series: SeriesResult, n: int) -> np.ndarray:
    """(K, R, C, n) bool: every segment on every volume slice (absent frames are empty)."""
    px = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=series.volume.sop_instance_uids, segment_numbers=list(range(1, n + 1)),
        assert_missing_frames_are_empty=True)
    return px.astype(bool)


def test_seg_passes_dciodvfy(ct) -> None:
    assert dciodvfy_problems(ct[3]) == ([], [])


def test_masks_read_back_voxel_exact(ct) -> None:
    res, series, _, path = ct
    seg = hd.seg.segread(path)
    n = len(series.lesions)
    assert seg.number_of_segments == n
    got = _volume_masks(seg, series, n)
    shape = series.volume.pixels.shape
    for s, les in enumerate(series.lesions):
        assert np.array_equal(got[..., s], les.measurements.mask.full(shape)), les.tracking_id


def test_segments_describe_the_lesions(ct) -> None:
    res, series, _, path = ct
    seg = hd.seg.segread(path)
    for s, les in enumerate(series.lesions, start=1):
        d = seg.get_segment_description(s)
        assert d.segment_label == les.tracking_id
        assert d.tracking_id == les.tracking_id and d.tracking_uid == les.tracking_uid
        assert d.segmented_property_type == codes.SCT.Nodule
        assert d.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
        assert d.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algo = d.algorithm_identification[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == (res.model["name"], res.model["version"])
    assert seg.StudyInstanceUID == series.volume.study_instance_uid
    assert seg.FrameOfReferenceUID == series.volume.frame_of_reference_uid
    assert "NOT FOR CLINICAL USE" in seg.SeriesDescription


def test_only_touched_slices_are_referenced_and_empty_frames_omitted(ct) -> None:
    _, series, _, path = ct
    seg = hd.seg.segread(path)
    vol = series.volume
    touched, frames = set(), 0
    for les in series.lesions:
        full = les.measurements.mask.full(vol.pixels.shape)
        ks = np.flatnonzero(full.any(axis=(1, 2)))
        touched |= {vol.sop_instance_uids[k] for k in ks}
        frames += len(ks)
    refs = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == touched
    assert int(seg.NumberOfFrames) == frames


def test_uids_are_deterministic(ct, tmp_path: Path) -> None:
    res, series, sources, path = ct
    again = write_seg(res, series, tmp_path / "again.dcm", sources=sources)
    a, b = read_dataset(path, stop_before_pixels=True), read_dataset(again, stop_before_pixels=True)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)


def test_nothing_written_without_masks(ct, tmp_path: Path) -> None:
    res, series, sources, _ = ct
    bare = [dataclasses.replace(les, measurements=dataclasses.replace(les.measurements, mask=None))
            for les in series.lesions]
    assert write_seg(res, dataclasses.replace(series, lesions=bare), tmp_path / "x.dcm", sources=sources) is None
    assert write_seg(res, dataclasses.replace(series, lesions=[]), tmp_path / "x.dcm", sources=sources) is None
    assert not (tmp_path / "x.dcm").exists()


def test_overlapping_and_clipped_masks(ct, tmp_path: Path) -> None:
    res, series, sources, _ = ct
    first = series.lesions[0]
    lm = first.measurements.mask
    twin = dataclasses.replace(first, tracking_id="L9", tracking_uid="2.25.99")  # the same voxels again
    k0, r0, c0 = lm.offset
    spill = np.ones((2, 4, 4), bool)  # half of it past the last column
    edge = dataclasses.replace(first, tracking_id="L8", tracking_uid="2.25.98", measurements=dataclasses.replace(
        first.measurements, mask=LesionMask(spill, (k0, r0, series.volume.pixels.shape[2] - 2))))
    odd = dataclasses.replace(series, lesions=[first, twin, edge])
    p = write_seg(res, odd, tmp_path / "odd.dcm", sources=sources)
    assert dciodvfy_problems(p)[0] == []
    got = _volume_masks(hd.seg.segread(p), odd, 3)
    shape = series.volume.pixels.shape
    assert np.array_equal(got[..., 0], lm.full(shape)) and np.array_equal(got[..., 1], lm.full(shape))
    assert got[..., 2].sum() == 2 * 4 * 2 and got[k0, r0:r0 + 4, -2:, 2].all()


def test_radiograph(tmp_path: Path) -> None:
    res, series = radiograph(tmp_path)
    p = write_seg(res, series, tmp_path / "seg.dcm")
    assert dciodvfy_problems(p) == ([], [])
    # Without a Frame of Reference the SEG has no Slice Thickness (required only with one, CP
    # 1426), but highdicom 0.28's reader insists on it: read back with a placeholder added.
    ds = read_dataset(p)
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness = 1
    got = _volume_masks(hd.seg.Segmentation.from_dataset(ds), series, 1)
    assert np.array_equal(got[..., 0], series.lesions[0].measurements.mask.full(series.volume.pixels.shape))


def test_multiframe_source(tmp_path: Path) -> None:
    res, series = enhanced_ct()
    p = write_seg(res, series, tmp_path / "seg.dcm")
    assert dciodvfy_problems(p)[0] == []
    seg = hd.seg.segread(p)
    (les,) = series.lesions
    vol = series.volume
    frames = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=vol.sop_instance_uids[0], source_frame_numbers=vol.frame_numbers,
        segment_numbers=[1], assert_missing_frames_are_empty=True)[..., 0].astype(bool)
    assert np.array_equal(frames, les.measurements.mask.full(vol.pixels.shape))
