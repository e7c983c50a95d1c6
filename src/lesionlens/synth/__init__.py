"""LesionLens synth package."""
