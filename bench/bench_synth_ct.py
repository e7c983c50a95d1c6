"""Time the synthetic chest CT: generation and writing of a 512×512×150 study (single thread).

Run: ``.venv/bin/python bench/bench_synth_ct.py [--seeds 3] [--png /tmp/synth_ct.png]``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import statistics
import tempfile
import time

import numpy as np

from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study


def save_png(ph, path: str) -> None:
    """Lung-window slices (through nodules when there are any) side by side as one PNG."""
    from PIL import Image

    ks = sorted({int(round(ph.geometry.lps_to_index(n.center_mm)[0])) for n in ph.nodules})[:3]
    ks = ks or [ph.hu.shape[0] // 2]
    ks += [ph.hu.shape[0] // 4, 3 * ph.hu.shape[0] // 4][: max(0, 4 - len(ks))]
    tiles = [(np.clip((ph.hu[k].astype(np.float32) + 1350.0) / 1500.0, 0, 1) * 255).astype(np.uint8) for k in ks]
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--png", default="/tmp/synth_ct.png")
    args = ap.parse_args()
    cfg = CTPhantomConfig(n_slices=150)
    gen, wr = [], []
    for seed in range(args.seeds):
        t = time.perf_counter()
        ph = generate_ct(seed, cfg)
        gen.append(time.perf_counter() - t)
        parts = ", ".join(f"{k} {v:.2f}s" for k, v in ph.timings_s.items() if k != "total")
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            write_ct_study(ph, d, with_localizer=True, with_non_image=True)
            wr.append(time.perf_counter() - t)
        print(f"seed {seed}: shape {ph.hu.shape} spacing {np.round(ph.geometry.spacing_mm, 3).tolist()} "
              f"nodules {len(ph.nodules)} vessels {len(ph.vessels)} | generate {gen[-1]:.2f}s ({parts}) "
              f"| write {wr[-1]:.2f}s")
        if seed == 0 or (ph.nodules and not os.path.exists(args.png)):
            save_png(ph, args.png)
    print(f"median generate {statistics.median(gen):.2f}s, median write {statistics.median(wr):.2f}s "
          f"per 512x512x150 study ({args.seeds} seeds, 1 thread); preview {args.png}")


if __name__ == "__main__":
    main()
