"""LesionLens metrics package."""
