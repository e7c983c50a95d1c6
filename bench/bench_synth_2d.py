"""Generation time of one full-size 2D phantom (median of 3 seeds).

Run: ``.venv/bin/python bench/bench_synth_2d.py`` (``--repeats N`` to change the count).
Prints one line per phantom kind: size, median and min seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

from lesionlens.synth.mammo import MammoConfig, generate_mammogram
from lesionlens.synth.xray import ChestXrayConfig, generate_chest_xray


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cases = [
        ("mammogram MLO 4000x3000 (2 masses, 2 clusters)",
         lambda s: generate_mammogram(s, MammoConfig(masses=2, calcification_clusters=2))),
        ("chest x-ray 2500x2500 (2 nodules)", lambda s: generate_chest_xray(s, ChestXrayConfig(nodules=2))),
    ]
    for name, fn in cases:
        times = []
        for seed in range(args.repeats):
            t0 = time.perf_counter()
            fn(seed)
            times.append(time.perf_counter() - t0)
        print(f"{name}: median {statistics.median(times):.2f} s, min {min(times):.2f} s over {args.repeats}")


if __name__ == "__main__":
    main()
