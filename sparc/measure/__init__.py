"""Measuring models: output error and fidelity against the original (``outputs``)."""
