"""LesionLens net package."""
