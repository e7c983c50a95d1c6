"""3D patch classifier: false-positive reduction that looks at each candidate in 3D.

The detector sees one 2.5D stack at a time. Many of its confident marks are vessels cut across,
which look like a nodule on one slice but run on through the volume, while a small nodule can
get a low score. LUNA16-era systems add a second stage: a small 3D CNN that sees a cube of HU
around each candidate. This one samples a 24 mm cube at 1 mm (trilinear, in patient
coordinates, so slice spacing and pixel size do not matter), runs a 0.11 M-parameter 3D CNN on it
(ONNX Runtime at inference, ``fpr.onnx`` in the model package), and combines its probability
``p`` with the detector's score ``s`` as a weighted geometric mean ``s^w · p^(1 − w)`` (``w``, the
detector's weight, is stored with the network; 0.5 — ``sqrt(s · p)`` — when absent): either stage
alone can veto a candidate, and neither needs a threshold of its own.

Training data (:func:`fit_patch_classifier`): positives are cubes around true nodule centres
(jittered) and around candidates that hit a nodule; negatives are the detector's own candidates
that hit nothing — its most confident ones and a random sample of the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionlens.errors import ModelError
from lesionlens.pipeline.aggregate import Candidate3D

PATCH_FILE = "fpr.onnx"
#: the optional detail classifier: a finer cube for small candidates (see :class:`PatchClassifier`)
DETAIL_FILE = "fpr_detail.onnx"
SCHEMA = "lesionlens.patchnet/1"
SIZE, STEP_MM = 24, 1.0
HU_LO, HU_HI, HU_CENTER, HU_SCALE = -1000.0, 400.0, -300.0, 700.0
INPUT_NAME, OUTPUT_NAME = "patches", "logits"
#: the candidates ranked highest after one view are scored again on 7 more views of their cube
#: (mirrored left-right, mirrored front-back, rows and columns swapped, and each of these four
#: mirrored head-feet) and the 8 probabilities averaged: the ranking that FROC and the operating
#: point see, for 7 × 64 more cubes per series
TTA_TOP = 64
#: detector weight ``w`` of ``s^w · p^(1 − w)`` for a classifier whose metadata does not say
DEFAULT_DETECTOR_WEIGHT = 0.5


def _offsets(size: int, step: float) -> np.ndarray:
    """(3, size³) LPS offsets (x, y, z) in mm of a cube's sample points; array order (z, y, x)."""
    o = (np.arange(size) - (size - 1) / 2) * step
    z, y, x = np.meshgrid(o, o, o, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()])


