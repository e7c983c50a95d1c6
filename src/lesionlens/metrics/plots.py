"""PNG plots of the evaluation curves: FROC (log FP axis, LUNA16 style) and precision–recall.

Figures are drawn with matplotlib's object API and the Agg canvas, so no display, no pyplot
state and no global backend switch are involved; each call writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from lesionlens.errors import OutputError
from lesionlens.metrics.detection import PRCurve, ap_from_curve
from lesionlens.metrics.froc import FROCResult


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png", dpi=dpi)
    except OSError as err:
        raise OutputError(f"cannot write plot: {err.strerror or err}", path=out) from err
    return out


def plot_froc(
    result: FROCResult | Mapping[str, FROCResult],
    path: str | Path,
    *,
    title: str = "FROC",
    show_ci: bool = True,
    dpi: int = 120,
) -> Path:
    """Write the FROC curve(s) as a PNG at ``path``.

    result: one :class:`FROCResult` or a mapping ``name → FROCResult`` for comparing systems.
    The x axis is FPs per scan on a log scale from the smallest to the largest operating point
    (1/8 … 8 by default); the operating points are marked, the legend shows the CPM, and the
    bootstrap CI band is shaded when ``show_ci`` and the result has one.
    """
    results = {"": result} if isinstance(result, FROCResult) else dict(result)
    fig = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rates = sorted({r for res in results.values() for r in res.operating_points})
    lo, hi = (rates[0], rates[-1]) if rates else (0.125, 8.0)
    for name, res in results.items():
        label = (
            f"{name + ' ' if name else ''}CPM {res.cpm:.3f}"
            if not np.isnan(res.cpm)
            else name or "FROC"
        )
        x = np.clip(res.fps_per_scan, lo, None)
        (line,) = ax.plot(x, res.sensitivities, drawstyle="default", label=label)
        pts = sorted(res.operating_points.items())
        ax.plot([p for p, _ in pts], [s for _, s in pts], "o", color=line.get_color(), markersize=4)
        if show_ci and res.band_fps.size and np.any(np.isfinite(res.band_low)):
            ax.fill_between(
                res.band_fps, res.band_low, res.band_high, color=line.get_color(), alpha=0.2
            )
    ax.set_xscale("log", base=2)
    ax.set_xlim(lo, hi)
    ax.set_ylim(0.0, 1.02)
    ax.xaxis.set_major_locator(FixedLocator(rates or [lo, hi]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{r:g}" if r >= 1 else f"1/{round(1 / r):d}" for r in (rates or [lo, hi])])
    ax.set_xlabel("Average number of false positives per scan")
    ax.set_ylabel("Sensitivity")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.4)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_pr(
    curves: PRCurve | Mapping[str, PRCurve],
    path: str | Path,
    *,
    title: str = "Precision-recall",
    dpi: int = 120,
) -> Path:
    """Write precision–recall curve(s) as a PNG; the legend shows each curve's 101-point AP."""
    items = {"": curves} if isinstance(curves, PRCurve) else dict(curves)
    fig = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, c in items.items():
        ap = ap_from_curve(c)
        label = (
            f"{name + ' ' if name else ''}AP@{c.iou_threshold:g} {ap:.3f}"
            if not np.isnan(ap)
            else name or "PR"
        )
        rec = np.r_[0.0, c.recall] if c.recall.size else np.zeros(1)
        prec = np.r_[1.0, c.precision] if c.precision.size else np.ones(1)
        ax.plot(rec, prec, drawstyle="steps-post", label=label)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_title(title)
    ax.grid(True, alpha=0.4)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return _save(fig, path, dpi)
