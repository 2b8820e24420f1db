"""Representation analysis: anisotropy, mutual-kNN kernel alignment, and per-layer states to apply them to."""
