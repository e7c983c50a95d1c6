"""LesionLens privacy package."""
