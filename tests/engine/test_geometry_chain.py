"""The coordinate chain from a written DICOM study to 3D candidates scored against truth.

A perfect detector (boxes taken from the phantom's label map) run through the real ingest path
and the 3D merge must hit every nodule within its radius with no false positive: any flipped
axis, half-pixel slip or slice-order error in the chain breaks this.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesionlens.dicom.study import read_study
from lesionlens.metrics import FROCScan, compute_froc, match_scan
from lesionlens.pipeline.aggregate import SliceDetections, aggregate
from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study
from lesionlens.synth.truth import load_truth


def test_perfect_boxes_through_ingest_and_merge_hit_every_nodule(tmp_path: Path) -> None:
    cfg = CTPhantomConfig(matrix=(160, 160), n_slices=48, pixel_spacing_mm=(2.0, 2.2), slice_spacings_mm=(2.5,),
                          max_vessel_segments=1500, n_nodules=(3, 4), p_no_nodules=0.0,
                          nodule_diameter_mm=(10.0, 20.0), small_nodule_fraction=0.0)
    ph = generate_ct(21, cfg)
    write_ct_study(ph, tmp_path / "s", random_names=True, scramble_instance_numbers=True)
    res = read_study(tmp_path / "s")
    (vol,) = res.volumes
    # the series read back is the phantom, slice for slice
    assert np.array_equal(vol.pixels.astype(np.int16), ph.hu)
    dets = []
    for k in range(ph.labels.shape[0]):
        boxes, labels = [], []
        for nid in np.unique(ph.labels[k]):
            if nid == 0:
                continue
            rr, cc = np.nonzero(ph.labels[k] == nid)
            boxes.append([cc.min(), rr.min(), cc.max() + 1, rr.max() + 1])
            labels.append(0)
        if boxes:
            dets.append(SliceDetections(k, np.array(boxes, np.float32), np.full(len(boxes), 0.9, np.float32),
                                        np.array(labels)))
    cands = aggregate(dets, vol.affine)
    truth = load_truth(tmp_path / "s" / "truth.json")
    assert len(cands) == len(truth.lesions) >= 3
    scan = FROCScan.from_truth(truth, np.array([c.center_mm for c in cands]), np.array([c.confidence for c in cands]))
    m = match_scan(scan)
    assert m.candidate_outcome.count("tp") == len(truth.lesions)
    # centres land well inside the nodules, not just on their rim
    radii = np.array([les.diameter_mm / 2 for les in truth.lesions])
    assert np.all(m.nodule_hit_distance_mm < 0.5 * radii)
    assert compute_froc([scan], n_bootstrap=0).cpm == 1.0
