"""Benchmark of a trained detector package: latency FP32 vs INT8 and held-out CPM of both.

    .venv/bin/python bench/bench_detector.py --model default --calib DATASET.yaml --studies TEST_DIR [--limit N]

Prints, from one run on one machine:
* ONNX Runtime CPU latency per 512×512 2.5D slice (batch 1, 2 intra-op threads): median / p90 of
  30 runs after warm-up, the best of 4 rounds that alternate between the FP32 graph and a static
  INT8 (QDQ) graph calibrated on ``--calib``;
* params and GFLOPs of the model;
* CPM (LUNA16 rules) of FP32 and INT8 on the held-out studies (``--studies``: DICOM series with
  truth.json), and the INT8 loss.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _latency(runs: dict, x: np.ndarray, n: int = 30, rounds: int = 4) -> dict[str, tuple[float, float]]:  # type: ignore[type-arg]
    """Median and p90 (ms) per graph: ``rounds`` interleaved rounds of ``n`` timed runs after a
    warm-up; the round with the lowest median is kept (machine noise only ever adds time)."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            for _ in range(5):
                run(x)
            ts = []
            for _ in range(n):
                t0 = time.perf_counter()
                run(x)
                ts.append((time.perf_counter() - t0) * 1000)
            ts.sort()
            med, p90 = statistics.median(ts), ts[int(0.9 * (len(ts) - 1))]
            if name not in best or med < best[name][0]:
                best[name] = (med, p90)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--calib", required=True, help="dataset.yaml for INT8 calibration")
    ap.add_argument("--studies", default=None, help="held-out CT studies with truth.json")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-latency", action="store_true", help="skip the latency runs (CPM only)")
    a = ap.parse_args()

    from lesionlens.engine.export import OnnxDetector
    from lesionlens.engine.predict import Predictor, froc_config, resolve_model
    from lesionlens.engine.quantize import quantize_int8
    from lesionlens.engine.trainer import load_package_model
    from lesionlens.models.detector import count_flops, count_params

    pkg = resolve_model(a.model)
    net, meta = load_package_model(pkg)
    print(f"model {meta.name}: {count_params(net) / 1e6:.3f} M params, "
          f"{count_flops(net, (1, meta.input.channels, 512, 512)) / 1e9:.2f} GFLOPs at 512x512")
    tmp = Path(tempfile.mkdtemp())
    int8_path = quantize_int8(pkg / "model.onnx", a.calib, tmp / "model-int8.onnx", spec=meta.input)
    x = np.random.default_rng(0).random((1, meta.input.channels, 512, 512), dtype=np.float32)
    fp32 = OnnxDetector(pkg / "model.onnx", intra_op_threads=a.threads, providers=["CPUExecutionProvider"])
    int8 = OnnxDetector(int8_path, intra_op_threads=a.threads, providers=["CPUExecutionProvider"])
    if not a.no_latency:
        lat = _latency({"fp32": fp32, "int8": int8}, x)
        (m32, p32), (m8, p8) = lat["fp32"], lat["int8"]
        print(f"ONNX Runtime CPU, batch 1, 512x512, {a.threads} threads:")
        print(f"  FP32  median {m32:6.2f} ms  p90 {p32:6.2f} ms")
        print(f"  INT8  median {m8:6.2f} ms  p90 {p8:6.2f} ms   speed-up {m32 / m8:.2f}x")
    if a.studies:
        from lesionlens.engine.evaluate import evaluate_ct

        p = Predictor(pkg, backend="onnx", threads=a.threads, config=froc_config(pkg))  # as `evaluate` does
        r32 = evaluate_ct(p, a.studies, tmp / "eval32", n_bootstrap=0, limit=a.limit).metrics
        p._run = int8  # same package, INT8 graph
        r8 = evaluate_ct(p, a.studies, tmp / "eval8", n_bootstrap=0, limit=a.limit).metrics
        print(f"held-out CPM over {r32['n_scans']} scans: FP32 {r32['cpm']:.4f}  INT8 {r8['cpm']:.4f}  "
              f"loss {r32['cpm'] - r8['cpm']:+.4f}")
        print("  FP32 sensitivities:", r32["froc"]["sensitivity_at_fps"])
        print("  INT8 sensitivities:", r8["froc"]["sensitivity_at_fps"])


if __name__ == "__main__":
    main()
