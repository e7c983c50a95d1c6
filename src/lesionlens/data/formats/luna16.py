"""LUNA16: ``annotations.csv`` (+ ``annotations_excluded.csv``) and MetaImage CT volumes.

Layout (as distributed)::

    annotations.csv            seriesuid,coordX,coordY,coordZ,diameter_mm
    annotations_excluded.csv   same columns; findings that count as neither hit nor false
                               positive (diameter_mm may be -1: unknown)
    subset0/<seriesuid>.mhd    + .raw — one CT series per file, ITK (LPS) world coordinates

``coordX/Y/Z`` are world coordinates of the ``.mhd`` in mm, which is DICOM LPS, so they are
used as :attr:`Lesion3D.center_mm` unchanged. Volumes are read and written by
:mod:`lesionlens.dicom.formats` (``read_image`` / ``write_mhd``).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lesionlens.data.annotations import Lesion3D, StudyTruth
from lesionlens.dicom.types import Volume
from lesionlens.errors import DataFormatError

COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
_SAFE_NAME = re.compile(r"^[0-9A-Za-z._-]{1,128}$")

__all__ = ["COLUMNS", "Luna16Dataset", "read_luna16", "read_luna16_csv", "write_luna16"]


@dataclass
class Luna16Dataset:
    """studies: one truth per series (annotated or with a volume), sorted by series uid;
    volumes: ``seriesuid → .mhd path`` for the volumes found."""

    studies: list[StudyTruth] = field(default_factory=list)
    volumes: dict[str, Path] = field(default_factory=dict)

    def study(self, seriesuid: str) -> StudyTruth:
        return next(s for s in self.studies if s.series_instance_uid == seriesuid)


def read_luna16_csv(path: str | Path, *, excluded: bool = False) -> dict[str, list[Lesion3D]]:
    """Read one LUNA16 annotation CSV → ``seriesuid → lesions`` (file order kept).

    ``excluded=True`` marks the lesions ``excluded`` and accepts ``diameter_mm = -1`` (unknown
    size: stored as 0 with ``extra["diameter_unknown"] = True``). Raises
    :class:`DataFormatError` naming the file, line and column of a bad row.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataFormatError(f"cannot read: {exc.strerror}", path=p) from exc
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise DataFormatError("empty file; expected the header " + ",".join(COLUMNS), path=p)
    header = [h.strip() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DataFormatError(f"line 1: header lacks column(s) {missing} (has {header})", path=p)
    idx = {c: header.index(c) for c in COLUMNS}
    out: dict[str, list[Lesion3D]] = {}
    for row in reader:
        line = reader.line_num
        if not row or all(not v.strip() for v in row):
            continue
        if len(row) < len(header):
            raise DataFormatError(f"line {line}: {len(row)} fields, the header has {len(header)}", path=p)
        uid = row[idx["seriesuid"]].strip()
        if not uid:
            raise DataFormatError(f"line {line}: column 'seriesuid' is empty", path=p)
        values = {}
        for col in COLUMNS[1:]:
            raw = row[idx[col]].strip()
            try:
                v = float(raw)
            except ValueError:
                raise DataFormatError(f"line {line}: column {col!r} is not a number: {raw!r}", path=p) from None
            if not math.isfinite(v):
                raise DataFormatError(f"line {line}: column {col!r} is not finite: {raw!r}", path=p)
            values[col] = v
        d = values["diameter_mm"]
        extra: dict[str, object] = {}
        if excluded and d == -1:
            d, extra["diameter_unknown"] = 0.0, True
        elif d <= 0:
            raise DataFormatError(f"line {line}: column 'diameter_mm' must be > 0, got {d}", path=p)
        centre = (values["coordX"], values["coordY"], values["coordZ"])
        out.setdefault(uid, []).append(Lesion3D(center_mm=centre, diameter_mm=d, excluded=excluded, extra=extra))
    return out


def read_luna16(
    root: str | Path,
    *,
    annotations: str | Path | None = None,
    excluded: str | Path | None = None,
) -> Luna16Dataset:
    """Read a LUNA16 folder: ``annotations.csv``, optional ``annotations_excluded.csv`` and any
    ``*.mhd`` volumes below ``root`` (e.g. ``subset0/``–``subset9/``).

    Every series with a volume or an annotation gets a :class:`StudyTruth` (series without
    nodules are the negatives). Series annotated but without a volume are kept (not every
    subset may be present); their uid is simply missing from ``volumes``.
    """
    base = Path(root)
    ann_path = Path(annotations) if annotations is not None else base / "annotations.csv"
    if not ann_path.is_file():
        raise DataFormatError("annotations.csv not found", path=ann_path)
    exc_path = Path(excluded) if excluded is not None else base / "annotations_excluded.csv"
    lesions = read_luna16_csv(ann_path)
    if exc_path.is_file():
        for uid, items in read_luna16_csv(exc_path, excluded=True).items():
            lesions.setdefault(uid, []).extend(items)
    elif excluded is not None:
        raise DataFormatError("file not found", path=exc_path)
    volumes: dict[str, Path] = {}
    if base.is_dir():
        for mhd in sorted(base.rglob("*.mhd")):
            if mhd.stem in volumes:
                raise DataFormatError(f"series {mhd.stem} has two volumes (also {volumes[mhd.stem]})", path=mhd)
            volumes[mhd.stem] = mhd
    uids = sorted(set(lesions) | set(volumes))
    studies = [StudyTruth(series_instance_uid=u, lesions=lesions.get(u, [])) for u in uids]
    return Luna16Dataset(studies=studies, volumes=volumes)


def _fmt(v: float) -> str:
    return repr(float(v))  # shortest text that reads back to the same float


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(rows)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".csv", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_luna16(
    out_dir: str | Path,
    items: Iterable[tuple[StudyTruth, Volume | None]],
    *,
    subset: str = "subset0",
    element_type: str = "MET_SHORT",
) -> Path:
    """Write truths (and volumes) in the LUNA16 layout; returns the ``annotations.csv`` path.

    items: ``(truth, volume)`` pairs; the volume (``(K, R, C)`` HU with its LPS affine) is
    written as ``<out_dir>/<subset>/<seriesuid>.mhd`` unless it is None. Excluded lesions go to
    ``annotations_excluded.csv`` (always written, perhaps with the header only).
    """
    from lesionlens.dicom.formats import write_mhd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    rows_excluded: list[list[str]] = []
    for truth, volume in items:
        uid = truth.series_instance_uid
        if not _SAFE_NAME.match(uid):
            raise DataFormatError(f"series uid {uid!r} cannot be a LUNA16 file name", path=out)
        for les in truth.lesions:
            d = -1.0 if les.extra.get("diameter_unknown") else les.diameter_mm
            row = [uid, *(_fmt(c) for c in les.center_mm), _fmt(d)]
            (rows_excluded if les.excluded else rows).append(row)
        if volume is not None:
            (out / subset).mkdir(parents=True, exist_ok=True)
            write_mhd(out / subset / f"{uid}.mhd", volume, element_type=element_type)
    _write_csv(out / "annotations.csv", rows)
    _write_csv(out / "annotations_excluded.csv", rows_excluded)
    return out / "annotations.csv"
