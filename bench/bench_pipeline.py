"""End-to-end ``detect``: a 300-slice 512×512 CT on disk → every output, by stage, with peak memory.

    .venv/bin/python bench/bench_pipeline.py                    # 300 slices, default model, all outputs
    .venv/bin/python bench/bench_pipeline.py --slices 120 --repeats 1

The study is a synthetic chest CT (seed ``--seed``, 5 nodules) written once under ``--cache``.
Each repeat runs in a fresh process (as ``lesionlens detect`` would: model load included) and
prints wall time per stage; the repeat with the smallest total is reported (least disturbed).
Peak memory is the largest resident set of the process and of its read workers.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def ensure_study(cache: Path, slices: int, seed: int) -> Path:
    study = cache / f"ct{slices}-seed{seed}"
    if not (study / "truth.json").is_file():
        from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

        cfg = CTPhantomConfig(n_slices=slices, slice_spacings_mm=(1.0,), n_nodules=(5, 5), p_no_nodules=0.0,
                              nodule_diameter_mm=(4.0, 20.0), small_nodule_fraction=0.5)
        write_ct_study(generate_ct(seed, cfg), study)
    return study


def run_once(study: Path, out: Path, model: str, threads: int | None) -> dict[str, object]:
    """One end-to-end run in this process; returns timings and peak memory."""
    t0 = time.perf_counter()
    from lesionlens.pipeline.detect import DetectConfig, Detector
    from lesionlens.reports.bundle import write_outputs

    det = Detector(model, threads=threads, config=DetectConfig())
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    results = det.detect(study)
    t_detect = time.perf_counter() - t1
    t2 = time.perf_counter()
    doc = write_outputs(results, out)
    t_out = time.perf_counter() - t2
    total = time.perf_counter() - t0
    (res,) = results
    stages: dict[str, float] = {"model load": t_load, "read": res.timings.get("read", 0.0)}
    for s in res.series:
        for k, v in s.timings.items():
            stages[k] = stages.get(k, 0.0) + v
    stages["clinical"] = res.timings.get("clinical", 0.0)
    for k, v in res.timings.items():
        if k.startswith("output_"):
            stages[k] = v
    stages["findings.json + other"] = max(0.0, t_out - sum(v for k, v in res.timings.items() if k.startswith("output_")))
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"total_s": total, "detect_s": t_detect, "outputs_s": t_out, "stages": stages,
            "peak_rss_mb": self_kb / 1024, "peak_child_rss_mb": child_kb / 1024,
            "findings": sum(len(se["findings"]) for st in doc["studies"] for se in st["series"]),
            "slices": int(s.volume.pixels.shape[0]), "shape": list(s.volume.pixels.shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--seed", type=int, default=31337)
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path("bench-cache"))
    ap.add_argument("--once", type=Path, default=None, help=argparse.SUPPRESS)  # child mode: output folder
    args = ap.parse_args()
    study = ensure_study(args.cache, args.slices, args.seed)
    if args.once is not None:
        print(json.dumps(run_once(study, args.once, args.model, args.threads)))
        return
    runs = []
    for i in range(args.repeats):
        cmd = [sys.executable, __file__, "--slices", str(args.slices), "--seed", str(args.seed), "--model", args.model,
               "--cache", str(args.cache), "--once", str(args.cache / f"out-{i}")]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"run {i} failed:\n{out.stderr[-3000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["total_s"])
    print(f"study: {best['shape']} CT on disk ({study}); {best['findings']} findings; model {args.model}")
    print(f"end-to-end totals over {len(runs)} runs (s): " + ", ".join(f"{r['total_s']:.2f}" for r in runs))
    print(f"best run: total {best['total_s']:.2f} s (detect {best['detect_s']:.2f} s, outputs {best['outputs_s']:.2f} s)")
    print(f"{'stage':28s} {'seconds':>8s}")
    for k, v in best["stages"].items():
        print(f"{k:28s} {v:8.3f}")
    print(f"peak memory: main process {best['peak_rss_mb']:.0f} MB, largest read worker {best['peak_child_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
