"""Evaluation through mteb: the encoder wrapper, task selection, offline checks and the summary table."""