def _axis_map(inv3: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For an affine whose voxel axes are patient axes (axial CT, no tilt), ``(perm, scale)`` with
    voxel axis ``a`` = patient axis ``perm[a]`` (0 x, 1 y, 2 z) at ``scale[a]`` voxels per mm
    (signed); None for oblique geometry."""
    perm = np.argmax(np.abs(inv3), axis=1)
    scale = inv3[np.arange(3), perm]
    off = inv3.copy()
    off[np.arange(3), perm] = 0.0
    if len(set(perm.tolist())) != 3 or np.abs(off).max() > 1e-6 * np.abs(scale).min():
        return None
    return perm, scale


def _interp_matrix(q: np.ndarray, n: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Linear interpolation of 1D positions ``q`` (S,) on an axis of ``n`` samples: ``(M, lo, out)``
    with ``M`` (S, L) weights over samples ``lo … lo + L − 1`` and ``out`` (S,) 1.0 where a position
    lies outside ``[0, n − 1]`` (its row of ``M`` is zero: it reads as air, as ``scipy.ndimage``'s
    ``mode="constant"`` does)."""
    valid = (q >= 0.0) & (q <= n - 1)
    if not valid.any():
        return np.zeros((len(q), 1), np.float32), 0, np.ones(len(q))
    i0 = np.clip(np.floor(q).astype(np.int64), 0, n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    w1 = np.where(valid, q - np.floor(q), 0.0)
    w0 = np.where(valid, 1.0 - w1, 0.0)
    lo, hi = int(i0[valid].min()), int(i1[valid].max())
    m = np.zeros((len(q), hi - lo + 1), np.float32)
    rows = np.flatnonzero(valid)
    np.add.at(m, (rows, i0[rows] - lo), w0[rows])
    np.add.at(m, (rows, i1[rows] - lo), w1[rows])
    return m, lo, (~valid).astype(np.float64)


def extract_patches(pixels: np.ndarray, affine: np.ndarray, centers_mm: np.ndarray, *, size: int = SIZE,
                    step_mm: float = STEP_MM, chunk: int = 128) -> np.ndarray:
    """``(N, size, size, size)`` float32 HU cubes centred on ``centers_mm`` ((N, 3) LPS mm).

    pixels: ``(K, R, C)`` HU; affine: ``lps = affine @ [k, r, c, 1]``. Axes of a cube are
    patient z, y, x (head-foot, anterior-posterior, right-left) at ``step_mm``; trilinear
    sampling, -1000 HU outside the volume. Axis-aligned geometry (axial CT) is sampled separably
    (three small matrix products per cube); oblique geometry through ``scipy.ndimage``.
    """
    centers = np.asarray(centers_mm, np.float64).reshape(-1, 3)
    out = np.empty((len(centers), size, size, size), np.float32)
    if len(centers) == 0:
        return out
    inv = np.linalg.inv(np.asarray(affine, np.float64))
    ctr = centers @ inv[:3, :3].T + inv[:3, 3]  # (N, 3) voxel index of each centre
    amap = _axis_map(inv[:3, :3])
    if amap is None:
        return _extract_general(pixels, inv, ctr, out, size, step_mm, chunk)
    perm, scale = amap
    o = (np.arange(size) - (size - 1) / 2) * step_mm
    shape = pixels.shape
    # cube axis order is patient (z, y, x): patient axis p sits at cube axis 2 - p
    cube_axis = [2 - int(perm[a]) for a in range(3)]
    for i, c in enumerate(ctr):
        mats, sl, outs = [], [], []
        for a in range(3):
            m, lo, ow = _interp_matrix(c[a] + o * scale[a], shape[a])
            mats.append(m)
            sl.append(slice(lo, lo + m.shape[1]))
            outs.append(ow)
        crop = np.asarray(pixels[sl[0], sl[1], sl[2]], np.float32)
        v = (mats[0] @ crop.reshape(crop.shape[0], -1)).reshape(size, crop.shape[1], crop.shape[2])
        v = np.matmul(mats[1][None], v) @ mats[2].T  # (S, S, S) in voxel-axis order
        # the weight that fell outside the volume reads as air
        inside = ((1.0 - outs[0])[:, None, None] * (1.0 - outs[1])[None, :, None] * (1.0 - outs[2])[None, None, :])
        v += HU_LO * (1.0 - inside)
        out[i] = np.transpose(v, np.argsort(cube_axis))
    return out


def _extract_general(pixels: np.ndarray, inv: np.ndarray, ctr: np.ndarray, out: np.ndarray, size: int,
                     step_mm: float, chunk: int) -> np.ndarray:
    from scipy import ndimage as ndi

    off = inv[:3, :3] @ _offsets(size, step_mm)  # (3, S³) index offsets
    vol = pixels if pixels.dtype == np.float32 else pixels.astype(np.float32)
    for i in range(0, len(ctr), chunk):
        c = ctr[i : i + chunk]
        coords = (c[:, :, None] + off[None]).transpose(1, 0, 2).reshape(3, -1)
        vals = ndi.map_coordinates(vol, coords, order=1, mode="constant", cval=HU_LO, prefilter=False)
        out[i : i + chunk] = vals.reshape(len(c), size, size, size)
    return out


def normalize(patches: np.ndarray) -> np.ndarray:
    """HU cubes → network input ``(N, 1, S, S, S)`` float32 (clipped to [-1000, 400] HU)."""
    return ((np.clip(patches, HU_LO, HU_HI) - HU_CENTER) / HU_SCALE).astype(np.float32)[:, None]


def build_patchnet(widths: tuple[int, int, int, int] = (8, 16, 32, 64)):  # type: ignore[no-untyped-def]
    """The torch network: 3 × (conv-BN-ReLU, max-pool) stages, a last conv, global mean, linear."""
    import torch
    from torch import nn

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv3d(i, o, 3, padding=1, bias=False), nn.BatchNorm3d(o), nn.ReLU(inplace=True))

    class PatchNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = widths
            self.features = nn.Sequential(
                block(1, w[0]), nn.MaxPool3d(2), block(w[0], w[1]), block(w[1], w[1]), nn.MaxPool3d(2),
                block(w[1], w[2]), block(w[2], w[2]), nn.MaxPool3d(2), block(w[2], w[3]))
            self.head = nn.Linear(w[3], 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x).mean(dim=(2, 3, 4))).squeeze(1)

    return PatchNet()


