"""LesionLens reports package."""
