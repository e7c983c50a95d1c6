from __future__ import annotations

import json
from pathlib import Path

import pytest

from lesionlens.errors import OutputError
from lesionlens.reports.findings import SCHEMA, Finding, SeriesFindings, StudyFindings, findings_document, write_json

MODEL = {"name": "lesionlens-ct-n", "version": "0.1.0", "sha256": "ab" * 32}


def test_document_has_the_minimum_schema(tmp_path: Path) -> None:
    f = Finding("nodule", 0.87654321, [10, 20, 30.123, 40.987], [1.23456, -2.0, 3.0], 6.54321, "1.2.3", 1)
    doc = findings_document(MODEL, [StudyFindings("1.2", [SeriesFindings("1.2.9", "CT", [f])])])
    path = write_json(doc, tmp_path / "out" / "findings.json")
    back = json.loads(path.read_text())
    assert back["schema"] == SCHEMA
    assert back["model"] == MODEL
    finding = back["studies"][0]["series"][0]["findings"][0]
    assert set(finding) >= {"label", "confidence", "center_mm", "diameter_mm", "bbox_px", "sop_instance_uid", "frame"}
    assert finding["center_mm"] == [1.235, -2.0, 3.0] and finding["diameter_mm"] == 6.543
    assert back["studies"][0]["series"][0]["modality"] == "CT"
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_non_finite_values_and_missing_identity_are_refused() -> None:
    bad = Finding("nodule", float("nan"), [0, 0, 1, 1])
    with pytest.raises(OutputError, match="confidence"):
        findings_document(MODEL, [StudyFindings("1", [SeriesFindings("2", "CT", [bad])])])
    with pytest.raises(OutputError, match="sha256"):
        findings_document({"name": "x", "version": "1"}, [])
