"""LesionLens service package."""
