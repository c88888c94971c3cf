"""Synthetic phantoms that look like the scans the tasks are trained on."""
