"""De-identify a file or a folder tree into an output folder, with a JSON report.

Output layout: ``OUT/<study>/<series>/<sop>.dcm``, every name a de-identified UID (sanitised);
input file and folder names are never reused (they may carry patient names). Quarantined objects
(possible burned-in text, no mask regions) are *not written*: they are listed in the report only.
``OUT/deid-report.json`` lists written, quarantined and failed inputs; it holds input paths, so it
is for the operator and must not be shared with the de-identified data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from lesionlens.dicom.write import save_dataset
from lesionlens.errors import LesionLensError, NotDicomError
from lesionlens.jsonio import write_json
from lesionlens.privacy.deid import Deidentifier, Quarantined
from lesionlens.privacy.deid_options import DeidConfig, DeidError

REPORT_NAME = "deid-report.json"
_SAFE = re.compile(r"[^0-9.]")


@dataclass
class DeidReport:
    """What happened to each input. ``written``: (input, output) pairs; ``quarantined``:
    (input, reason); ``failed``: (input, error code, message)."""

    written: list[tuple[str, str]] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every input was written."""
        return not self.quarantined and not self.failed

    def to_json(self) -> dict[str, Any]:
        return {
            "written": [{"source": s, "output": o} for s, o in self.written],
            "quarantined": [{"source": s, "reason": r} for s, r in self.quarantined],
            "failed": [{"source": s, "code": c, "error": e} for s, c, e in self.failed],
            "counts": {
                "written": len(self.written),
                "quarantined": len(self.quarantined),
                "failed": len(self.failed),
            },
        }


def read_instance(path: Path) -> Dataset:
    """Read a DICOM composite instance; raises :class:`NotDicomError`/:class:`DeidError` naming it."""
    try:
        ds = pydicom.dcmread(path, force=True)
    except InvalidDicomError as exc:
        raise NotDicomError(f"not a DICOM file: {exc}", path=path) from exc
    except Exception as exc:  # truncated/corrupt files raise many kinds of errors
        raise DeidError(f"cannot read DICOM: {exc}", path=path, code="dicom-read") from exc
    try:
        ok = "SOPInstanceUID" in ds and "SOPClassUID" in ds and bool(str(ds.SOPInstanceUID).strip())
    except Exception:
        ok = False
    if not ok:
        raise NotDicomError("no SOP Class/Instance UID: not a DICOM composite instance", path=path)
    return ds


def output_path(out_dir: Path, ds: Dataset) -> Path:
    """``out_dir/<study>/<series>/<sop>.dcm`` from the (already de-identified) UIDs, sanitised."""

    def part(keyword: str) -> str:
        value = _SAFE.sub("", str(ds.get(keyword, "") or ""))[:64].strip(".")
        return value or "unknown"

    return out_dir / part("StudyInstanceUID") / part("SeriesInstanceUID") / f"{part('SOPInstanceUID')}.dcm"


def iter_inputs(src: Path, skip: Path | None = None) -> list[Path]:
    """``src`` itself, or every file under it (sorted, recursive), without anything under ``skip``."""
    if src.is_file():
        return [src]
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if skip is not None:
        skip = skip.resolve()
        files = [p for p in files if skip not in p.resolve().parents]
    return files


def deidentify_file(
    src: Path, out_dir: Path, deidentifier: Deidentifier, taken: set[Path] | None = None
) -> Path | Quarantined:
    """De-identify one file into ``out_dir``; the written path, or :class:`Quarantined`.

    taken: outputs already written by this run; an input whose output would overwrite one of them
    (two inputs with the same SOP Instance UID) raises :class:`DeidError` (code ``duplicate``).
    """
    ds = read_instance(src)
    try:
        result = deidentifier.deidentify_dataset(ds)
    except DeidError as exc:
        raise DeidError(exc.reason, path=src) from exc
    if isinstance(result, Quarantined):
        return result
    target = output_path(out_dir, result)
    if taken is not None:
        if target in taken:
            raise DeidError("same SOP Instance UID as an input already written; not overwritten",
                            path=src, code="duplicate")
        taken.add(target)
    return save_dataset(result, target)


def deidentify_path(src: str | Path, dst: str | Path, config: DeidConfig) -> DeidReport:
    """De-identify a file or folder ``src`` into folder ``dst``; writes ``dst/deid-report.json``.

    One bad file never stops the others: it is reported with its error code.
    """
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise DeidError("input does not exist", path=src, code="config")
    deidentifier = Deidentifier(config)
    report = DeidReport()
    taken: set[Path] = set()
    for path in iter_inputs(src, skip=dst):
        name = str(path)
        try:
            result = deidentify_file(path, dst, deidentifier, taken)
        except LesionLensError as exc:
            report.failed.append((name, exc.code, exc.reason))
            continue
        except Exception as exc:  # never let one file stop the batch
            report.failed.append((name, "internal", f"{type(exc).__name__}: {exc}"))
            continue
        if isinstance(result, Quarantined):
            report.quarantined.append((name, result.reason))
        else:
            report.written.append((name, str(result)))
    write_json(report.to_json(), dst / REPORT_NAME)
    return report


__all__ = ["DeidReport", "REPORT_NAME", "deidentify_file", "deidentify_path", "iter_inputs", "output_path", "read_instance"]
