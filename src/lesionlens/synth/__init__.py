"""Synthetic studies with exact ground truth (phantoms for tests, benchmarks and training)."""

from lesionlens.synth.ct import CTPhantom, CTPhantomConfig, generate_ct, write_ct_study
from lesionlens.synth.truth import load_truth

__all__ = ["CTPhantom", "CTPhantomConfig", "generate_ct", "load_truth", "write_ct_study"]
