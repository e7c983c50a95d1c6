"""LesionLens data package."""
