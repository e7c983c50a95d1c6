"""Phantom CT volumes and truth-built lesions for the measurement, lung and FPR tests.

``truth_lesions`` builds, for each truth nodule of a phantom, the :class:`Lesion` a perfect
detector would give: the centre from truth, the box of the largest labelled cross-section, the
slices the label spans. Tests then measure from there and compare with the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lesionlens.dicom.types import Volume
from lesionlens.pipeline.types import Lesion
from lesionlens.synth.ct import CTPhantom, CTPhantomConfig, generate_ct
from lesionlens.synth.nodules import Nodule

TYPES = {"solid": "solid", "part_solid": "part-solid", "ground_glass": "ground-glass"}


def small_config(**overrides: object) -> CTPhantomConfig:
    """A 160×160 × 40-slice phantom (≈2 mm pixels, 2.5 mm slices) with 8–24 mm nodules."""
    base: dict[str, object] = dict(matrix=(160, 160), n_slices=40, pixel_spacing_mm=(1.5, 2.4),
                                   slice_spacings_mm=(2.5,), n_nodules=(3, 5), p_no_nodules=0.0,
                                   nodule_diameter_mm=(8.0, 24.0), small_nodule_fraction=0.0)
    base.update(overrides)
    return CTPhantomConfig(**base)  # type: ignore[arg-type]


def volume_of(ph: CTPhantom) -> Volume:
    k = ph.hu.shape[0]
    return Volume(pixels=ph.hu.astype(np.float32), affine=ph.affine.copy(), modality="CT",
                  sop_instance_uids=[f"1.2.3.{i + 1}" for i in range(k)], frame_numbers=[1] * k,
                  is_volumetric=True, has_patient_geometry=True)


def truth_lesion(ph: CTPhantom, n: Nodule) -> Lesion | None:
    """The lesion a perfect detector would report for nodule ``n`` (None if it is not on the grid)."""
    full = ph.labels == n.id
    if not full.any():
        return None
    ks = np.flatnonzero(full.any(axis=(1, 2)))
    areas = full.sum(axis=(1, 2))
    k = int(np.argmax(areas))
    rr, cc = np.nonzero(full[k])
    box = np.array([cc.min(), rr.min(), cc.max() + 1, rr.max() + 1], np.float32)
    return Lesion(tracking_id=f"T{n.id}", tracking_uid="", label="nodule", confidence=1.0, key_k=k,
                  bbox_px=box, slices=(int(ks[0]), int(ks[-1])), center_mm=np.asarray(n.center_mm, np.float64),
                  diameter_mm=float(n.diameter_mm), extra={"truth_id": n.id})


@dataclass
class Case:
    phantom: CTPhantom
    volume: Volume
    pairs: list[tuple[Nodule, Lesion]]


def make_case(seed: int, config: CTPhantomConfig) -> Case:
    ph = generate_ct(seed, config)
    pairs = [(n, les) for n in ph.nodules if (les := truth_lesion(ph, n)) is not None]
    return Case(ph, volume_of(ph), pairs)


def crop_case(case: Case, k_range: tuple[int, int], r_range: tuple[int, int], c_range: tuple[int, int]) -> Volume:
    """A sub-volume (the affine shifted so LPS positions stay true)."""
    (k0, k1), (r0, r1), (c0, c1) = k_range, r_range, c_range
    aff = case.volume.affine.copy()
    aff[:3, 3] = case.volume.index_to_lps(np.array([k0, r0, c0], float))
    px = case.volume.pixels[k0:k1, r0:r1, c0:c1].copy()
    return Volume(pixels=px, affine=aff, modality="CT", sop_instance_uids=case.volume.sop_instance_uids[k0:k1],
                  frame_numbers=[1] * (k1 - k0), is_volumetric=True, has_patient_geometry=True)
