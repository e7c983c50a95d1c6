"""LesionLens models package."""
