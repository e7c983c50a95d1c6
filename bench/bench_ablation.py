"""Accuracy column of the detector ablation (docs/models.md): train each variant from scratch with
one schedule on one data set, then FROC/CPM (LUNA16 rules, detector alone) on validation phantoms.

    .venv/bin/python bench/bench_ablation.py --data DATASET.yaml --out runs/ablation \\
        [--variants n s n+attn] [--epochs 24] [--steps 60] [--seed0 500020] [--phantoms 20] \\
        [--cache bench-cache/phantoms] [--threads 1]

DATASET.yaml is a CT training set (e.g. the default recipe's stage-4 ``dataset/``); the phantoms
come from a seed range used neither for training nor for testing. Latency and FLOPs of the same
variants: ``bench/bench_model.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

VARIANTS = {"n": {"model": "n"}, "s": {"model": "s"}, "n+attn": {"model": "n", "attention": True},
            "s+attn": {"model": "s", "attention": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--variants", nargs="+", default=["n", "s", "n+attn"], choices=sorted(VARIANTS))
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed0", type=int, default=500_020)
    ap.add_argument("--phantoms", type=int, default=20)
    ap.add_argument("--cache", type=Path, default=Path("bench-cache/phantoms"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from lesionlens.engine.config import TrainConfig
    from lesionlens.engine.export import export_onnx
    from lesionlens.engine.predict import PredictConfig, Predictor
    from lesionlens.engine.recipes import DefaultRecipe, _cache_phantom, _load_cached
    from lesionlens.engine.trainer import Trainer, load_package_model
    from lesionlens.metrics.froc import FROCScan, compute_froc

    torch.set_num_threads(args.threads)
    spacings = DefaultRecipe().test_slice_spacings_mm
    rows = []
    for name in args.variants:
        out = args.out / name.replace("+", "_")
        cfg = TrainConfig(data=args.data, epochs=args.epochs, batch=16, imgsz=128, steps_per_epoch=args.steps,
                          lr=3e-3, seed=0, device="cpu", out=str(out / "run"), patience=args.epochs,
                          val_every=args.epochs, threads=args.threads, small_boost=2.0, **VARIANTS[name])
        t0 = time.perf_counter()
        res = Trainer(cfg).fit()
        train_s = time.perf_counter() - t0
        net, _ = load_package_model(res.best)
        export_onnx(net, res.best / "model.onnx", imgsz=512, dynamic=True)
        pred = Predictor(res.best, threads=args.threads, config=PredictConfig(conf=0.01, max_det=300, rescore=False))
        scans = []
        for i in range(args.phantoms):
            case = _load_cached(_cache_phantom(args.seed0 + i, spacings, args.cache))
            c = pred.predict_volume(case.volume).candidates
            scans.append(FROCScan.from_truth(case.truth, np.array([x.center_mm for x in c]).reshape(-1, 3),
                                             np.array([x.confidence for x in c])))
        fr = compute_froc(scans, n_bootstrap=500)
        row = {"variant": name, "cpm": fr.cpm, "cpm_ci": list(fr.cpm_ci or ()), "froc": fr.operating_points,
               "train_s": train_s, "images_per_s": res.images_per_s}
        (out / "ablation.json").write_text(json.dumps(row, indent=1, default=float))
        rows.append(row)
        print(json.dumps(row, default=float), flush=True)
    print("\n| variant | CPM (95 % CI) | train images/s |\n|---|---|---|")
    for r in rows:
        lo, hi = (r["cpm_ci"] + [float("nan")] * 2)[:2]
        print(f"| {r['variant']} | {r['cpm']:.3f} ({lo:.2f}–{hi:.2f}) | {r['images_per_s']:.1f} |")


if __name__ == "__main__":
    main()
