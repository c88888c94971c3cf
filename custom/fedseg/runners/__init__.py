"""Thin runners over the engine: local single-site and pooled training (Ray lives in fedseg.ray)."""
