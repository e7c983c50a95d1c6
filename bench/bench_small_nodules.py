"""Held-out recall of small nodules by size and by slice thickness (where the ≤ 6 mm target is lost).

    .venv/bin/python bench/bench_small_nodules.py --model default --data HELD_OUT_DIR [--threads 2]

Runs the model on every CT case under ``--data`` (truth.json folders) as ``lesionlens evaluate``
does (FROC configuration: every candidate down the low-confidence tail), pools the FROC over all
scans (LUNA16 hit rule), takes the thresholds at 1 and 4 false positives per scan and prints, for
each: nodules found of 3–4 mm, 4–6 mm and > 6 mm, and ≤ 6 mm / > 6 mm per slice spacing; then the
nodules that no candidate hits at all, with their diameter and slice spacing.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np


def _size(d: float) -> str:
    return "3-4 mm" if d <= 4.0 else "4-6 mm" if d <= 6.0 else "> 6 mm"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", required=True, help="held-out CT studies with truth.json")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    from lesionlens.data.trainset import discover_ct_cases
    from lesionlens.engine.predict import Predictor, froc_config
    from lesionlens.metrics.froc import FROCScan, compute_froc, threshold_at_fp_rate

    pred = Predictor(a.model, backend="onnx", threads=a.threads, config=froc_config(a.model))
    scans, spacing = [], []
    for ref in discover_ct_cases(a.data):
        case = ref.load()
        cands = pred.predict_volume(case.volume).candidates
        pts = np.array([c.center_mm for c in cands], np.float64).reshape(-1, 3)
        scores = np.array([c.confidence for c in cands], np.float64)
        scans.append(FROCScan.from_truth(case.truth, pts, scores))
        spacing.append(round(float(case.volume.spacing_mm[0]), 2))
    res = compute_froc(scans, n_bootstrap=0)
    print(f"model {pred.identity.get('name')} {pred.identity.get('version')}: {res.n_scans} scans, "
          f"{res.n_nodules} nodules, CPM {res.cpm:.3f}")
    nodules = list(zip(res.nodule_best_score, res.nodule_diameter_mm, res.nodule_scan_index, strict=True))
    for fp in (1.0, 4.0):
        thr = threshold_at_fp_rate(res, fp)
        by: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for best, d, si in nodules:
            found = int(np.isfinite(best) and best >= thr)
            for key in (_size(d), f"{'<= 6 mm' if d <= 6.0 else '> 6 mm'} on {spacing[si]} mm slices"):
                by[key][0] += found
                by[key][1] += 1
        print(f"at {fp:g} FP/scan (confidence >= {thr:.3f}):")
        for key in sorted(by):
            n, t = by[key]
            print(f"  {key:28s} {n:4d}/{t:<4d} {n / t:.2f}")
    missed = sorted((float(d), spacing[si]) for best, d, si in nodules if not np.isfinite(best))
    print(f"no candidate at all: {len(missed)} nodules (diameter mm, slice spacing mm): {missed}")


if __name__ == "__main__":
    main()
