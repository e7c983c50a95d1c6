"""FROC of the 3D patch classifier on phantoms it never saw (docs/detection.md, "3D patch classifier").

Runs a detector package with its false-positive reduction turned off over synthetic phantoms from
a seed range of their own (default 500000…, used neither to train the detector nor the
classifier), scores every candidate with the package's ``fpr.onnx`` and prints the CPM and FROC
of the detector alone, the classifier alone and their combinations s^w · p^(1 − w), and the classifier's cost.

    .venv/bin/python bench/bench_patchnet.py --model default --seed0 500000 --phantoms 40 \\
        --cache bench-cache/phantoms [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

#: detector weights compared (besides the shipped one)
WEIGHTS = (0.5, 0.4, 0.3, 0.25, 0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--seed0", type=int, default=500_000)
    ap.add_argument("--phantoms", type=int, default=40)
    ap.add_argument("--cache", type=Path, default=Path("bench-cache/phantoms"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from lesionlens.engine.predict import PredictConfig, Predictor, resolve_model
    from lesionlens.engine.recipes import DefaultRecipe, phantom_candidates
    from lesionlens.metrics.froc import FROCScan, compute_froc
    from lesionlens.pipeline.patchnet import TTA_TOP, PatchClassifier, extract_patches
    from lesionlens.pipeline.rescore import label_candidates

    clf = PatchClassifier.load(resolve_model(args.model), threads=args.threads)
    if clf is None:
        raise SystemExit(f"{args.model}: the package has no fpr.onnx")
    shipped_w = clf.detector_weight
    weights = sorted({shipped_w, *WEIGHTS}, reverse=True)
    pred = Predictor(args.model, threads=args.threads,
                     config=PredictConfig(conf=clf.box_conf, max_det=300, rescore=False))
    data, t_extract, t_infer, n_cand = [], 0.0, 0.0, 0
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
        data.append({"truth": case.truth, "pts": pts, "s": s, "p": p, "p_tta": p_tta, "y": y})
        print(f"phantom {i + 1}/{args.phantoms}: {len(cands)} candidates, {int(y.sum())} hits", flush=True)
    print(f"detector + classifier over {args.phantoms} phantoms: {time.perf_counter() - t0:.0f} s; "
          f"classifier per candidate: cube sampling {1e3 * t_extract / max(n_cand, 1):.2f} ms, "
          f"3D CNN {1e3 * t_infer / max(n_cand, 1):.2f} ms ({args.threads} threads)")

    def froc(scores: list[np.ndarray]) -> tuple[float, list[float]]:
        res = compute_froc([FROCScan.from_truth(d["truth"], d["pts"], s) for d, s in zip(data, scores, strict=True)],
                           n_bootstrap=0)
        return res.cpm, list(res.operating_points.values())

    settings = [
        ("the detector alone", lambda d: d["s"]),
        ("the patch classifier alone", lambda d: d["p"]),
        (f"s^w · p^(1 − w), one view, w = {shipped_w}", lambda d: clf.combine(d["s"], d["p"])),
    ]
    for w in weights:
        name = f"s^w · p^(1 − w), top {TTA_TOP} averaged over 8 views, w = {w}"
        settings.append((f"**{name} (shipped)**" if w == shipped_w else name,
                         lambda d, w=w: clf.combine(d["s"], d["p_tta"][w], w)))
    n_nod = sum(len([les for les in d["truth"].lesions if not les.excluded]) for d in data)
    print(f"\n{args.phantoms} phantoms (seeds {args.seed0}…), {n_nod} nodules, {n_cand} candidates, "
          f"{int(sum(d['y'].sum() for d in data))} hits\n")
    print("| candidates scored by | CPM | sensitivity at 1/8 … 8 FP/scan |\n|---|---|---|")
    for name, fn in settings:
        cpm, ops = froc([fn(d) for d in data])
        print(f"| {name} | {cpm:.3f} | {' '.join(f'{v:.2f}' for v in ops)} |", flush=True)


if __name__ == "__main__":
    main()
