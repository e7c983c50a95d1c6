"""Candidate rescoring: a learned second stage that rescores 3D candidates (false-positive reduction).

The detector sees one 2.5D stack at a time; some of its confident marks are not nodule-shaped in
3D. A real nodule is roughly as deep as it is wide and keeps its centre from slice to slice; a
vessel runs through many slices and drifts; a structure at the lung border or the diaphragm dome
can look round on one slice yet have no depth. LUNA16-era systems therefore add a false-positive
reduction stage after candidate detection. This one is deliberately small and transparent: a
few features per candidate (track statistics from :mod:`lesionlens.pipeline.aggregate` and the HU
around the candidate on its key slice) and a two-layer perceptron, fitted on candidates the
detector produced on phantoms never used to train it and stored in the model package as
``rescorer.json`` (numbers only: no code is loaded from a package).

``Rescorer(cands, volume)`` replaces each candidate's ``confidence`` by the rescorer's probability
and keeps the detector's own score in ``detector_confidence``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lesionlens.errors import DataFormatError, ModelError
from lesionlens.jsonio import read_json, write_json
from lesionlens.pipeline.aggregate import Candidate3D

SCHEMA = "lesionlens.rescorer/1"
RESCORER_FILE = "rescorer.json"

#: Feature names, in the order of :func:`candidate_features` columns.
FEATURES: tuple[str, ...] = (
    "logit_max_score", "logit_mean_score", "log_n_boxes", "log_diameter_mm", "log_z_extent_mm",
    "log_depth_ratio", "drift_ratio", "boxes_per_expected", "slice_mm",
    "core_hu", "ring_hu", "ring_lung_fraction", "contrast_hu", "z_beyond_max_hu", "z_beyond_min_hu",
)

_EPS = 1e-4


def _logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return float(np.log(p / (1 - p)))


def _hu_features(pixels: np.ndarray, c: Candidate3D) -> tuple[float, float, float]:
    """Mean HU inside the key-slice box's ellipse, mean HU and lung fraction (< -600 HU) in the
    ring between the box and the box grown to 2x its size."""
    k = min(max(int(c.key_k), 0), pixels.shape[0] - 1)
    img = pixels[k]
    h, w = img.shape
    x1, y1, x2, y2 = (float(v) for v in c.bbox_px)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    rx, ry = max((x2 - x1) / 2, 0.5), max((y2 - y1) / 2, 0.5)
    X0, X1 = max(int(np.floor(cx - 2 * rx)), 0), min(int(np.ceil(cx + 2 * rx)) + 1, w)
    Y0, Y1 = max(int(np.floor(cy - 2 * ry)), 0), min(int(np.ceil(cy + 2 * ry)) + 1, h)
    if X1 <= X0 or Y1 <= Y0:
        return 0.0, 0.0, 0.0
    patch = np.clip(img[Y0:Y1, X0:X1].astype(np.float64), -1100.0, 400.0)
    yy, xx = np.mgrid[Y0:Y1, X0:X1]
    r2 = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2
    core, ring = patch[r2 <= 1.0], patch[(r2 > 1.44) & (r2 <= 4.0)]
    core_hu = float(core.mean()) if core.size else float(patch.max())
    ring_hu = float(ring.mean()) if ring.size else -1000.0
    lung = float(np.mean(ring < -600.0)) if ring.size else 1.0
    return core_hu, ring_hu, lung


def _z_beyond_hu(pixels: np.ndarray, c: Candidate3D, slice_mm: float) -> tuple[float, float]:
    """Mean HU of the 3 x 3 px at the candidate's in-plane centre, 0.75 diameters above and below
    its key slice (max and min of the two sides): lung beyond a nodule, tissue along a vessel."""
    x1, y1, x2, y2 = (float(v) for v in c.bbox_px)
    r, col = int((y1 + y2) / 2), int((x1 + x2) / 2)
    off = max(int(round(0.75 * float(c.inplane_diameter_mm) / slice_mm)), 1)
    k0, (nk, h, w) = int(c.key_k), pixels.shape
    vals = []
    for k in (k0 - off, k0 + off):
        if 0 <= k < nk and 0 <= r < h and 0 <= col < w:
            win = pixels[k, max(r - 1, 0) : r + 2, max(col - 1, 0) : col + 2]
            vals.append(float(np.clip(win, -1100.0, 400.0).mean()))
        else:
            vals.append(-1000.0)  # outside the scan: nothing continues there
    return max(vals), min(vals)


def candidate_features(cands: list[Candidate3D], pixels: np.ndarray, slice_mm: float) -> np.ndarray:
    """``(N, len(FEATURES))`` float64 features of the candidates of one volume.

    pixels: the ``(K, R, C)`` HU volume the candidates come from; slice_mm: slice spacing.
    """
    rows = []
    sm = max(float(slice_mm), 0.1)
    for c in cands:
        scores = c.slice_scores or [c.confidence]
        d = max(float(c.inplane_diameter_mm), 0.5)
        z = max(float(c.z_extent_mm), sm)
        expected = max(d / sm, 1.0)
        core_hu, ring_hu, lung = _hu_features(pixels, c)
        z_hi, z_lo = _z_beyond_hu(pixels, c, sm)
        rows.append([
            _logit(max(scores)), _logit(float(np.mean(scores))), np.log(max(c.n_boxes, 1)), np.log(d), np.log(z),
            np.log(z / d), float(c.drift_mm) / d, max(c.n_boxes, 1) / expected, sm,
            core_hu / 100.0, ring_hu / 100.0, lung, (core_hu - ring_hu) / 100.0, z_hi / 100.0, z_lo / 100.0,
        ])
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURES))


@dataclass
class Rescorer:
    """Standardise → Linear → ReLU → Linear → sigmoid, all in numpy.

    box_conf: the per-slice box threshold the rescorer was fitted with; a predictor using it
    must build candidates at that threshold (it then filters on the rescored confidence).
    """

    mean: np.ndarray
    std: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: float
    box_conf: float = 0.01
    info: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] == 0:
            return np.zeros(0)
        z = (x - self.mean) / self.std
        h = np.maximum(z @ self.w1 + self.b1, 0.0)
        logits = np.clip(h @ self.w2 + self.b2, -30, 30)
        return 1.0 / (1.0 + np.exp(-logits))

    def __call__(self, cands: list[Candidate3D], pixels: np.ndarray, slice_mm: float) -> list[Candidate3D]:
        """Rescore in place; returns the candidates sorted by the new confidence."""
        p = self.probabilities(candidate_features(cands, pixels, slice_mm))
        for c, v in zip(cands, p, strict=True):
            c.detector_confidence = c.confidence
            c.confidence = float(v)
        cands.sort(key=lambda c: -c.confidence)
        return cands

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "features": list(FEATURES), "box_conf": self.box_conf,
                "mean": self.mean.tolist(), "std": self.std.tolist(), "w1": self.w1.tolist(),
                "b1": self.b1.tolist(), "w2": self.w2.tolist(), "b2": float(self.b2), "info": self.info}

    def save(self, package: str | Path) -> Path:
        return write_json(self.to_dict(), Path(package) / RESCORER_FILE)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = RESCORER_FILE) -> Rescorer:
        if d.get("schema") != SCHEMA:
            raise DataFormatError(f"schema is {d.get('schema')!r}, expected {SCHEMA!r}", path=source)
        if list(d.get("features", [])) != list(FEATURES):
            raise ModelError(f"rescorer features {d.get('features')} do not match this version's {list(FEATURES)}",
                             path=source)
        try:
            r = cls(mean=np.asarray(d["mean"], np.float64), std=np.asarray(d["std"], np.float64),
                    w1=np.asarray(d["w1"], np.float64), b1=np.asarray(d["b1"], np.float64),
                    w2=np.asarray(d["w2"], np.float64), b2=float(d["b2"]), box_conf=float(d.get("box_conf", 0.01)),
                    info=dict(d.get("info", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(f"malformed rescorer: {exc!r}", path=source) from exc
        nf, nh = len(FEATURES), r.w1.shape[-1] if r.w1.ndim == 2 else -1
        if (r.mean.shape != (nf,) or r.std.shape != (nf,) or r.w1.shape != (nf, nh) or r.b1.shape != (nh,)
                or r.w2.shape != (nh,) or not np.all(r.std > 0)):
            raise DataFormatError("rescorer arrays have inconsistent shapes or a zero std", path=source)
        return r

    @classmethod
    def load(cls, package: str | Path) -> Rescorer | None:
        """The package's rescorer, or None when it has none."""
        path = Path(package) / RESCORER_FILE
        if not path.is_file():
            return None
        return cls.from_dict(read_json(path), str(path))


