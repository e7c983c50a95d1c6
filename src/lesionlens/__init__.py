"""LesionLens: AI-assisted lesion detection in DICOM studies.

The public API is what ``__all__`` lists; everything else may change.
"""

from __future__ import annotations

from lesionlens.errors import LesionLensError

__version__ = "0.1.0"

__all__ = ["__version__", "LesionLensError"]
