"""Computed clinical suggestions for pulmonary nodules: Lung-RADS v2022 and Fleischner 2017.

Both are *computed suggestions* from the measured nodules, never a diagnosis: the reader
confirms the nodules, their type and size, and the clinical context before using either.

Sizes come from :class:`~lesionlens.pipeline.types.Measurements`:

- ``mean_diameter_mm`` — the mean of long and short axis, the size both systems use;
- ``solid_component_mm`` — the solid part of a part-solid nodule (mean diameter);
- ``nodule_type`` — "solid" | "part-solid" | "ground-glass".

A lesion without measurements is sized by its detector diameter (``Lesion.diameter_mm``) and
treated as solid; the suggestion says so. A lesion with neither is left out, and that is said too.

Rounding follows each system: Lung-RADS v2022 uses the mean diameter to one decimal
(5.95 → 6.0, half up); Fleischner 2017 (Bankier et al., Radiology 2017) rounds the mean
diameter to the nearest whole millimetre (5.5 → 6, half up).

What is *not* assessed (the reader must): prior studies (new / growing / stable nodules),
benign calcification or fat, perifissural and juxtapleural nodules, airway nodules, cysts,
Lung-RADS 0 and 4X, the S modifier, and whether the patient is in a screening programme.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from lesionlens.errors import ConfigError
from lesionlens.pipeline.types import Lesion, NoduleType, StudyResult, Suggestion

Risk = Literal["low", "high"]

LUNG_RADS = "Lung-RADS v2022"
FLEISCHNER = "Fleischner 2017"

#: Lung-RADS v2022 categories in increasing order of suspicion: descriptor, management.
LUNG_RADS_CATEGORIES: dict[str, tuple[str, str]] = {
    "1": ("Negative", "Continue annual screening with LDCT in 12 months."),
    "2": ("Benign appearance or behavior", "Continue annual screening with LDCT in 12 months."),
    "3": ("Probably benign", "6-month LDCT."),
    "4A": ("Suspicious", "3-month LDCT; PET/CT may be considered if there is a ≥ 8 mm solid nodule or "
           "solid component."),
    "4B": ("Very suspicious", "Diagnostic chest CT with or without contrast; PET/CT may be considered if "
           "there is a ≥ 8 mm solid nodule or solid component; tissue sampling; and/or referral for "
           "further clinical evaluation. Management depends on clinical evaluation, patient "
           "preference and probability of malignancy."),
}
_LR_ORDER = list(LUNG_RADS_CATEGORIES)

_LR_SCOPE = ("Baseline lung cancer screening LDCT assumed (no prior study compared): growth, new "
             "nodules, calcification, perifissural/juxtapleural and airway nodules, cysts and "
             "category 4X features are not assessed.")

FLEISCHNER_SCOPE = ("Fleischner 2017 applies to incidental pulmonary nodules in adults; it does not apply "
                    "to lung cancer screening, to patients younger than 35 years, or to immunocompromised "
                    "patients or patients with known cancer.")

_NO_FOLLOW_UP = "No routine follow-up."

#: Fleischner 2017 rows: category → (low-risk text, high-risk text, urgency for choosing a row).
FLEISCHNER_ROWS: dict[str, tuple[str, str, int]] = {
    "no nodule": ("No pulmonary nodule detected: no nodule follow-up is indicated by the Fleischner "
                  "recommendations.", "No pulmonary nodule detected: no nodule follow-up is indicated by "
                  "the Fleischner recommendations.", 0),
    "solid, single, < 6 mm": (_NO_FOLLOW_UP, "Optional CT at 12 months.", 1),
    "solid, single, 6-8 mm": ("CT at 6-12 months, then consider CT at 18-24 months.",
                              "CT at 6-12 months, then CT at 18-24 months.", 3),
    "solid, single, > 8 mm": ("Consider CT at 3 months, PET/CT, or tissue sampling.",
                              "Consider CT at 3 months, PET/CT, or tissue sampling.", 6),
    "solid, multiple, < 6 mm": (_NO_FOLLOW_UP, "Optional CT at 12 months.", 1),
    "solid, multiple, 6-8 mm": ("CT at 3-6 months, then consider CT at 18-24 months.",
                                "CT at 3-6 months, then at 18-24 months.", 4),
    "solid, multiple, > 8 mm": ("CT at 3-6 months, then consider CT at 18-24 months.",
                                "CT at 3-6 months, then consider CT at 18-24 months.", 4),
    "ground-glass, single, < 6 mm": (_NO_FOLLOW_UP, _NO_FOLLOW_UP, 0),
    "ground-glass, single, ≥ 6 mm": ("CT at 6-12 months to confirm persistence, then CT every 2 years "
                                     "until 5 years.", "CT at 6-12 months to confirm persistence, then CT "
                                     "every 2 years until 5 years.", 2),
    "part-solid, single, < 6 mm": (_NO_FOLLOW_UP, _NO_FOLLOW_UP, 0),
    "part-solid, single, ≥ 6 mm": ("CT at 3-6 months to confirm persistence. If unchanged and solid "
                                   "component remains < 6 mm, annual CT should be performed for 5 years.",
                                   "CT at 3-6 months to confirm persistence. If unchanged and solid "
                                   "component remains < 6 mm, annual CT should be performed for 5 years.", 5),
    "subsolid, multiple, < 6 mm": ("CT at 3-6 months. If stable, consider CT at 2 and 4 years.",
                                   "CT at 3-6 months. If stable, consider CT at 2 and 4 years.", 4),
    "subsolid, multiple, ≥ 6 mm": ("CT at 3-6 months. Subsequent management based on the most suspicious "
                                   "nodule(s).", "CT at 3-6 months. Subsequent management based on the "
                                   "most suspicious nodule(s).", 5),
}

_CHEST_PARTS = ("CHEST", "LUNG", "THORAX", "TORSO", "WHOLEBODY", "WHOLE BODY", "CHEST_ABDOMEN", "CHESTABDOMEN")


@dataclass(frozen=True)
class _Nodule:
    """One nodule as the rules see it: sizes in mm (unrounded), type, and how it was sized."""

    tracking_id: str
    nodule_type: NoduleType
    mean_mm: float
    solid_mm: float
    assumed: bool  # sized by the detector diameter and treated as solid


def _round_half_up(x: float, places: int) -> float:
    q = Decimal(1).scaleb(-places)
    return float(Decimal(repr(float(x))).quantize(q, rounding=ROUND_HALF_UP))


def _nodules(lesions: list[Lesion]) -> tuple[list[_Nodule], list[str]]:
    """The sizable nodules, and notes about lesions sized by assumption or left out."""
    out: list[_Nodule] = []
    notes: list[str] = []
    for les in lesions:
        m = les.measurements
        if m is not None and m.nodule_type is not None:
            solid = {"solid": m.mean_diameter_mm, "ground-glass": 0.0}.get(m.nodule_type, m.solid_component_mm)
            out.append(_Nodule(les.tracking_id, m.nodule_type, float(m.mean_diameter_mm), float(solid), False))
        elif m is not None:
            out.append(_Nodule(les.tracking_id, "solid", float(m.mean_diameter_mm), float(m.mean_diameter_mm), True))
            notes.append(f"{les.tracking_id}: nodule type unknown, treated as solid.")
        elif les.diameter_mm is not None:
            d = float(les.diameter_mm)
            out.append(_Nodule(les.tracking_id, "solid", d, d, True))
            notes.append(f"{les.tracking_id}: not measured; sized by the detector diameter "
                         f"({_round_half_up(d, 1):.1f} mm) and treated as solid.")
        else:
            notes.append(f"{les.tracking_id}: no size available; not used.")
    return out, notes


# ---------------------------------------------------------------------------------------------
# Lung-RADS v2022


def lung_rads_category(nodule_type: NoduleType, mean_diameter_mm: float, solid_component_mm: float = 0.0) -> str:
    """Lung-RADS v2022 baseline category of one nodule ("2", "3", "4A" or "4B").

    Sizes are rounded to one decimal (half up) before comparing: solid < 6 → 2, 6 to < 8 → 3,
    8 to < 15 → 4A, ≥ 15 → 4B; part-solid: total < 6 → 2, solid component < 6 → 3,
    6 to < 8 → 4A, ≥ 8 → 4B; ground-glass: < 30 → 2, ≥ 30 → 3.
    """
    d = _round_half_up(mean_diameter_mm, 1)
    if nodule_type == "solid":
        return "2" if d < 6 else "3" if d < 8 else "4A" if d < 15 else "4B"
    if nodule_type == "part-solid":
        s = _round_half_up(solid_component_mm, 1)
        if s >= 8:
            return "4B"
        if s >= 6:
            return "4A"
        return "2" if d < 6 else "3"
    if nodule_type == "ground-glass":
        return "2" if d < 30 else "3"
    raise ConfigError(f"nodule_type: unknown nodule type {nodule_type!r}", code="nodule-type")


def _size_text(n: _Nodule) -> str:
    s = f"{n.tracking_id} ({n.nodule_type}, mean diameter {_round_half_up(n.mean_mm, 1):.1f} mm"
    if n.nodule_type == "part-solid":
        s += f", solid component {_round_half_up(n.solid_mm, 1):.1f} mm"
    return s + ")"


def lung_rads(lesions: list[Lesion]) -> Suggestion:
    """Lung-RADS v2022 baseline-screening category of a study from its most suspicious nodule.

    lesions: the kept pulmonary nodules of the study (any order). The most suspicious nodule
    has the highest category; ties go to the larger solid component, then the larger mean
    diameter. No nodule gives category 1.
    """
    nodules, notes = _nodules(lesions)
    if not nodules:
        desc = "No pulmonary nodule detected."
        cat, ids = "1", []
    else:
        def key(n: _Nodule) -> tuple[int, float, float]:
            c = lung_rads_category(n.nodule_type, n.mean_mm, n.solid_mm)
            return (_LR_ORDER.index(c), _round_half_up(n.solid_mm, 1), _round_half_up(n.mean_mm, 1))

        worst = max(nodules, key=key)
        cat = lung_rads_category(worst.nodule_type, worst.mean_mm, worst.solid_mm)
        ids = [worst.tracking_id]
        desc = f"Most suspicious nodule: {_size_text(worst)}"
        if len(nodules) > 1:
            desc += f"; {len(nodules)} nodules assessed"
        desc += "."
    descriptor, management = LUNG_RADS_CATEGORIES[cat]
    parts = [f"Category {cat} ({descriptor}). {desc}", *notes, _LR_SCOPE, "Computed suggestion, not a diagnosis."]
    return Suggestion(system=LUNG_RADS, category=cat, description=" ".join(parts), management=management,
                      lesions=ids)


# ---------------------------------------------------------------------------------------------
# Fleischner 2017


def _fleischner_mm(x: float) -> int:
    return int(_round_half_up(x, 0))


def _solid_row(nodules: list[_Nodule]) -> tuple[str, _Nodule]:
    worst = max(nodules, key=lambda n: n.mean_mm)
    d = _fleischner_mm(worst.mean_mm)
    size = "< 6 mm" if d < 6 else "6-8 mm" if d <= 8 else "> 8 mm"
    return f"solid, {'single' if len(nodules) == 1 else 'multiple'}, {size}", worst


def _subsolid_row(nodules: list[_Nodule]) -> tuple[str, _Nodule]:
    # part-solid before ground-glass at equal size; then the larger solid component
    worst = max(nodules, key=lambda n: (_fleischner_mm(n.mean_mm), n.nodule_type == "part-solid", n.solid_mm))
    size = "< 6 mm" if _fleischner_mm(worst.mean_mm) < 6 else "≥ 6 mm"
    if len(nodules) > 1:
        return f"subsolid, multiple, {size}", worst
    return f"{worst.nodule_type}, single, {size}", worst


def _check_risk(risk: str) -> Risk:
    if risk not in ("low", "high"):
        raise ConfigError(f"risk: must be 'low' or 'high', got {risk!r}", code="risk")
    return risk  # type: ignore[return-value]


def fleischner(lesions: list[Lesion], risk: Risk = "low") -> Suggestion:
    """Fleischner Society 2017 recommendation for incidental pulmonary nodules.

    lesions: the kept pulmonary nodules (any order); risk: the patient's risk of lung cancer
    ("low" | "high"), which changes the solid-nodule rows only. Sizes are mean diameters
    rounded to whole mm: solid < 6, 6-8, > 8; subsolid < 6, ≥ 6. Solid and subsolid nodules
    are grouped separately (single / multiple); when both are present the row with the more
    urgent follow-up is given and the other is named in the description.
    """
    risk = _check_risk(risk)
    nodules, notes = _nodules(lesions)
    solid = [n for n in nodules if n.nodule_type == "solid"]
    sub = [n for n in nodules if n.nodule_type != "solid"]
    rows = [r for r in (_solid_row(solid) if solid else None, _subsolid_row(sub) if sub else None) if r]
    if not rows:
        cat, ids, desc = "no nodule", [], "No pulmonary nodule detected."
    else:
        rows.sort(key=lambda r: (FLEISCHNER_ROWS[r[0]][2], r[1].mean_mm), reverse=True)
        cat, worst = rows[0]
        ids = [worst.tracking_id]
        desc = f"Row: {cat}; guiding nodule {_size_text(worst)}."
        if len(rows) > 1:
            other, o = rows[1]
            text = FLEISCHNER_ROWS[other][0 if risk == "low" else 1]
            desc += f" Also present: {other} (guided by {o.tracking_id}): {text}"
        if worst.nodule_type == "part-solid" and _fleischner_mm(worst.solid_mm) >= 6:
            desc += (" A persistent part-solid nodule with a solid component ≥ 6 mm should be considered "
                     "highly suspicious.")
    low, high, _ = FLEISCHNER_ROWS[cat]
    parts = [desc, f"Patient risk: {risk}.", *notes, FLEISCHNER_SCOPE, "Computed suggestion, not a diagnosis."]
    return Suggestion(system=FLEISCHNER, category=cat, description=" ".join(parts),
                      management=low if risk == "low" else high, lesions=ids)


# ---------------------------------------------------------------------------------------------


def _is_chest_ct(result_series_modality: str, body_part: object) -> bool:
    if result_series_modality.upper() != "CT":
        return False
    if body_part is None or str(body_part).strip() == "":
        return True  # unknown: the CT model is a lung model, so assume chest
    return str(body_part).strip().upper() in _CHEST_PARTS


def suggest(result: StudyResult, *, risk: Risk = "low") -> list[Suggestion]:
    """Lung-RADS and Fleischner suggestions for a study's chest CT series (empty otherwise).

    Uses the kept lesions of every CT series whose BodyPartExamined is a chest (or absent).
    A study with such a series but no nodule gives Lung-RADS 1 and the Fleischner "no nodule"
    text; a study without one (radiographs, mammograms, nothing analysed) gives ``[]``.
    """
    risk = _check_risk(risk)
    chest = [s for s in result.series if _is_chest_ct(s.volume.modality, s.volume.metadata.get("bodypartexamined"))]
    if not chest:
        return []
    lesions = [les for s in chest for les in s.lesions if les.kept]
    return [lung_rads(lesions), fleischner(lesions, risk=risk)]


__all__ = [
    "FLEISCHNER",
    "FLEISCHNER_ROWS",
    "FLEISCHNER_SCOPE",
    "LUNG_RADS",
    "LUNG_RADS_CATEGORIES",
    "fleischner",
    "lung_rads",
    "lung_rads_category",
    "suggest",
]
