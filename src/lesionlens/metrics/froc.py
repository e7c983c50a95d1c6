"""FROC analysis and the competition performance metric (CPM) under the LUNA16 rules.

Every position is a point in DICOM LPS millimetres. Per scan the inputs are

* ``candidates_mm: (M, 3) float64`` LPS mm and ``scores: (M,) float64`` (higher = more suspicious);
* ``nodules_mm: (N, 3)`` centres and ``nodule_diameters_mm: (N,)`` of the nodules to find;
* ``excluded_mm: (E, 3)`` and ``excluded_diameters_mm: (E,)`` of findings that count as neither
  hit nor false positive (LUNA16's ``annotations_excluded``; a negative diameter means unknown and
  is read as 10 mm, as the LUNA16 evaluation script does).

Matching follows the LUNA16 evaluation script (``noduleCADEvaluationLUNA16.py``):

1. A candidate *hits* a finding when its squared distance to the centre is strictly below the
   squared radius (``dist² < (diameter / 2)²``).
2. A candidate may hit several nodules; it counts as a hit for each. Per nodule only the
   highest-scoring hit is kept; the other hits on that nodule are ignored (neither TP nor FP).
3. A candidate that hits no nodule but lies inside an excluded finding is ignored.
4. Every other candidate is a false positive.

The curve runs over all score thresholds: sensitivity = detected nodules / all nodules,
FP rate = false positives / number of scans (scans without nodules count). The sensitivity at
each of 1/8, 1/4, 1/2, 1, 2, 4 and 8 FPs per scan is read off the curve with ``np.interp``
(past the end of the curve it is the final sensitivity), and the CPM is their mean. The 95%
confidence interval comes from resampling scans with replacement and taking the
``floor(0.025 n)``-th and ``floor(0.975 n)``-th sorted bootstrap values, like the script does.

Undefined ratios (e.g. a sensitivity when there are no nodules at all) are ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lesionlens.data.annotations import StudyTruth
from lesionlens.errors import ConfigError, DataFormatError

LUNA16_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""FPs per scan at which the CPM averages the sensitivity."""

UNKNOWN_EXCLUDED_DIAMETER_MM = 10.0
"""Diameter used for an excluded finding whose diameter is unknown (given as a negative)."""

SIZE_BUCKETS_MM: tuple[tuple[str, float, float], ...] = (
    ("<=6mm", 0.0, 6.0),
    ("6-10mm", 6.0, 10.0),
    ("10-20mm", 10.0, 20.0),
    (">20mm", 20.0, float("inf")),
)
"""Lesion size buckets ``(name, low, high)``; a diameter ``d`` falls in ``low < d <= high``
(the first bucket includes 0)."""

# Candidate outcomes in ScanMatch.candidate_outcome.
TP, FP, IGNORED_DOUBLE, IGNORED_EXCLUDED = "tp", "fp", "ignored-double", "ignored-excluded"


