"""Detector variants: params, GFLOPs, ONNX Runtime CPU FP32 and torch CPU latency (batch 1).

    .venv/bin/python bench/bench_model.py                     # n, s, n+attn, s+attn at 3x512x512
    .venv/bin/python bench/bench_model.py --variants n --repeats 5 --runs 50

Latency: warm-up, then blocks of ``--runs`` timed runs (median and p90 in ms). Variants are
timed round-robin ``--repeats`` times and each reports its block with the smallest median: on a
shared machine the minimum of medians is the least disturbed figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lesionlens.engine.export import OnnxDetector, export_onnx
from lesionlens.models.detector import DetectorConfig, build_detector, count_flops, count_params


def parse_variant(name: str) -> DetectorConfig:
    """``"n"``, ``"s+attn"``, ``"n-silu"`` ... -> config (3 channels, 1 class)."""
    parts = name.replace("-", "+").split("+")
    return DetectorConfig(size=parts[0], attention="attn" in parts, act="silu" if "silu" in parts else "relu")


def time_block(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median and p90 (ms) of ``runs`` timed calls."""
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(t)), float(np.percentile(t, 90))


def interleaved(fns: dict[str, Callable[[], object]], runs: int, warmup: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Time every function ``repeats`` times, round-robin (so a burst of load from other
    processes hits all variants alike); keep per function the block with the smallest median."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            r = time_block(fn, runs)
            if name not in best or r[0] < best[name][0]:
                best[name] = r
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["n", "s", "n+attn", "s+attn"])
    ap.add_argument("--imgsz", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true", help="skip the torch CPU timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info: dict[str, tuple[float, float]] = {}
    ort_fns: dict[str, Callable[[], object]] = {}
    torch_fns: dict[str, Callable[[], object]] = {}
    x = np.random.default_rng(0).standard_normal((1, 3, args.imgsz, args.imgsz)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            cfg = parse_variant(name)
            model = build_detector(cfg).eval()
            shape = (1, cfg.in_channels, args.imgsz, args.imgsz)
            info[name] = (count_params(model) / 1e6, count_flops(model, shape) / 1e9)
            path = export_onnx(model, Path(tmp) / f"{name}.onnx", imgsz=args.imgsz)
            det = OnnxDetector(path, intra_op_threads=args.threads, providers=["CPUExecutionProvider"])
            ort_fns[name] = lambda det=det: det(x)
            fused, xt = model.fuse(), torch.from_numpy(x)
            torch_fns[name] = lambda fused=fused, xt=xt: fused(xt)
        ort_t = interleaved(ort_fns, args.runs, args.warmup, args.repeats)
        nan = (float("nan"), float("nan"))
        torch_t = {}
        if not args.no_torch:
            with torch.inference_mode():
                torch_t = interleaved(torch_fns, max(10, args.runs // 3), 2, args.repeats)
    rows = [(n, *info[n], *ort_t[n], *torch_t.get(n, nan)) for n in args.variants]
    print(f"\ninput 1x3x{args.imgsz}x{args.imgsz}, {args.threads} threads, min over {args.repeats} repeats of the median")
    print("| variant | params (M) | GFLOPs | ORT CPU FP32 median / p90 (ms) | torch CPU median / p90 (ms) |")
    print("|---|---:|---:|---:|---:|")
    for name, p, g, om, op, tm, tp in rows:
        print(f"| {name} | {p:.2f} | {g:.2f} | {om:.1f} / {op:.1f} | {tm:.1f} / {tp:.1f} |")


if __name__ == "__main__":
    main()
