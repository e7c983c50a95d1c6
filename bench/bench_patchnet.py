"""FROC of the 3D patch classifier on phantoms it never saw (docs/detection.md, "3D patch classifier").

Runs a detector package with its false-positive reduction turned off over synthetic phantoms from
a seed range of their own (default 500000…, used neither to train the detector nor the
classifier), scores every candidate with the package's ``fpr.onnx`` (and ``fpr_detail.onnx`` on the
small candidates, when the package has one) and prints the CPM, FROC and ≤ 6 mm recall at 4 FP/scan
of the detector alone, the classifier alone and their combinations s^w · p^(1 − w) (p blended
with the detail classifier's q as p^a · q^(1 − a)), and the classifiers' cost.

    .venv/bin/python bench/bench_patchnet.py --model default --seed0 500000 --phantoms 40 \\
        --cache bench-cache/phantoms [--threads 2]
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np

#: detector weights compared (besides the shipped one)
WEIGHTS = (0.5, 0.4, 0.3, 0.25, 0.2)
#: blend weights a of the detail classifier compared (besides the shipped one)
DETAIL_MAIN_WEIGHTS = (0.5, 0.6, 0.7, 0.8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--seed0", type=int, default=500_000)
    ap.add_argument("--phantoms", type=int, default=40)
    ap.add_argument("--cache", type=Path, default=Path("bench-cache/phantoms"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", type=Path, help="pickle the per-candidate scores here (for further analysis)")
    args = ap.parse_args()

    from lesionlens.engine.predict import PredictConfig, Predictor, resolve_model
    from lesionlens.engine.recipes import DefaultRecipe, phantom_candidates
    from lesionlens.metrics.froc import FROCScan, compute_froc, froc_recall_by_size
    from lesionlens.pipeline.patchnet import TTA_TOP, PatchClassifier, extract_patches
    from lesionlens.pipeline.rescore import label_candidates

    clf = PatchClassifier.load(resolve_model(args.model), threads=args.threads)
    if clf is None:
        raise SystemExit(f"{args.model}: the package has no fpr.onnx")
    shipped_w = clf.detector_weight
    weights = sorted({shipped_w, *WEIGHTS}, reverse=True)
    pred = Predictor(args.model, threads=args.threads,
                     config=PredictConfig(conf=clf.box_conf, max_det=300, rescore=False))
    data, t_extract, t_infer, t_detail, n_cand = [], 0.0, 0.0, 0.0, 0
    t0 = time.perf_counter()
    seeds = range(args.seed0, args.seed0 + args.phantoms)
    for i, (case, cands) in enumerate(phantom_candidates(pred, seeds, DefaultRecipe().test_slice_spacings_mm,
                                                         args.cache)):
        pts = np.array([c.center_mm for c in cands], np.float64).reshape(-1, 3)
        t1 = time.perf_counter()
        cubes = extract_patches(case.volume.pixels, case.volume.affine, pts, size=clf.size, step_mm=clf.step_mm)
        t2 = time.perf_counter()
        p = clf.probabilities(cubes)
        t3 = time.perf_counter()
        s = np.array([c.confidence for c in cands])
        # the shipped scoring (top TTA_TOP on 8 views) under each detector weight w
        p_tta = {w: clf.probabilities_tta(cubes, s, one_view=p, weight=w) for w in weights}
        t_extract, t_infer, n_cand = t_extract + t2 - t1, t_infer + t3 - t2, n_cand + len(cands)
        y, _ = label_candidates(cands, case.truth)
        row = {"truth": case.truth, "pts": pts, "s": s, "p": p, "p_tta": p_tta, "y": y}
        if clf.detail is not None:  # the detail classifier on the candidates up to its gate
            det = clf.detail
            gated = np.array([c.diameter_mm for c in cands]) <= det.gate_mm
            t4 = time.perf_counter()
            cubes_d = extract_patches(case.volume.pixels, case.volume.affine, pts[gated], size=det.size,
                                      step_mm=det.step_mm)
            q = np.full(len(cands), np.nan)
            q[gated] = det.probabilities_tta(cubes_d, s[gated], weight=shipped_w)
            t_detail += time.perf_counter() - t4
            row.update(gated=gated, q=q)
        row["diameter_mm"] = np.array([c.diameter_mm for c in cands], np.float64)
        data.append(row)
        print(f"phantom {i + 1}/{args.phantoms}: {len(cands)} candidates, {int(y.sum())} hits", flush=True)
    print(f"detector + classifier over {args.phantoms} phantoms: {time.perf_counter() - t0:.0f} s; "
          f"classifier per candidate: cube sampling {1e3 * t_extract / max(n_cand, 1):.2f} ms, "
          f"3D CNN {1e3 * t_infer / max(n_cand, 1):.2f} ms ({args.threads} threads)")

    if args.save is not None:
        args.save.write_bytes(pickle.dumps(data))

    def froc(scores: list[np.ndarray]) -> tuple[float, list[float], str]:
        res = compute_froc([FROCScan.from_truth(d["truth"], d["pts"], s) for d, s in zip(data, scores, strict=True)],
                           n_bootstrap=0)
        small = froc_recall_by_size(res, 4.0)[0]  # the <= 6 mm bucket
        return res.cpm, list(res.operating_points.values()), f"{small.n_detected}/{small.n_total}"

    settings = [
        ("the detector alone", lambda d: d["s"]),
        ("the patch classifier alone", lambda d: d["p"]),
        (f"s^w · p^(1 − w), one view, w = {shipped_w}", lambda d: clf.combine(d["s"], d["p"])),
    ]
    for w in weights:
        name = f"s^w · p^(1 − w), top {TTA_TOP} averaged over 8 views, w = {w}"
        shipped = w == shipped_w and clf.detail is None
        settings.append((f"**{name} (shipped)**" if shipped else name,
                         lambda d, w=w: clf.combine(d["s"], d["p_tta"][w], w)))
    if clf.detail is not None:
        det = clf.detail

        def blended(d: dict, a: float) -> np.ndarray:
            p = d["p_tta"][shipped_w].copy()
            g = d["gated"]
            p[g] = p[g] ** a * d["q"][g] ** (1 - a)
            return clf.combine(d["s"], p)

        for a in sorted({det.main_weight, *DETAIL_MAIN_WEIGHTS}, reverse=True):
            name = (f"shipped, p^a · q^(1 − a) with the detail classifier for candidates ≤ {det.gate_mm:g} mm, "
                    f"a = {a}")
            settings.append((f"**{name} (shipped)**" if a == det.main_weight else name,
                             lambda d, a=a: blended(d, a)))
        print(f"detail classifier: {1e3 * t_detail / max(n_cand, 1):.2f} ms per candidate (all candidates)")
    n_nod = sum(len([les for les in d["truth"].lesions if not les.excluded]) for d in data)
    print(f"\n{args.phantoms} phantoms (seeds {args.seed0}…), {n_nod} nodules, {n_cand} candidates, "
          f"{int(sum(d['y'].sum() for d in data))} hits\n")
    print("| candidates scored by | CPM | sensitivity at 1/8 … 8 FP/scan | ≤ 6 mm found at 4 FP/scan |\n"
          "|---|---|---|---|")
    for name, fn in settings:
        cpm, ops, small = froc([fn(d) for d in data])
        print(f"| {name} | {cpm:.3f} | {' '.join(f'{v:.2f}' for v in ops)} | {small} |", flush=True)


if __name__ == "__main__":
    main()