def _points(value: Any, name: str, scan_id: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 3), np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise DataFormatError(
            f"scan {scan_id!r}: {name} must be (K, 3) LPS mm, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise DataFormatError(f"scan {scan_id!r}: {name} holds non-finite coordinates")
    return arr


def _vector(value: Any, n: int, name: str, scan_id: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n:
        raise DataFormatError(f"scan {scan_id!r}: {name} has {arr.shape[0]} values for {n} points")
    if not np.all(np.isfinite(arr)):
        raise DataFormatError(f"scan {scan_id!r}: {name} holds non-finite values")
    return arr


@dataclass
class FROCScan:
    """Candidates and truth of one scan (shapes and units in the module docstring)."""

    candidates_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    nodules_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    nodule_diameters_mm: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    excluded_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    excluded_diameters_mm: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    scan_id: str = ""

    def __post_init__(self) -> None:
        sid = self.scan_id
        self.candidates_mm = _points(self.candidates_mm, "candidates_mm", sid)
        self.scores = _vector(self.scores, len(self.candidates_mm), "scores", sid)
        self.nodules_mm = _points(self.nodules_mm, "nodules_mm", sid)
        self.nodule_diameters_mm = _vector(
            self.nodule_diameters_mm, len(self.nodules_mm), "nodule_diameters_mm", sid
        )
        if np.any(self.nodule_diameters_mm <= 0):
            raise DataFormatError(f"scan {sid!r}: nodule_diameters_mm must be > 0")
        self.excluded_mm = _points(self.excluded_mm, "excluded_mm", sid)
        diam = _vector(
            self.excluded_diameters_mm, len(self.excluded_mm), "excluded_diameters_mm", sid
        )
        self.excluded_diameters_mm = np.where(diam < 0, UNKNOWN_EXCLUDED_DIAMETER_MM, diam)

    @classmethod
    def from_truth(
        cls, truth: StudyTruth, candidates_mm: np.ndarray, scores: np.ndarray
    ) -> FROCScan:
        """Build from :class:`StudyTruth`; ``excluded=True`` lesions become excluded findings."""
        inc = [les for les in truth.lesions if not les.excluded]
        exc = [les for les in truth.lesions if les.excluded]
        return cls(
            candidates_mm=candidates_mm,
            scores=scores,
            nodules_mm=np.array([les.center_mm for les in inc], np.float64).reshape(-1, 3),
            nodule_diameters_mm=np.array([les.diameter_mm for les in inc], np.float64),
            excluded_mm=np.array([les.center_mm for les in exc], np.float64).reshape(-1, 3),
            excluded_diameters_mm=np.array([les.diameter_mm for les in exc], np.float64),
            scan_id=truth.series_instance_uid,
        )


@dataclass
class ScanMatch:
    """How the candidates of one scan were counted.

    candidate_outcome: (M,) one of ``"tp"``, ``"fp"``, ``"ignored-double"``, ``"ignored-excluded"``.
    nodule_best: (N,) int64 index of the highest-scoring candidate hitting each nodule, -1 if none.
    nodule_best_score: (N,) float64 score of that candidate, ``nan`` if none.
    nodule_hit_distance_mm: (N,) float64 distance of that candidate to the centre (``nan``: none).
    """

    candidate_outcome: list[str]
    nodule_best: np.ndarray
    nodule_best_score: np.ndarray
    nodule_hit_distance_mm: np.ndarray


def _within(
    points: np.ndarray, centres: np.ndarray, diameters: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(M, K) bool "point m lies strictly inside sphere k" and (M, K) distances in mm."""
    d2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
    return d2 < (diameters[None, :] / 2.0) ** 2, np.sqrt(d2)


def match_scan(scan: FROCScan) -> ScanMatch:
    """Count one scan's candidates under the LUNA16 rules (see module docstring)."""
    m, n = len(scan.candidates_mm), len(scan.nodules_mm)
    hits, dist = _within(scan.candidates_mm, scan.nodules_mm, scan.nodule_diameters_mm)
    in_excluded, _ = _within(scan.candidates_mm, scan.excluded_mm, scan.excluded_diameters_mm)
    best = np.full(n, -1, np.int64)
    best_score = np.full(n, np.nan)
    best_dist = np.full(n, np.nan)
    for j in range(n):
        idx = np.flatnonzero(hits[:, j])
        if idx.size:
            k = int(idx[np.argmax(scan.scores[idx])])  # first of equal maxima
            best[j], best_score[j], best_dist[j] = k, scan.scores[k], dist[k, j]
    outcome: list[str] = []
    kept = set(best[best >= 0].tolist())
    for i in range(m):
        if i in kept:
            outcome.append(TP)
        elif hits[i].any():
            outcome.append(IGNORED_DOUBLE)
        elif in_excluded[i].any():
            outcome.append(IGNORED_EXCLUDED)
        else:
            outcome.append(FP)
    return ScanMatch(outcome, best, best_score, best_dist)


@dataclass
class FROCResult:
    """An FROC curve with its operating points, CPM and bootstrap confidence intervals.

    Curve arrays have one entry per distinct threshold plus a first point at ``(0, 0)`` whose
    threshold is ``+inf``; ``thresholds`` descend, ``fps_per_scan`` and ``sensitivities`` ascend.
    Point ``i`` counts every candidate with ``score >= thresholds[i]``.

    operating_points / ci_low / ci_high: FPs per scan → sensitivity (``nan`` CI without bootstrap).
    band_fps / band_low / band_high: (G,) the bootstrap CI along the curve, for plots.
    nodule_*: (N,) per nodule over all scans in input order; ``nodule_best_score`` is ``nan`` for a
    nodule no candidate hits; ``nodule_scan_index`` is the position of its scan in the input.
    """

    fps_per_scan: np.ndarray
    sensitivities: np.ndarray
    thresholds: np.ndarray
    operating_points: dict[float, float]
    cpm: float
    ci_low: dict[float, float]
    ci_high: dict[float, float]
    cpm_ci: tuple[float, float]
    n_scans: int
    n_nodules: int
    n_candidates: int
    n_false_positives: int
    n_ignored_double: int
    n_ignored_excluded: int
    nodule_best_score: np.ndarray
    nodule_diameter_mm: np.ndarray
    nodule_scan_index: np.ndarray
    nodule_hit_distance_mm: np.ndarray
    n_bootstrap: int = 0
    confidence: float = 0.95
    band_fps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    band_low: np.ndarray = field(default_factory=lambda: np.zeros(0))
    band_high: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-point curve); ``nan`` becomes ``None``."""

        def f(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        return {
            "cpm": f(self.cpm),
            "cpm_ci": [f(self.cpm_ci[0]), f(self.cpm_ci[1])],
            "sensitivity_at_fps": {str(k): f(v) for k, v in self.operating_points.items()},
            "ci_low": {str(k): f(v) for k, v in self.ci_low.items()},
            "ci_high": {str(k): f(v) for k, v in self.ci_high.items()},
            "n_scans": self.n_scans,
            "n_nodules": self.n_nodules,
            "n_candidates": self.n_candidates,
            "n_false_positives": self.n_false_positives,
            "n_ignored_double": self.n_ignored_double,
            "n_ignored_excluded": self.n_ignored_excluded,
            "n_bootstrap": self.n_bootstrap,
            "confidence": self.confidence,
        }


def _curve(
    scores: np.ndarray, is_tp: np.ndarray, weights: np.ndarray, n_scans: int, n_nodules: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FROC points from entries already sorted by descending score.

    scores/is_tp/weights: (K,) per entry (a detected nodule's best score, or a false positive);
    weights count how often the entry's scan is drawn (1 without bootstrap).
    """
    if scores.size == 0:
        fps, tps, thr = np.zeros(1), np.zeros(1), np.array([np.inf])
    else:
        cum_tp = np.cumsum(weights * is_tp)
        cum_fp = np.cumsum(weights * ~is_tp)
        ends = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1]
        fps, tps = np.r_[0.0, cum_fp[ends]], np.r_[0.0, cum_tp[ends]]
        thr = np.r_[np.inf, scores[ends]]
    sens = tps / n_nodules if n_nodules > 0 else np.full(tps.shape, np.nan)
    return fps / n_scans, sens, thr


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """(B, P) bootstrap values → (P,) low and high using the LUNA16 index rule."""
    if values.shape[0] == 0:
        nan = np.full(values.shape[1], np.nan)
        return nan, nan.copy()
    v = np.sort(values, axis=0)
    pz = (1.0 - confidence) / 2.0
    b = v.shape[0]
    lo = min(int(np.floor(pz * b)), b - 1)
    hi = min(int(np.floor((1.0 - pz) * b)), b - 1)
    return v[lo], v[hi]


def compute_froc(
    scans: Sequence[FROCScan],
    *,
    fp_rates: Sequence[float] = LUNA16_FP_RATES,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    band_points: int = 200,
) -> FROCResult:
    """FROC curve, sensitivities at ``fp_rates``, CPM and bootstrap CIs over ``scans``.

    n_bootstrap: number of scan resamples (0 disables the CI). seed: for the resampling.
    Bootstrap samples that draw no nodule are left out of the CI (sensitivity undefined).
    band_points: how many log-spaced FP rates between min and max of ``fp_rates`` carry the
    CI band for plots.
    """
    if len(scans) == 0:
        raise DataFormatError("scans: no scans to evaluate")
    rates = np.asarray(list(fp_rates), dtype=np.float64)
    if rates.size == 0 or not np.all(np.isfinite(rates)) or np.any(rates <= 0):
        raise ConfigError(f"fp_rates: need positive FP-per-scan rates, got {list(fp_rates)}")
    if int(n_bootstrap) != n_bootstrap or n_bootstrap < 0:
        raise ConfigError(f"n_bootstrap: must be an integer >= 0, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence: must be in (0, 1), got {confidence}")
    if band_points < 2:
        raise ConfigError(f"band_points: must be >= 2, got {band_points}")

    n_scans = len(scans)
    ent_score: list[np.ndarray] = []
    ent_tp: list[np.ndarray] = []
    ent_scan: list[np.ndarray] = []
    best_scores, diameters, scan_index, hit_dist = [], [], [], []
    nodules_per_scan = np.zeros(n_scans)
    n_fp = n_double = n_excl = n_cand = 0
    for s, scan in enumerate(scans):
        match = match_scan(scan)
        outcome = np.asarray(match.candidate_outcome, dtype=object)
        fp_scores = scan.scores[outcome == FP] if outcome.size else np.zeros(0)
        det = match.nodule_best_score[~np.isnan(match.nodule_best_score)]
        ent_score += [det, fp_scores]
        ent_tp += [np.ones(det.size, bool), np.zeros(fp_scores.size, bool)]
        ent_scan += [np.full(det.size + fp_scores.size, s)]
        best_scores.append(match.nodule_best_score)
        diameters.append(scan.nodule_diameters_mm)
        scan_index.append(np.full(len(scan.nodules_mm), s, np.int64))
        hit_dist.append(match.nodule_hit_distance_mm)
        nodules_per_scan[s] = len(scan.nodules_mm)
        n_cand += len(outcome)
        n_fp += fp_scores.size
        n_double += int(np.sum(outcome == IGNORED_DOUBLE))
        n_excl += int(np.sum(outcome == IGNORED_EXCLUDED))

    scores = np.concatenate(ent_score)
    order = np.argsort(-scores, kind="mergesort")
    scores = scores[order]
    is_tp = np.concatenate(ent_tp)[order]
    owner = np.concatenate(ent_scan)[order]
    n_nodules = int(nodules_per_scan.sum())

    fps, sens, thr = _curve(scores, is_tp, np.ones(scores.size), n_scans, n_nodules)
    at = np.interp(rates, fps, sens)
    cpm = float(np.mean(at))

    band_fps = (
        np.geomspace(rates.min(), rates.max(), band_points)
        if rates.max() > rates.min()
        else rates[:1]
    )
    lo_pts = np.full(rates.size, np.nan)
    hi_pts = lo_pts.copy()
    cpm_ci = (float("nan"), float("nan"))
    band_lo = np.full(band_fps.size, np.nan)
    band_hi = band_lo.copy()
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples_pts, samples_cpm, samples_band = [], [], []
        for _ in range(int(n_bootstrap)):
            counts = np.bincount(rng.integers(0, n_scans, size=n_scans), minlength=n_scans)
            n_nod_b = float(counts @ nodules_per_scan)
            if n_nod_b == 0:
                continue
            bf, bs, _ = _curve(scores, is_tp, counts[owner].astype(np.float64), n_scans, n_nod_b)
            pts = np.interp(rates, bf, bs)
            samples_pts.append(pts)
            samples_cpm.append([pts.mean()])
            samples_band.append(np.interp(band_fps, bf, bs))
        lo_pts, hi_pts = _percentile_ci(np.array(samples_pts).reshape(-1, rates.size), confidence)
        c_lo, c_hi = _percentile_ci(np.array(samples_cpm).reshape(-1, 1), confidence)
        cpm_ci = (float(c_lo[0]), float(c_hi[0]))
        band_lo, band_hi = _percentile_ci(
            np.array(samples_band).reshape(-1, band_fps.size), confidence
        )

    keys = [float(r) for r in rates]
    return FROCResult(
        fps_per_scan=fps,
        sensitivities=sens,
        thresholds=thr,
        operating_points=dict(zip(keys, at.tolist(), strict=True)),
        cpm=cpm,
        ci_low=dict(zip(keys, np.asarray(lo_pts, float).tolist(), strict=True)),
        ci_high=dict(zip(keys, np.asarray(hi_pts, float).tolist(), strict=True)),
        cpm_ci=cpm_ci,
        n_scans=n_scans,
        n_nodules=n_nodules,
        n_candidates=n_cand,
        n_false_positives=n_fp,
        n_ignored_double=n_double,
        n_ignored_excluded=n_excl,
        nodule_best_score=np.concatenate(best_scores),
        nodule_diameter_mm=np.concatenate(diameters),
        nodule_scan_index=np.concatenate(scan_index),
        nodule_hit_distance_mm=np.concatenate(hit_dist),
        n_bootstrap=int(n_bootstrap),
        confidence=confidence,
        band_fps=band_fps,
        band_low=np.asarray(band_lo, float),
        band_high=np.asarray(band_hi, float),
    )


def threshold_at_fp_rate(result: FROCResult, fps_per_scan: float) -> float:
    """Lowest score threshold whose FP rate does not exceed ``fps_per_scan``.

    Returns ``+inf`` when even the highest-scoring candidate already exceeds the rate. This is a
    real operating point of the detector (no interpolation), so its sensitivity can be below the
    interpolated value in :attr:`FROCResult.operating_points`.
    """
    if not np.isfinite(fps_per_scan) or fps_per_scan < 0:
        raise ConfigError(f"fps_per_scan: must be a finite number >= 0, got {fps_per_scan}")
    ok = np.flatnonzero(result.fps_per_scan <= fps_per_scan + 1e-12)
    return float(result.thresholds[ok[-1]])


@dataclass(frozen=True)
class BucketRecall:
    """Recall of one size bucket: ``n_detected / n_total`` (``nan`` when the bucket is empty)."""

    name: str
    n_detected: int
    n_total: int

    @property
    def recall(self) -> float:
        return self.n_detected / self.n_total if self.n_total else float("nan")


def recall_by_size(
    diameters_mm: np.ndarray,
    detected: np.ndarray,
    buckets: Sequence[tuple[str, float, float]] = SIZE_BUCKETS_MM,
) -> list[BucketRecall]:
    """Recall per size bucket. diameters_mm: (N,) float; detected: (N,) bool.

    A diameter ``d`` is in bucket ``(name, low, high)`` when ``low < d <= high`` (``d == low``
    also counts for the first bucket).
    """
    d = np.asarray(diameters_mm, np.float64).reshape(-1)
    hit = np.asarray(detected, bool).reshape(-1)
    if d.shape != hit.shape:
        raise DataFormatError(f"detected: {hit.size} flags for {d.size} diameters")
    out = []
    for i, (name, low, high) in enumerate(buckets):
        inside = (d > low) & (d <= high)
        if i == 0:
            inside |= d == low
        out.append(BucketRecall(name, int(np.sum(hit & inside)), int(np.sum(inside))))
    return out


def froc_recall_by_size(
    result: FROCResult,
    fps_per_scan: float,
    buckets: Sequence[tuple[str, float, float]] = SIZE_BUCKETS_MM,
) -> list[BucketRecall]:
    """Recall per nodule size bucket at the operating point of ``fps_per_scan`` FPs per scan.

    The operating point is :func:`threshold_at_fp_rate`; a nodule counts as detected when its
    best hit scores at least that threshold.
    """
    return recall_by_size(result.nodule_diameter_mm, _detected_at(result, fps_per_scan), buckets)


def _detected_at(result: FROCResult, fps_per_scan: float) -> np.ndarray:
    """(N,) bool per nodule: its best hit scores at least the threshold of ``fps_per_scan``."""
    thr = threshold_at_fp_rate(result, fps_per_scan)
    with np.errstate(invalid="ignore"):
        return result.nodule_best_score >= thr  # nan (never hit) → False


SMALL_LARGE_MM: tuple[tuple[str, float, float], ...] = (("<=6mm", 0.0, 6.0), (">6mm", 6.0, math.inf))


def froc_recall_by_scan_group(
    result: FROCResult,
    fps_per_scan: float,
    scan_groups: Sequence[Hashable],
    buckets: Sequence[tuple[str, float, float]] = SMALL_LARGE_MM,
) -> dict[Hashable, list[BucketRecall]]:
    """Recall per size bucket within each group of scans (e.g. slice thickness), at the operating
    point of ``fps_per_scan`` FPs per scan over all scans. scan_groups: one label per scan, in the
    order the scans were given to :func:`compute_froc`. Groups in first-seen order; a group whose
    scans hold no nodule is left out."""
    if len(scan_groups) != result.n_scans:
        raise DataFormatError(f"scan_groups: {len(scan_groups)} labels for {result.n_scans} scans")
    detected = _detected_at(result, fps_per_scan)
    labels = [scan_groups[int(i)] for i in result.nodule_scan_index]  # per nodule
    out: dict[Hashable, list[BucketRecall]] = {}
    for g in dict.fromkeys(scan_groups):
        m = np.array([lab == g for lab in labels], bool)
        if m.any():
            out[g] = recall_by_size(result.nodule_diameter_mm[m], detected[m], buckets)
    return out


@dataclass(frozen=True)
class ScanLevelResult:
    """Per-scan classification at a score threshold.

    A scan is positive when it holds at least one nodule (excluded findings do not count) and
    predicted positive when any candidate scores ``>= threshold``. Undefined ratios are ``nan``.
    """

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def specificity(self) -> float:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")


def scan_level_metrics(scans: Sequence[FROCScan], threshold: float) -> ScanLevelResult:
    """Per-scan sensitivity/specificity at ``threshold`` (see :class:`ScanLevelResult`)."""
    if not np.isfinite(threshold):
        raise ConfigError(f"threshold: must be a finite number, got {threshold}")
    tp = fp = tn = fn = 0
    for scan in scans:
        truth = len(scan.nodules_mm) > 0
        pred = bool(np.any(scan.scores >= threshold))
        tp += truth and pred
        fn += truth and not pred
        fp += pred and not truth
        tn += not pred and not truth
    return ScanLevelResult(float(threshold), tp, fp, tn, fn)
