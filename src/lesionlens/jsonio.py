"""JSON files: one atomic writer and one reader with clear errors, shared by every module."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from lesionlens.errors import DataFormatError, OutputError


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON atomically (temp file in the folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write: {exc}", path=path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing/unreadable file or bad JSON is a DataFormatError naming it."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"not valid JSON (line {exc.lineno}): {exc.msg}", path=p) from exc
    except OSError as exc:
        raise DataFormatError(f"cannot read: {exc.strerror}", path=p) from exc
