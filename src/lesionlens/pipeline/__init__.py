"""LesionLens pipeline package."""
