"""Series selection: which series of a study get loaded and analysed, and why.

In the spirit of MONAI Deploy's series selector, but with one typed rule set
(:class:`SelectionRules`). Defaults: per study, the best volumetric axial series of a
cross-sectional modality (CT first); when a study has none, every primary image series of a
2D modality (CR, DX, MG, US, SC, ...). Localizers/scouts, non-image objects (SR, KO, PR, RT...)
and DERIVED/SECONDARY series are skipped unless the rules allow them. Every
:class:`~lesionlens.dicom.types.SeriesRecord` gets ``selected`` and a ``reason``.
"""

from __future__ import annotations

import re

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lesionlens.dicom.types import Catalog, InstanceKind, SeriesRecord

VOLUMETRIC_MODALITIES = ("CT", "MR", "PT", "NM")
TWO_D_MODALITIES = ("CR", "DX", "MG", "US", "SC", "OT", "XA", "RF", "IO", "PX", "ES", "XC", "GM", "SM")
_LOCALIZER_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SURVEY", "SCANOGRAM")


class SelectionRules(BaseModel):
    """What the selector picks. Immutable; build a new one with ``rules.model_copy(update=...)``.

    modalities: acceptable modalities in order of preference (earlier wins).
    min_slices: fewest image frames for a series to count as volumetric.
    require_axial: volumetric series must be axial (slice normal within ``max_axial_angle_deg``
        of the patient's S axis).
    allow_derived / allow_secondary / allow_localizer: accept such ImageType values.
    include_description / exclude_description: regexes on SeriesDescription (case-insensitive).
    max_volumetric_per_study: how many volumetric series to pick per study (best first);
        ``None`` = all eligible.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    modalities: tuple[str, ...] = VOLUMETRIC_MODALITIES + TWO_D_MODALITIES
    min_slices: int = Field(default=10, ge=1)
    require_axial: bool = True
    max_axial_angle_deg: float = Field(default=30.0, ge=0, le=90)
    allow_derived: bool = False
    allow_secondary: bool = False
    allow_localizer: bool = False
    include_description: str | None = None
    exclude_description: str | None = None
    max_volumetric_per_study: int | None = Field(default=1, ge=1)


def _image_frames(series: SeriesRecord) -> int:
    return sum(max(i.frames, 1) for i in series.instances if i.kind is InstanceKind.IMAGE)


def _is_axial(series: SeriesRecord, max_angle_deg: float) -> bool | None:
    for inst in series.instances:
        if inst.image_orientation_patient is not None:
            iop = np.asarray(inst.image_orientation_patient, dtype=np.float64)
            n = np.cross(iop[:3], iop[3:])
            norm = np.linalg.norm(n)
            if norm == 0:
                return None
            return bool(abs(n[2]) / norm >= np.cos(np.radians(max_angle_deg)))
    return None


def _has_geometry(series: SeriesRecord) -> bool:
    return any(
        i.image_position_patient is not None and i.image_orientation_patient is not None for i in series.instances
    )


def _exclusion(series: SeriesRecord, rules: SelectionRules) -> str | None:
    """Why a series can never be selected under ``rules`` (None when it is eligible)."""
    images = [i for i in series.instances if i.kind is InstanceKind.IMAGE]
    if not images:
        kinds = sorted({i.sop_class_uid for i in series.instances})
        return f"non-image objects only (SOP class {', '.join(kinds) or 'unknown'})"
    modality = series.modality.upper()
    if modality not in rules.modalities:
        return f"modality {modality or '(none)'} is not in the selection rules"
    image_type = {t for i in images for t in i.image_type}
    if not rules.allow_localizer and image_type & set(_LOCALIZER_WORDS):
        return f"localizer/scout image ({'/'.join(sorted(image_type & set(_LOCALIZER_WORDS)))})"
    if not rules.allow_localizer and re.search(r"\b(localizer|scout|topogram|survey)\b", series.description, re.I):
        return "localizer/scout image (series description)"
    if not rules.allow_derived and "DERIVED" in {i.image_type[0] for i in images if i.image_type}:
        return "DERIVED image series (allow_derived to include)"
    if not rules.allow_secondary and "SECONDARY" in {i.image_type[1] for i in images if len(i.image_type) > 1}:
        return "SECONDARY image series (allow_secondary to include)"
    if rules.include_description and not re.search(rules.include_description, series.description, re.I):
        return f"description does not match {rules.include_description!r}"
    if rules.exclude_description and re.search(rules.exclude_description, series.description, re.I):
        return f"description matches exclusion {rules.exclude_description!r}"
    usable = [i for i in images if not any(p.severity == "error" for p in i.problems)]
    if not usable:
        return "no readable image instances"
    return None


def _volumetric_verdict(series: SeriesRecord, rules: SelectionRules) -> tuple[bool, str]:
    frames = _image_frames(series)
    if series.modality not in VOLUMETRIC_MODALITIES:
        return False, ""
    if frames < rules.min_slices:
        return False, f"only {frames} image frame(s), fewer than {rules.min_slices} for a volume"
    if not _has_geometry(series):
        return False, "no patient geometry (ImagePositionPatient/ImageOrientationPatient)"
    if rules.require_axial and _is_axial(series, rules.max_axial_angle_deg) is False:
        return False, "not axial"
    return True, f"volumetric {'axial ' if rules.require_axial else ''}{series.modality}, {frames} slices"


def _score(series: SeriesRecord, rules: SelectionRules) -> tuple[float, ...]:
    """Higher is better: preferred modality, more slices, thinner slices, lower series number."""
    pref = -rules.modalities.index(series.modality) if series.modality in rules.modalities else -99
    thick = [i.slice_thickness for i in series.instances if i.slice_thickness]
    return (pref, _image_frames(series), -(min(thick) if thick else 99.0), -(series.series_number or 0))


def select_series(catalog: Catalog, rules: SelectionRules | None = None) -> list[SeriesRecord]:
    """Mark every series of ``catalog`` selected or not (with a reason); return the selected ones.

    Per study: the best ``max_volumetric_per_study`` volumetric series; when a study has no
    volumetric candidate, every eligible 2D image series instead (or, failing those, the
    eligible cross-sectional series that are too short/flat to be volumes).
    """
    rules = rules or SelectionRules()
    chosen: list[SeriesRecord] = []
    for study in catalog.studies:
        volumetric: list[SeriesRecord] = []
        flat: list[SeriesRecord] = []
        for se in study.series:
            se.selected = False
            why_not = _exclusion(se, rules)
            if why_not is not None:
                se.reason = why_not
                continue
            ok, why = _volumetric_verdict(se, rules)
            if ok:
                se.reason = why
                volumetric.append(se)
            elif se.modality in VOLUMETRIC_MODALITIES:
                se.reason = why
                flat.append(se)  # a cross-sectional series that is not a usable volume
            else:
                se.reason = f"2D {se.modality} image series"
                flat.append(se)
        if volumetric:
            volumetric.sort(key=lambda s: _score(s, rules), reverse=True)
            n = rules.max_volumetric_per_study or len(volumetric)
            for se in volumetric[:n]:
                se.selected = True
                se.reason = f"selected: {se.reason}"
                chosen.append(se)
            best = volumetric[0]
            for se in volumetric[n:]:
                se.reason = f"not selected: {se.reason}; series {best.series_number} preferred"
            for se in flat:
                se.reason = f"not selected: {se.reason}; a volumetric series is available"
        else:
            two_d = [se for se in flat if se.modality in TWO_D_MODALITIES]
            for se in flat:
                if se in two_d or not two_d:  # no 2D series: take the non-volumetric ones as is
                    se.selected = True
                    se.reason = f"selected: {se.reason}"
                    chosen.append(se)
                else:
                    se.reason = f"not selected: {se.reason}"
        for se in study.series:
            if not se.selected and not se.reason.startswith("not selected"):
                se.reason = f"not selected: {se.reason}"
    return chosen


__all__ = ["SelectionRules", "TWO_D_MODALITIES", "VOLUMETRIC_MODALITIES", "select_series"]