def fit_rescorer(x: np.ndarray, y: np.ndarray, *, hidden: int = 16, epochs: int = 300, lr: float = 0.02,
                 weight_decay: float = 1e-3, pos_weight: float | None = None, seed: int = 0,
                 box_conf: float = 0.01, info: dict[str, Any] | None = None) -> Rescorer:
    """Fit the perceptron with full-batch AdamW on weighted binary cross-entropy (torch).

    x: ``(N, F)`` features; y: ``(N,)`` 1 for candidates that hit a nodule, else 0.
    pos_weight: weight of the positives (default: negatives / positives, capped at 50).
    """
    import torch

    if x.ndim != 2 or x.shape[1] != len(FEATURES) or len(y) != len(x):
        raise ValueError(f"x must be (N, {len(FEATURES)}) and y (N,), got {x.shape} and {np.shape(y)}")
    n_pos = int(np.sum(y > 0.5))
    if n_pos == 0 or n_pos == len(y):
        raise ValueError("fitting needs both positive and negative candidates")
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-6] = 1.0
    g = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy((x - mean) / std).float()
    yt = torch.from_numpy(np.asarray(y, np.float32))
    w1 = (torch.randn(x.shape[1], hidden, generator=g) * (2.0 / x.shape[1]) ** 0.5).requires_grad_()
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = (torch.randn(hidden, generator=g) * (1.0 / hidden) ** 0.5).requires_grad_()
    b2 = torch.zeros((), requires_grad=True)
    pw = pos_weight if pos_weight is not None else min((len(y) - n_pos) / n_pos, 50.0)
    opt = torch.optim.AdamW([w1, b1, w2, b2], lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pw))
    for _ in range(epochs):
        opt.zero_grad()
        logits = torch.relu(xt @ w1 + b1) @ w2 + b2
        loss = loss_fn(logits, yt)
        loss.backward()
        opt.step()
    to = lambda t: t.detach().double().numpy()  # noqa: E731
    meta = {"n_candidates": int(len(y)), "n_positive": n_pos, "hidden": hidden, "epochs": epochs,
            "pos_weight": float(pw), "final_loss": float(loss.item()), **(info or {})}
    return Rescorer(mean, std, to(w1), to(b1), to(w2), float(b2.item()), box_conf=box_conf, info=meta)


def label_candidates(cands: list[Candidate3D], truth: Any) -> tuple[np.ndarray, np.ndarray]:
    """Training labels under the LUNA16 hit rule: ``(y, keep)``, both ``(N,)``.

    y is 1 where a candidate hits a nodule of ``truth`` (:class:`~lesionlens.data.annotations.StudyTruth`;
    squared distance strictly below the squared radius), else 0; keep is False for candidates that
    hit only an excluded finding (they count as neither in FROC, so they teach nothing).
    """
    pts = np.array([c.center_mm for c in cands], np.float64).reshape(-1, 3)
    y, excl = np.zeros(len(cands)), np.zeros(len(cands), bool)
    for les in truth.lesions:
        inside = np.sum((pts - np.asarray(les.center_mm, np.float64)) ** 2, axis=1) < (les.diameter_mm / 2) ** 2
        if les.excluded:
            excl |= inside
        else:
            y[inside] = 1.0
    return y, ~(excl & (y == 0))
