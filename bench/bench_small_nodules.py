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
import math
import tempfile

import numpy as np

SIZES = (("3-4 mm", 0.0, 4.0), ("4-6 mm", 4.0, 6.0), ("> 6 mm", 6.0, math.inf))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", required=True, help="held-out CT studies with truth.json")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    from lesionlens.engine.evaluate import evaluate_ct
    from lesionlens.engine.predict import Predictor, froc_config
    from lesionlens.metrics.froc import (
        froc_recall_by_scan_group,
        froc_recall_by_size,
        threshold_at_fp_rate,
    )

    pred = Predictor(a.model, backend="onnx", threads=a.threads, config=froc_config(a.model))
    ev = evaluate_ct(pred, a.data, tempfile.mkdtemp(), n_bootstrap=0)
    res = ev.froc
    assert res is not None
    spacing = [s["slice_spacing_mm"] for s in ev.metrics["scans"]]
    print(f"model {pred.identity.get('name')} {pred.identity.get('version')}: {res.n_scans} scans, "
          f"{res.n_nodules} nodules, CPM {res.cpm:.3f}")
    for fp in (1.0, 4.0):
        print(f"at {fp:g} FP/scan (confidence >= {threshold_at_fp_rate(res, fp):.3f}):")
        rows = [(b.name, b) for b in froc_recall_by_size(res, fp, SIZES)]
        for sp, buckets in sorted(froc_recall_by_scan_group(res, fp, spacing).items()):
            rows += [(f"{b.name} on {sp:g} mm slices", b) for b in buckets]
        for name, b in rows:
            if b.n_total:
                print(f"  {name:28s} {b.n_detected:4d}/{b.n_total:<4d} {b.recall:.2f}")
    missed = sorted((float(d), spacing[si]) for best, d, si in
                    zip(res.nodule_best_score, res.nodule_diameter_mm, res.nodule_scan_index, strict=True)
                    if not np.isfinite(best))
    print(f"no candidate at all: {len(missed)} nodules (diameter mm, slice spacing mm): {missed}")


if __name__ == "__main__":
    main()
