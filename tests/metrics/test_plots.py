"""FROC and PR plots are written as real PNG files."""

from __future__ import annotations

from pathlib import Path

import pytest

from lesionlens.errors import OutputError
from lesionlens.metrics import DetectionSample, FROCResult, FROCScan, compute_froc, pr_curve
from lesionlens.metrics.plots import plot_froc, plot_pr

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _froc(seed: int) -> FROCResult:
    scans = [
        FROCScan(
            candidates_mm=[[0, 0, 0], [40, 0, 0]],
            scores=[0.8, 0.9],
            nodules_mm=[[0, 0, 0]],
            nodule_diameters_mm=[10],
        ),
        FROCScan(candidates_mm=[[0, 0, 0]], scores=[0.3]),
    ]
    return compute_froc(scans, n_bootstrap=30, seed=seed)


def test_plot_froc_writes_png(tmp_path: Path) -> None:
    out = plot_froc(_froc(0), tmp_path / "sub" / "froc.png", dpi=50)
    assert out.exists() and _png_size(out) == (320, 240)  # 6.4 x 4.8 in at 50 dpi


def test_plot_froc_several_systems_and_no_nodules(tmp_path: Path) -> None:
    empty = compute_froc([FROCScan(candidates_mm=[[0, 0, 0]], scores=[0.5])], n_bootstrap=0)
    out = plot_froc({"a": _froc(1), "b": empty}, tmp_path / "cmp.png", dpi=40)
    assert _png_size(out) == (256, 192)


def test_plot_pr_writes_png(tmp_path: Path) -> None:
    s = DetectionSample(
        pred_boxes=[[0, 0, 10, 10], [50, 50, 60, 60]],
        pred_scores=[0.9, 0.4],
        gt_boxes=[[0, 0, 10, 10]],
    )
    out = plot_pr(
        {"AP50": pr_curve([s]), "empty": pr_curve([DetectionSample()])}, tmp_path / "pr.png", dpi=50
    )
    assert _png_size(out) == (320, 240)


def test_unwritable_path_is_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        plot_pr(pr_curve([DetectionSample()]), blocker / "pr.png")
