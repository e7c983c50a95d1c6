"""Configuration of de-identification: options, key, pixel mask regions, safe private list,
and the best-effort text cleaner used by the ``C`` (clean) action on descriptors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from lesionlens.errors import ConfigError, LesionLensError
from lesionlens.privacy.deid_table import DeidOption, parse_options
from lesionlens.privacy.uidmap import DeidKey


class DeidError(LesionLensError):
    """A file or attribute could not be de-identified (message names the file/attribute)."""

    code = "deid"


@dataclass(frozen=True)
class MaskRegion:
    """A pixel rectangle to blank: columns ``x0 <= x < x1``, rows ``y0 <= y < y1`` (pixel grid)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @classmethod
    def parse(cls, text: str) -> MaskRegion:
        """``"x0,y0,x1,y1"`` → region; raises :class:`ConfigError` on anything else."""
        try:
            x0, y0, x1, y1 = (int(p) for p in text.split(","))
        except ValueError:
            raise ConfigError(f"--mask-region: expected x0,y0,x1,y1 integers, got {text!r}") from None
        if not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise ConfigError(f"--mask-region: need 0 <= x0 < x1 and 0 <= y0 < y1, got {text!r}")
        return cls(x0, y0, x1, y1)


#: Retain Safe Private: (private creator, group, element offset within the block). Documented in
#: docs/privacy-deid.md; all are acquisition parameters listed as safe in PS3.15 Table E.3.10-1.
SAFE_PRIVATE: frozenset[tuple[str, int, int]] = frozenset(
    {
        ("SIEMENS MR HEADER", 0x0019, 0x0C),  # B_value
        ("SIEMENS MR HEADER", 0x0019, 0x0D),  # DiffusionDirectionality
        ("SIEMENS MR HEADER", 0x0019, 0x0E),  # DiffusionGradientDirection
        ("GEMS_PARM_01", 0x0043, 0x39),  # slop_int_6..9 (b-value)
        ("Philips Imaging DD 001", 0x2001, 0x03),  # Diffusion B-Factor
    }
)


@dataclass(frozen=True)
class DeidConfig:
    """Everything a de-identification run needs.

    key: the secret (see :func:`lesionlens.privacy.uidmap.resolve_key`); there is no default.
    options: the PS3.15 options in force (basic profile only when empty).
    mask_regions: rectangles blanked in every frame of objects with burned-in text; when given,
    such objects are masked and exported instead of quarantined.
    """

    key: DeidKey
    options: frozenset[DeidOption] = frozenset()
    mask_regions: tuple[MaskRegion, ...] = ()
    safe_private: frozenset[tuple[str, int, int]] = field(default=SAFE_PRIVATE)

    @classmethod
    def build(
        cls, key: DeidKey, options: Iterable[str] = (), mask_regions: Iterable[str] = ()
    ) -> DeidConfig:
        """From CLI-style strings (option names, ``x0,y0,x1,y1`` regions)."""
        return cls(
            key=key,
            options=parse_options(tuple(options)),
            mask_regions=tuple(MaskRegion.parse(m) for m in mask_regions),
        )

    def has(self, option: DeidOption) -> bool:
        return option in self.options


_DATE_LIKE = re.compile(r"\b\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}\b|\b(?:19|20)\d{6}\b")
_LONG_NUMBER = re.compile(r"\d{5,}")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"\+?\d[\d ()-]{6,}\d")


def clean_text(text: str, identifiers: Iterable[str]) -> str:
    """Best-effort cleaning of a descriptor (``C`` action): every identifier word (patient names,
    IDs, accession numbers, physicians, ... collected from the header) and every e-mail, phone-like
    or date-like string and run of 5+ digits is replaced with ``*``. Whitespace is kept."""
    out = _EMAIL.sub("*", text)
    out = _DATE_LIKE.sub("*", out)
    out = _PHONE.sub("*", out)
    out = _LONG_NUMBER.sub("*", out)
    for word in sorted({w for w in identifiers if len(w) >= 2}, key=len, reverse=True):
        out = re.sub(re.escape(word), "*", out, flags=re.IGNORECASE)
    return out


__all__ = ["DeidConfig", "DeidError", "MaskRegion", "SAFE_PRIVATE", "clean_text"]
