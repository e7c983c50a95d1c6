"""De-identified copies of a findings document (``lesionlens.findings/1``).

The same keyed maps as the DICOM de-identification (:mod:`lesionlens.privacy.uidmap`) are used,
so a de-identified ``findings.json`` and the de-identified SR/SEG/GSPS of the same study, made
with the same key, still refer to each other: every ``*_uid`` value is remapped, the patient
block is replaced by the pseudonymous PatientID (and, with *Retain Patient Characteristics*,
sex and age), the study block keeps only what the profile keeps (device identity with
*Retain Device Identity*, the institution with *Retain Institution Identity*, dates shifted with
*Retain Longitudinal Temporal Information with Modified Dates*, descriptions cleaned with
*Clean Descriptors*), and free text (messages, warnings, filter reasons) is cleaned of the
study's identifiers, dates, long numbers, e-mail addresses and phone numbers.
Measurements, locations, pixel boxes and model identity are not identifying and stay as they are.
"""

from __future__ import annotations

import copy
from typing import Any

from lesionlens.privacy.deid_options import DeidConfig, clean_text
from lesionlens.privacy.deid_table import DeidOption
from lesionlens.privacy.uidmap import shift_da

_METHOD = "LesionLens PS3.15 Basic Application Level Confidentiality Profile"
# keys whose values are free text written by the pipeline (may quote file names or headers)
_FREE_TEXT = {"messages", "warnings", "problems", "reason", "description"}
_KEEP_PATIENT = ("PatientSex", "PatientAge", "PatientSize", "PatientWeight")
_DEVICE = ("Manufacturer", "ManufacturerModelName", "DeviceSerialNumber", "StationName")


def _identifiers(doc: dict[str, Any]) -> tuple[str, ...]:
    found: set[str] = set()
    for study in doc.get("studies", []):
        for block in (study.get("patient") or {}, study.get("study") or {}):
            for v in block.values():
                if isinstance(v, str) and len(v.strip()) >= 3:
                    found.add(v.strip())
                    found.update(p for p in v.replace("^", " ").split() if len(p) >= 3)
    return tuple(sorted(found, key=len, reverse=True))


def _study_block(study: dict[str, Any], config: DeidConfig, patient_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if config.has(DeidOption.RETAIN_DEVICE_IDENTITY):
        out.update({k: v for k, v in study.items() if k in _DEVICE})
    elif "Manufacturer" in study:  # Manufacturer is kept by the basic profile
        out["Manufacturer"] = study["Manufacturer"]
    if config.has(DeidOption.RETAIN_INSTITUTION_IDENTITY) and "InstitutionName" in study:
        out["InstitutionName"] = study["InstitutionName"]
    dates = {k: str(v) for k, v in study.items() if k.endswith("Date") and v}
    if config.has(DeidOption.RETAIN_LONG_FULL_DATES):
        out.update(dates)
    elif config.has(DeidOption.RETAIN_LONG_MODIFIED_DATES):
        shift = config.key.date_shift(patient_id)
        out.update({k: shift_da(v, shift) for k, v in dates.items()})
    return out


def _walk(value: Any, key: str, config: DeidConfig, identifiers: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _walk(v, k, config, identifiers) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, key, config, identifiers) for v in value]
    if isinstance(value, str):
        if key.endswith("_uid") and value:
            return value if config.has(DeidOption.RETAIN_UIDS) else config.key.map_uid(value)
        if key in _FREE_TEXT:
            return clean_text(value, identifiers)
    return value


def deidentify_findings(doc: dict[str, Any], config: DeidConfig) -> dict[str, Any]:
    """A de-identified deep copy of a findings document (the input is not changed)."""
    identifiers = _identifiers(doc)
    out: dict[str, Any] = copy.deepcopy(doc)
    for study in out.get("studies", []):
        patient = study.get("patient") or {}
        original_id = str(patient.get("PatientID") or "")
        new_patient: dict[str, Any] = {"PatientIdentityRemoved": "YES"}
        if original_id:  # the same pseudonym the de-identified DICOM objects carry
            new_patient["PatientID"] = config.key.pseudonym(original_id)
        if config.has(DeidOption.RETAIN_PATIENT_CHARACTERISTICS):
            new_patient.update({k: v for k, v in patient.items() if k in _KEEP_PATIENT})
        study_block = _study_block(study.get("study") or {}, config, original_id)
        descriptions = {k: v for k, v in (study.get("study") or {}).items() if k.endswith("Description")}
        if config.has(DeidOption.CLEAN_DESCRIPTORS):
            study_block.update({k: clean_text(str(v), identifiers) for k, v in descriptions.items()})
        study["patient"], study["study"] = new_patient, study_block
    cleaned = {k: (_walk(v, k, config, identifiers) if k == "studies" else v) for k, v in out.items()}
    cleaned["deidentification"] = {
        "method": _METHOD,
        "options": sorted(o.value for o in config.options),
    }
    return cleaned


__all__ = ["deidentify_findings"]