@dataclass
class PatchFitConfig:
    epochs: int = 12
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    neg_per_pos: int = 4  # negatives drawn per positive in each epoch
    seed: int = 0
    threads: int | None = None


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips along each axis and a random in-plane transpose (N, S, S, S)."""
    x = x.copy()
    for ax in (1, 2, 3):
        f = rng.random(len(x)) < 0.5
        x[f] = np.flip(x[f], ax)
    t = rng.random(len(x)) < 0.5
    x[t] = np.swapaxes(x[t], 2, 3)
    return np.ascontiguousarray(x)


def fit_patch_classifier(pos: np.ndarray, neg: np.ndarray, config: PatchFitConfig | None = None, *,
                         log: Any = None):  # type: ignore[no-untyped-def]
    """Train the network on HU cubes ``pos`` (nodules) and ``neg`` (false candidates), both
    ``(N, S, S, S)``: AdamW, one-cycle schedule, binary cross-entropy, fresh negatives each epoch.
    Returns the trained torch module (eval mode)."""
    import torch

    cfg = config or PatchFitConfig()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"fitting needs positive and negative patches, got {len(pos)} and {len(neg)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = build_patchnet()
    n_neg = min(len(neg), cfg.neg_per_pos * len(pos))
    per_epoch = max((len(pos) + n_neg) // cfg.batch, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * per_epoch + 1,
                                                pct_start=0.1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for ep in range(cfg.epochs):
        net.train()
        ni = rng.choice(len(neg), n_neg, replace=False)
        x = np.concatenate([pos, neg[ni]])
        y = np.r_[np.ones(len(pos)), np.zeros(n_neg)].astype(np.float32)
        order = rng.permutation(len(x))
        total = 0.0
        for b in range(per_epoch):
            j = order[b * cfg.batch : (b + 1) * cfg.batch]
            xb = torch.from_numpy(normalize(_augment(x[j], rng)))
            loss = loss_fn(net(xb), torch.from_numpy(y[j]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.item())
        if log:
            log(f"patch classifier epoch {ep + 1}/{cfg.epochs}: loss {total / per_epoch:.4f}")
    return net.eval()


def export_patch_classifier(net: Any, path: str | Path, info: dict[str, Any] | None = None, *,
                            size: int = SIZE, step_mm: float = STEP_MM) -> Path:
    """Export the network to ONNX (dynamic batch) with its sampling settings (a ``size``³ cube at
    ``step_mm``) as metadata."""
    import contextlib
    import io

    import onnx
    import torch

    path = Path(path)
    x = torch.zeros(2, 1, size, size, size)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            prog = torch.onnx.export(net.eval(), (x,), None, dynamo=True, input_names=[INPUT_NAME],
                                     output_names=[OUTPUT_NAME],
                                     dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=65536)}})
        assert prog is not None
        prog.save(str(path))
    except Exception as e:  # exporter errors come in many types
        raise ModelError(f"patch classifier export failed: {e}", path=path) from e
    proto = onnx.load(str(path))
    meta = {"schema": SCHEMA, "size": str(size), "step_mm": str(step_mm), "combine": "weighted_geometric_mean",
            "info": json.dumps(info or {})}
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))
    return path


class PatchClassifier:
    """The package's ``fpr.onnx`` under ONNX Runtime (CPU, or the best provider present).

    With a detail classifier (``fpr_detail.onnx``: the same kind of network on a finer cube, trained
    on small nodules only), a candidate at most ``gate_mm`` across gets the probability
    ``p^a · q^(1 − a)`` of the main classifier's ``p`` and the detail classifier's ``q`` (``a``:
    its ``main_weight``); at 1 mm a 3–4 mm nodule is 3–4 samples of the main cube."""

    def __init__(self, path: str | Path, threads: int | None = None, *, detail: str | Path | None = None):
        from lesionlens.engine.export import make_session

        self.path = Path(path)
        self.session = make_session(self.path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("schema") != SCHEMA:
            raise ModelError(f"not a patch classifier (schema {meta.get('schema')!r}, expected {SCHEMA!r})",
                             path=self.path)
        try:
            self.size, self.step_mm = int(meta["size"]), float(meta["step_mm"])
            self.info = json.loads(meta.get("info", "{}"))
        except (KeyError, ValueError) as e:
            raise ModelError(f"malformed patch classifier metadata: {e!r}", path=self.path) from e
        self.box_conf = float(self.info.get("box_conf", 0.01))
        self.detector_weight = float(self.info.get("detector_weight", DEFAULT_DETECTOR_WEIGHT))
        if not 0.0 < self.detector_weight < 1.0:
            raise ModelError(f"patch classifier detector_weight must be in (0, 1), got {self.detector_weight}",
                             path=self.path)
        self.role = str(self.info.get("role", "main"))
        self.gate_mm = float(self.info.get("gate_mm", 0.0))
        self.main_weight = float(self.info.get("main_weight", 0.5))
        if self.role == "detail" and not (self.gate_mm > 0.0 and 0.0 < self.main_weight < 1.0):
            raise ModelError(f"detail classifier needs gate_mm > 0 and main_weight in (0, 1), got "
                             f"{self.gate_mm} and {self.main_weight}", path=self.path)
        self.detail: PatchClassifier | None = None
        if detail is not None:
            self.detail = PatchClassifier(detail, threads)
            if self.detail.role != "detail":
                raise ModelError(f"not a detail classifier (role {self.detail.role!r})", path=self.detail.path)

    def combine(self, s: np.ndarray | float, p: np.ndarray | float, weight: float | None = None) -> np.ndarray:
        """The confidence ``s^w · p^(1 − w)`` of detector scores ``s`` and probabilities ``p``
        (``w`` = ``weight``, else the classifier's :attr:`detector_weight`)."""
        w = self.detector_weight if weight is None else float(weight)
        return np.power(np.clip(s, 0.0, None), w) * np.power(np.clip(p, 0.0, None), 1.0 - w)

    @classmethod
    def load(cls, package: str | Path, threads: int | None = None) -> PatchClassifier | None:
        """The package's patch classifier (with its detail classifier when the package has one), or
        None when it has none."""
        p, d = Path(package) / PATCH_FILE, Path(package) / DETAIL_FILE
        return cls(p, threads, detail=d if d.is_file() else None) if p.is_file() else None

    def probabilities(self, patches: np.ndarray, batch: int = 256) -> np.ndarray:
        """(N,) nodule probabilities of HU cubes ``(N, S, S, S)``."""
        if len(patches) == 0:
            return np.zeros(0)
        out = []
        for i in range(0, len(patches), batch):
            logits = self.session.run([OUTPUT_NAME], {INPUT_NAME: normalize(patches[i : i + batch])})[0]
            out.append(1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -30, 30))))
        return np.concatenate(out)

    def probabilities_tta(self, patches: np.ndarray, prior: np.ndarray, top: int = TTA_TOP, *,
                          one_view: np.ndarray | None = None, weight: float | None = None) -> np.ndarray:
        """Probabilities of ``patches``; those of the ``top`` highest :meth:`combine` ``(prior, p)`` averaged
        over 8 views of their cube (as is, mirrored along x, mirrored along y, x and y swapped, and
        these four mirrored along z).
        one_view: :meth:`probabilities` of ``patches`` when the caller has them already.
        weight: the detector weight that ranks the top (default: the classifier's own)."""
        p = self.probabilities(patches) if one_view is None else np.array(one_view, np.float64)
        if top <= 0 or len(p) == 0:
            return p
        sel = np.argsort(-self.combine(prior, p, weight), kind="stable")[:top]
        cubes = patches[sel]
        flipped = cubes[:, ::-1]
        views = [cubes[:, :, :, ::-1], cubes[:, :, ::-1, :], np.swapaxes(cubes, 2, 3), flipped,
                 flipped[:, :, :, ::-1], flipped[:, :, ::-1, :], np.swapaxes(flipped, 2, 3)]
        p[sel] = (p[sel] + sum(self.probabilities(np.ascontiguousarray(v)) for v in views)) / (1 + len(views))
        return p

    def __call__(self, cands: list[Candidate3D], pixels: np.ndarray, affine: np.ndarray, *,
                 min_confidence: float = 0.0) -> list[Candidate3D]:
        """Rescore in place (``confidence = s^w · p^(1 − w)``, :meth:`combine`, with ``p`` blended with
        the detail classifier's for small candidates; the detector's score kept in
        ``detector_confidence``, the classifiers' in ``patch_probability`` and
        ``detail_probability``); returns the candidates sorted by the new confidence.

        min_confidence: the caller's threshold on the result. Since ``p ≤ 1``, a candidate whose
        score is below its ``1/w``-th power cannot reach it: those are dropped without being
        classified (at an operating point of 0.5, most of a series' candidates)."""
        floor = float(min_confidence) ** (1.0 / self.detector_weight)
        cands = [c for c in cands if c.confidence >= floor] if floor > 0 else cands
        centers = np.array([c.center_mm for c in cands], np.float64).reshape(-1, 3)
        prior = np.array([c.confidence for c in cands], np.float64)
        p = self.probabilities_tta(extract_patches(pixels, affine, centers, size=self.size, step_mm=self.step_mm),
                                   prior)
        q = np.full(len(cands), np.nan)
        blended = p
        if self.detail is not None:
            d = self.detail
            # since q <= 1, a candidate's confidence is at most s^w · p^(a(1 − w)): those that cannot
            # reach the caller's threshold even so are not sampled again (they are dropped anyway)
            reach = self.combine(prior, np.power(p, d.main_weight)) >= float(min_confidence) - 1e-12
            small = np.flatnonzero((np.array([c.diameter_mm for c in cands], np.float64) <= d.gate_mm) & reach)
            cubes = extract_patches(pixels, affine, centers[small], size=d.size, step_mm=d.step_mm)
            q[small] = d.probabilities_tta(cubes, prior[small], weight=self.detector_weight)
            blended = p.copy()
            blended[small] = np.power(p[small], d.main_weight) * np.power(q[small], 1.0 - d.main_weight)
        for c, v, qv, b in zip(cands, p, q, blended, strict=True):
            if c.detector_confidence is None:
                c.detector_confidence = c.confidence
            c.patch_probability = float(v)
            c.detail_probability = None if np.isnan(qv) else float(qv)
            c.confidence = float(self.combine(c.confidence, b))
        cands.sort(key=lambda c: -c.confidence)
        return cands
