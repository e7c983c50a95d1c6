"""Test data for the output writers: a phantom CT study on disk and a ``StudyResult`` whose
lesions are the phantom's truth nodules (masks from the phantom's label map, sizes from truth).

Writers (findings JSON, report, SR/SEG/GSPS) are tested on this without the detector, so a
failure points at the writer. ``phantom_study`` is deterministic by seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionlens.dicom.study import read_study
from lesionlens.dicom.write import uid_from_seed
from lesionlens.pipeline.types import (
    AxisLine,
    LesionMask,
    Lesion,
    Location,
    Measurements,
    SeriesResult,
    StudyResult,
)
from lesionlens.synth.ct import CTPhantom, CTPhantomConfig, generate_ct, write_ct_study

SMALL_CT = dict(matrix=(160, 160), n_slices=48, pixel_spacing_mm=(2.0, 2.2), slice_spacings_mm=(2.5,),
                n_nodules=(3, 4), p_no_nodules=0.0, nodule_diameter_mm=(6.0, 20.0), small_nodule_fraction=0.0)

_TYPES = {"solid": "solid", "part_solid": "part-solid", "ground_glass": "ground-glass"}


@dataclass
class PhantomStudy:
    directory: Path
    phantom: CTPhantom
    result: StudyResult


def _lesion(ph: CTPhantom, vol_shape: tuple[int, int, int], spacing: np.ndarray, i: int, series_uid: str) -> Lesion | None:
    n = ph.nodules[i]
    full = ph.labels == n.id
    if not full.any():
        return None
    ks, rs, cs = np.nonzero(full)
    k0, r0, c0 = int(ks.min()), int(rs.min()), int(cs.min())
    sub = full[k0 : ks.max() + 1, r0 : rs.max() + 1, c0 : cs.max() + 1]
    areas = sub.sum(axis=(1, 2))
    kk = int(np.argmax(areas))
    rr, cc = np.nonzero(sub[kk])
    k = k0 + kk
    x1, x2 = int(c0 + cc.min()), int(c0 + cc.max() + 1)
    y1, y2 = int(r0 + rr.min()), int(r0 + rr.max() + 1)
    w_mm, h_mm = float((x2 - x1) * spacing[2]), float((y2 - y1) * spacing[1])
    long_mm, short_mm = max(w_mm, h_mm), min(w_mm, h_mm)
    yc, xc = float(y1 + y2) / 2, float(x1 + x2) / 2
    if w_mm >= h_mm:
        la = AxisLine(k, (float(x1), yc), (float(x2), yc), long_mm)
        sa = AxisLine(k, (xc, float(y1)), (xc, float(y2)), short_mm)
    else:
        la = AxisLine(k, (xc, float(y1)), (xc, float(y2)), long_mm)
        sa = AxisLine(k, (float(x1), yc), (float(x2), yc), short_mm)
    vol_mm3 = float(full.sum() * np.prod(spacing))
    hu = ph.hu[full].astype(np.float64)
    ntype = _TYPES[n.type]
    meas = Measurements(
        long_axis=la, short_axis=sa, mean_diameter_mm=(long_mm + short_mm) / 2,
        effective_diameter_mm=float((6 * vol_mm3 / np.pi) ** (1 / 3)), volume_mm3=vol_mm3,
        mean_hu=float(hu.mean()), max_hu=float(hu.max()), nodule_type=ntype,  # type: ignore[arg-type]
        solid_component_mm={"solid": (long_mm + short_mm) / 2, "ground-glass": 0.0}.get(
            ntype, n.core_fraction * (long_mm + short_mm) / 2),
        mask=LesionMask(sub.copy(), (k0, r0, c0)),
    )
    return Lesion(
        tracking_id=f"L{i + 1}", tracking_uid=str(uid_from_seed(series_uid, "lesion", i)), label="nodule",
        confidence=round(0.95 - 0.1 * i, 3), key_k=k, bbox_px=np.array([x1, y1, x2, y2], np.float32),
        slices=(k0, int(ks.max())), center_mm=np.asarray(n.center_mm, np.float64), diameter_mm=float(n.diameter_mm),
        measurements=meas,
        location=Location(side="left" if n.center_mm[0] > 0 else "right", zone="middle", depth="peripheral",
                          slice_number=k + 1, sop_instance_uid=""),
    )


def phantom_study(out_dir: Path, seed: int = 5150, **overrides: object) -> PhantomStudy:
    """Write a small phantom CT series under ``out_dir/study`` and build its truth StudyResult."""
    cfg = CTPhantomConfig(**{**SMALL_CT, **overrides})  # type: ignore[arg-type]
    ph = generate_ct(seed, cfg)
    d = write_ct_study(ph, out_dir / "study")
    res = read_study(d, workers=1)
    (vol,) = res.volumes
    spacing = vol.spacing_mm
    lesions = []
    for i in range(len(ph.nodules)):
        les = _lesion(ph, vol.pixels.shape, spacing, i, vol.series_instance_uid)
        if les is None:
            continue
        assert les.location is not None
        les.location.sop_instance_uid = vol.sop_instance_uids[les.key_k]
        lesions.append(les)
    sr = SeriesResult(volume=vol, lesions=lesions, timings={"inference": 0.1})
    result = StudyResult(
        study_instance_uid=vol.study_instance_uid,
        patient={"PatientName": ph.patient.get("name", "PHANTOM^CT"), "PatientID": ph.patient.get("id", "CT")},
        study={"StudyDate": "20260101", "StudyDescription": "Synthetic chest CT"},
        series=[sr],
        model={"name": "default", "version": "test", "sha256": "0" * 64},
        timings={"read": 0.1, "inference": 0.1},
    )
    return PhantomStudy(d, ph, result)
