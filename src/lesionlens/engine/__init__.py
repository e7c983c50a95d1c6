"""LesionLens engine package."""
