"""Cross-validated FROC of the candidate rescorer (docs/detection.md, "Candidate rescoring").

Runs a detector package (without its rescorer) over synthetic phantoms from a seed range of their
own, then K-fold cross-validates the rescorer by phantom: fitted on K-1 folds, scored on the
held-out fold; prints the CPM and the FROC of the detector alone and of each setting.

    .venv/bin/python bench/bench_rescorer.py --model default --seed0 500000 --phantoms 40 \\
        --cache bench-cache/phantoms [--folds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--seed0", type=int, default=500_000)
    ap.add_argument("--phantoms", type=int, default=40)
    ap.add_argument("--cache", type=Path, default=Path("bench-cache/phantoms"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from lesionlens.engine.predict import PredictConfig, Predictor
    from lesionlens.engine.recipes import RESCORER_FIT, DefaultRecipe, rescorer_cases
    from lesionlens.metrics.froc import FROCScan, compute_froc
    from lesionlens.pipeline.rescore import FEATURES, fit_rescorer

    torch.set_num_threads(args.threads)
    pred = Predictor(args.model, threads=args.threads,
                     config=PredictConfig(conf=float(RESCORER_FIT["box_conf"]), max_det=300, rescore=False))
    t0 = time.perf_counter()
    cases = rescorer_cases(pred, args.seed0, args.phantoms, DefaultRecipe().test_slice_spacings_mm, args.cache,
                           log=lambda m: print(m, flush=True))
    data = [{"x": c.x, "y": c.y, "keep": c.keep, "truth": c.truth,
             "pts": np.array([k.center_mm for k in c.candidates], np.float64).reshape(-1, 3),
             "s": np.array([k.confidence for k in c.candidates])} for c in cases]
    print(f"detector over {args.phantoms} phantoms: {time.perf_counter() - t0:.0f} s")

    def froc(scores: list[np.ndarray]) -> tuple[float, list[float]]:
        res = compute_froc([FROCScan.from_truth(d["truth"], d["pts"], s) for d, s in zip(data, scores, strict=True)],
                           n_bootstrap=0)
        return res.cpm, list(res.operating_points.values())

    def cv(hidden: int, epochs: int, drop: tuple[str, ...] = (), seeds: tuple[int, ...] = (0,)) -> list[np.ndarray]:
        cols = np.array([n not in drop for n in FEATURES])
        out: list[np.ndarray] = [np.zeros(0)] * len(data)
        for f in range(args.folds):
            tr = [d for i, d in enumerate(data) if i % args.folds != f]
            x = np.concatenate([d["x"][d["keep"]] for d in tr]) * cols
            y = np.concatenate([d["y"][d["keep"]] for d in tr])
            fits = [fit_rescorer(x, y, hidden=hidden, epochs=epochs, weight_decay=float(RESCORER_FIT["weight_decay"]),
                                 pos_weight=float(RESCORER_FIT["pos_weight"]), seed=s) for s in seeds]
            for i, d in enumerate(data):
                if i % args.folds == f:
                    out[i] = np.mean([r.probabilities(d["x"] * cols) for r in fits], axis=0)
        return out

    hu = ("core_hu", "ring_hu", "ring_lung_fraction", "contrast_hu", "z_beyond_max_hu", "z_beyond_min_hu")
    track = ("logit_mean_score", "log_n_boxes", "log_diameter_mm", "log_z_extent_mm", "log_depth_ratio",
             "drift_ratio", "boxes_per_expected", "slice_mm")
    h, e = int(RESCORER_FIT["hidden"]), int(RESCORER_FIT["epochs"])
    settings = [
        ("the detector alone", lambda: [d["s"] for d in data]),
        (f"rescorer, {h} hidden units, {e} steps (RESCORER_FIT)", lambda: cv(h, e)),
        ("rescorer, 16 hidden units, 300 steps", lambda: cv(16, 300)),
        ("rescorer without the HU features", lambda: cv(h, e, drop=hu)),
        ("rescorer without the track features", lambda: cv(h, e, drop=track)),
        ("mean of 5 rescorers (seeds 0-4)", lambda: cv(h, e, seeds=(0, 1, 2, 3, 4))),
    ]
    n_nod = sum(len([les for les in d["truth"].lesions if not les.excluded]) for d in data)
    n_cand = sum(len(d["y"]) for d in data)
    print(f"\n{args.phantoms} phantoms, {n_nod} nodules, {n_cand} candidates, {int(sum(d['y'].sum() for d in data))} hits; "
          f"{args.folds}-fold CV by phantom\n")
    print("| candidates scored by | CPM | sensitivity at 1/8 … 8 FP/scan |\n|---|---|---|")
    for name, fn in settings:
        cpm, ops = froc(fn())
        print(f"| {name} | {cpm:.3f} | {' '.join(f'{v:.2f}' for v in ops)} |", flush=True)


if __name__ == "__main__":
    main()
