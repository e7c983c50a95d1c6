"""Lung-RADS v2022 and Fleischner 2017 suggestions: hand-checked cases at every boundary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lesionlens.dicom.types import Volume
from lesionlens.errors import ConfigError
from lesionlens.pipeline.clinical import (
    FLEISCHNER_SCOPE,
    LUNG_RADS_CATEGORIES,
    fleischner,
    lung_rads,
    lung_rads_category,
    suggest,
)
from lesionlens.pipeline.types import (
    AxisLine,
    FilterDecision,
    Lesion,
    Measurements,
    SeriesResult,
    StudyResult,
)


def nodule(tid: str, mean: float, ntype: str = "solid", solid: float | None = None) -> Lesion:
    """A lesion whose measurements say ``mean`` mm, of type ``ntype`` (solid component ``solid``)."""
    solid_mm = {"solid": mean, "ground-glass": 0.0}.get(ntype, solid if solid is not None else 0.0)
    line = AxisLine(10, (0.0, 0.0), (1.0, 0.0), mean)
    m = Measurements(long_axis=line, short_axis=line, mean_diameter_mm=mean, effective_diameter_mm=mean,
                     volume_mm3=None, mean_hu=None, max_hu=None, nodule_type=ntype,  # type: ignore[arg-type]
                     solid_component_mm=solid_mm)
    return Lesion(tid, "1.2.3", "nodule", 0.9, 10, np.array([0, 0, 4, 4], np.float32), (9, 11), measurements=m)


@pytest.mark.parametrize(("mean", "cat"), [
    (0.0, "2"), (5.9, "2"), (5.94, "2"), (5.95, "3"), (6.0, "3"), (7.9, "3"), (7.96, "4A"), (8.0, "4A"),
    (14.9, "4A"), (15.0, "4B"), (40.0, "4B"),
])
def test_lung_rads_solid_boundaries(mean: float, cat: str) -> None:
    assert lung_rads_category("solid", mean, mean) == cat
    s = lung_rads([nodule("L1", mean)])
    assert (s.category, s.lesions, s.system) == (cat, ["L1"], "Lung-RADS v2022")
    assert s.management == LUNG_RADS_CATEGORIES[cat][1]


@pytest.mark.parametrize(("total", "solid", "cat"), [
    (5.9, 3.0, "2"), (5.9, 5.9, "2"), (6.0, 0.5, "3"), (6.0, 5.9, "3"), (12.0, 5.9, "3"), (20.0, 5.94, "3"),
    (20.0, 5.95, "4A"), (7.0, 6.0, "4A"), (20.0, 7.9, "4A"), (20.0, 8.0, "4B"), (8.0, 8.0, "4B"),
])
def test_lung_rads_part_solid_boundaries(total: float, solid: float, cat: str) -> None:
    assert lung_rads([nodule("P1", total, "part-solid", solid)]).category == cat


@pytest.mark.parametrize(("mean", "cat"), [(5.0, "2"), (29.9, "2"), (29.95, "3"), (30.0, "3"), (60.0, "3")])
def test_lung_rads_ground_glass_boundaries(mean: float, cat: str) -> None:
    assert lung_rads([nodule("G1", mean, "ground-glass")]).category == cat


def test_lung_rads_category_management_texts() -> None:
    assert lung_rads([]).category == "1"
    assert "12 months" in lung_rads([]).management and lung_rads([]).lesions == []
    assert "12 months" in lung_rads([nodule("L1", 4.0)]).management
    assert lung_rads([nodule("L1", 6.5)]).management == "6-month LDCT."
    m4a = lung_rads([nodule("L1", 9.0)]).management
    assert "3-month LDCT" in m4a and "PET/CT" in m4a
    m4b = lung_rads([nodule("L1", 16.0)]).management
    assert "chest CT with or without contrast" in m4b and "tissue sampling" in m4b


def test_most_suspicious_nodule_wins() -> None:
    lesions = [nodule("L1", 25.0, "ground-glass"), nodule("L2", 9.0), nodule("L3", 10.0, "part-solid", 6.5),
               nodule("L4", 5.0)]
    s = lung_rads(lesions)
    # L2 (solid 9 mm) and L3 (solid component 6.5 mm) are both 4A; the larger solid part wins.
    assert (s.category, s.lesions) == ("4A", ["L2"])
    assert "L2" in s.description and "9.0 mm" in s.description and "4 nodules" in s.description
    s = lung_rads([*lesions, nodule("L5", 12.0, "part-solid", 8.0)])
    assert (s.category, s.lesions) == ("4B", ["L5"])
    assert "solid component 8.0 mm" in s.description


def test_unmeasured_lesion_uses_detector_diameter_as_solid() -> None:
    bare = Lesion("L7", "1.2.4", "nodule", 0.8, 3, np.array([0, 0, 4, 4], np.float32), (2, 4), diameter_mm=9.2)
    s = lung_rads([bare])
    assert (s.category, s.lesions) == ("4A", ["L7"])
    assert "L7: not measured" in s.description and "treated as solid" in s.description
    unsized = Lesion("L8", "1.2.5", "nodule", 0.8, 3, np.array([0, 0, 4, 4], np.float32), (2, 4))
    s = lung_rads([unsized])
    assert s.category == "1" and "L8: no size available" in s.description
    f = fleischner([bare], risk="high")
    assert f.category == "solid, single, > 8 mm" and "treated as solid" in f.description


@pytest.mark.parametrize(("mean", "row"), [
    (5.4, "solid, single, < 6 mm"), (5.5, "solid, single, 6-8 mm"), (8.0, "solid, single, 6-8 mm"),
    (8.49, "solid, single, 6-8 mm"), (8.5, "solid, single, > 8 mm"), (20.0, "solid, single, > 8 mm"),
])
def test_fleischner_single_solid_rounds_to_whole_mm(mean: float, row: str) -> None:
    assert fleischner([nodule("L1", mean)]).category == row


def test_fleischner_solid_texts_by_risk() -> None:
    small = [nodule("L1", 4.0)]
    assert fleischner(small, "low").management == "No routine follow-up."
    assert fleischner(small, "high").management == "Optional CT at 12 months."
    mid = [nodule("L1", 7.0)]
    assert fleischner(mid, "low").management == "CT at 6-12 months, then consider CT at 18-24 months."
    assert fleischner(mid, "high").management == "CT at 6-12 months, then CT at 18-24 months."
    big = [nodule("L1", 12.0)]
    assert fleischner(big, "low").management == fleischner(big, "high").management == (
        "Consider CT at 3 months, PET/CT, or tissue sampling.")
    multi = [nodule("L1", 7.0), nodule("L2", 4.0)]
    f = fleischner(multi, "low")
    assert (f.category, f.lesions) == ("solid, multiple, 6-8 mm", ["L1"])
    assert f.management == "CT at 3-6 months, then consider CT at 18-24 months."
    assert fleischner(multi, "high").management == "CT at 3-6 months, then at 18-24 months."
    assert fleischner([nodule("L1", 3.0), nodule("L2", 4.0)], "low").category == "solid, multiple, < 6 mm"
    assert fleischner([nodule("L1", 9.0), nodule("L2", 4.0)], "high").category == "solid, multiple, > 8 mm"
    assert "Patient risk: high." in fleischner(big, "high").description


def test_fleischner_subsolid_rows() -> None:
    gg = fleischner([nodule("G1", 5.4, "ground-glass")])
    assert (gg.category, gg.management) == ("ground-glass, single, < 6 mm", "No routine follow-up.")
    gg = fleischner([nodule("G1", 6.0, "ground-glass")], "high")
    assert gg.category == "ground-glass, single, ≥ 6 mm"
    assert gg.management.startswith("CT at 6-12 months to confirm persistence, then CT every 2 years")
    ps = fleischner([nodule("P1", 5.0, "part-solid", 2.0)])
    assert (ps.category, ps.management) == ("part-solid, single, < 6 mm", "No routine follow-up.")
    ps = fleischner([nodule("P1", 9.0, "part-solid", 6.0)])
    assert ps.category == "part-solid, single, ≥ 6 mm" and "annual CT" in ps.management
    assert "highly suspicious" in ps.description
    ms = fleischner([nodule("G1", 4.0, "ground-glass"), nodule("P1", 5.0, "part-solid", 2.0)])
    assert ms.category == "subsolid, multiple, < 6 mm"
    assert ms.management == "CT at 3-6 months. If stable, consider CT at 2 and 4 years."
    ms = fleischner([nodule("G1", 12.0, "ground-glass"), nodule("P1", 5.0, "part-solid", 2.0)])
    assert (ms.category, ms.lesions) == ("subsolid, multiple, ≥ 6 mm", ["G1"])


def test_fleischner_mixed_solid_and_subsolid_picks_more_urgent_row() -> None:
    f = fleischner([nodule("L1", 4.0), nodule("G1", 7.0, "ground-glass")])
    assert (f.category, f.lesions) == ("ground-glass, single, ≥ 6 mm", ["G1"])
    assert "Also present: solid, single, < 6 mm (guided by L1)" in f.description
    f = fleischner([nodule("L1", 10.0), nodule("G1", 7.0, "ground-glass")])
    assert f.category == "solid, single, > 8 mm" and "ground-glass, single, ≥ 6 mm" in f.description


def test_fleischner_no_nodule_scope_and_bad_risk() -> None:
    f = fleischner([])
    assert f.category == "no nodule" and "No pulmonary nodule" in f.management
    assert FLEISCHNER_SCOPE in f.description
    for text in ("screening", "younger than 35", "immunocompromised", "known cancer"):
        assert text in f.description
    with pytest.raises(ConfigError, match="risk"):
        fleischner([], risk="medium")  # type: ignore[arg-type]


def _study(modality: str, lesions: list[Lesion], body_part: str | None = "CHEST") -> StudyResult:
    vol = Volume(pixels=np.zeros((2, 4, 4), np.float32), affine=np.eye(4), modality=modality,
                 metadata={} if body_part is None else {"bodypartexamined": body_part})
    return StudyResult("1.2", series=[SeriesResult(volume=vol, lesions=lesions)])


def test_suggest_uses_kept_chest_ct_lesions_only() -> None:
    dropped = nodule("L9", 20.0)
    dropped.decisions.append(FilterDecision("vessel", False, "tubular"))
    got = suggest(_study("CT", [nodule("L1", 7.0), dropped]), risk="high")
    assert [(s.system, s.category) for s in got] == [("Lung-RADS v2022", "3"), ("Fleischner 2017", "solid, single, 6-8 mm")]
    assert got[1].management == "CT at 6-12 months, then CT at 18-24 months."
    empty = suggest(_study("CT", [], body_part=None))
    assert [s.category for s in empty] == ["1", "no nodule"]
    assert suggest(_study("DX", [nodule("L1", 7.0)])) == []
    assert suggest(_study("CT", [nodule("L1", 7.0)], body_part="HEAD")) == []
    assert suggest(StudyResult("1.2", status="no-series")) == []


def test_suggest_on_phantom_study(tmp_path: Path) -> None:
    from pipeline.phantom_results import phantom_study

    ps = phantom_study(tmp_path)
    got = suggest(ps.result)
    assert [sg.to_dict()["computed_suggestion"] for sg in got] == [True, True]
    order = list(LUNG_RADS_CATEGORIES)
    per_nodule = {les.tracking_id: lung_rads_category(les.measurements.nodule_type or "solid",  # type: ignore[union-attr]
                                                      les.measurements.mean_diameter_mm,  # type: ignore[union-attr]
                                                      les.measurements.solid_component_mm)  # type: ignore[union-attr]
                  for les in ps.result.lesions}
    assert len(per_nodule) >= 3
    assert got[0].category == max(per_nodule.values(), key=order.index)
    assert per_nodule[got[0].lesions[0]] == got[0].category
